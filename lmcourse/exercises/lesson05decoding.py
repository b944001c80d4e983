"""Checked exercises of lesson 05, decoding: generation with a KV cache, and beam search."""

from __future__ import annotations

import torch
from torch import nn

from lmcourse import pretraining
from lmcourse.checker import Case, Diagnosis, Exercise, Mistake
from lmcourse.exercises import register
from lmcourse.transformer import GPT, GPTConfig

LESSON = "05_pretraining_gpt"
V = 23  # the vocabulary of the exercises' little GPTs


def tiny_gpt(seed: int, block_size: int, std: float = 0.5, vocab_size: int = V) -> GPT:
    """A little GPT with fixed random weights: logits neither flat nor peaked (GPT-2's
    initialisation with std 0.5), so samples, greedy choices and beams all differ."""
    with torch.random.fork_rng(devices=[]):  # leave the caller's random stream untouched
        torch.manual_seed(seed)  # nn.Linear's initialisation draws from the global generator
        model = GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, d_model=32, n_layers=2,
                              n_heads=4, d_ff=64, dropout=0.0, attn_dropout=0.0))
        pretraining.init_gpt2_weights(model, std=std)
    return model.eval()


# --------------------------------------------------------------------------- generation with the cache


class CountingGPT(nn.Module):
    """The course's GPT, noting how many tokens each call is given (`fed`)."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model, self.cfg = model, model.cfg
        self.fed: list[int] = []

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cache: object = None, use_cache: bool = False):
        self.fed.append(int(input_ids.shape[1]))
        return self.model(input_ids, attention_mask, cache=cache, use_cache=use_cache)


def _with_counting(fn, model, *args, **kwargs):
    """fn's generated ids, and the number of tokens it gave the model in each call."""
    counting = CountingGPT(model)
    out = fn(counting, *args, **kwargs)
    return out, counting.fed


@torch.no_grad()
def generate_cached(model: nn.Module, ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                    top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """The library's generation with the KV cache (no top-p): ids (B, T) -> (B, T + max_new_tokens)."""
    return pretraining.generate(model, ids, max_new_tokens, temperature, top_k, None, generator,
                                use_cache=True)


def _gen_cases() -> list[Case]:
    def g(seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)

    model = tiny_gpt(11, block_size=16)
    short = tiny_gpt(11, block_size=8)
    return [
        Case("greedy (temperature 0)", (model, torch.tensor([[1, 2, 3]]), 6), dict(temperature=0.0),
             hint="temperature 0 is greedy: the argmax of the last position's logits, no sampling, "
                  "appended with torch.cat([ids, next_ids], dim=1). Feed the whole prompt in the "
                  "first call (use_cache=True), then only the newest token with cache=cache."),
        Case("sampling at temperature 1", (model, torch.tensor([[4, 5]]), 8),
             dict(temperature=1.0, generator=g(0)),
             hint="draw from softmax(logits / temperature) with torch.multinomial(probs, 1, "
                  "generator=generator): one draw for the whole batch each step."),
        Case("temperature 0.5 and top-k 3", (model, torch.tensor([[1, 2, 3]]), 8),
             dict(temperature=0.5, top_k=3, generator=g(1)),
             hint="divide the logits by the temperature, keep the top-k (lm.pretraining.top_k_filter), "
                  "then softmax and one multinomial draw."),
        Case("temperature 2", (model, torch.tensor([[6]]), 8), dict(temperature=2.0, generator=g(2)),
             hint="a temperature above 1 flattens the distribution: DIVIDE the logits by it."),
        Case("a batch of two prompts", (model, torch.tensor([[1, 2, 3], [7, 8, 9]]), 6),
             dict(temperature=1.0, top_k=5, generator=g(3)),
             hint="every row is a sequence of its own: take logits[:, -1, :] (B, V), draw (B, 1) "
                  "tokens with one torch.multinomial call, and append them with torch.cat(dim=1)."),
        Case("past the context window", (short, torch.tensor([[1, 2, 3]]), 9),
             dict(temperature=0.8, generator=g(4)),
             hint="the model has block_size = 8 positions (model.cfg.block_size). While the sequence "
                  "fits, feed one token a step with the cache; once it is longer, feed its last "
                  "block_size tokens without a cache each step (every position shifts, so the "
                  "cached keys and values no longer fit)."),
        Case("one new token", (model, torch.tensor([[2, 2, 2]]), 1), dict(temperature=0.0),
             hint="one new token takes one call: the whole prompt, with use_cache=True."),
    ]


def _gen_variant(model, ids, max_new_tokens, temperature=1.0, top_k=None, generator=None, *,
                 cache_mode="cache", crop=True, argmax_always=False, multiply=False,
                 temperature_on_probs=False):
    """Generation with one thing done differently (the catalogued mistakes)."""
    n = model.cfg.block_size
    cache = None
    with torch.no_grad():
        for _ in range(max_new_tokens):
            if crop and ids.shape[1] > n:
                logits = model(ids[:, -n:])
            elif cache_mode == "none":
                logits = model(ids[:, -n:])
            elif cache_mode == "no prefill" and cache is None:
                logits, cache = model(ids[:, -1:], use_cache=True)
            elif cache is None:
                logits, cache = model(ids, use_cache=True)
            elif cache_mode == "whole sequence":
                logits, cache = model(ids, cache=cache, use_cache=True)
            else:
                logits, cache = model(ids[:, -1:], cache=cache, use_cache=True)
            logits = logits[:, -1, :].float()  # (B, V)
            if temperature == 0 or argmax_always:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits * temperature if multiply else logits / (1.0 if temperature_on_probs
                                                                         else temperature)
                if top_k is not None:
                    logits = pretraining.top_k_filter(logits, top_k)
                probs = torch.softmax(logits, dim=-1)
                if temperature_on_probs:
                    probs = probs / temperature  # multinomial renormalises: no effect
                nxt = torch.multinomial(probs, 1, generator=generator)
            ids = torch.cat([ids, nxt], dim=1)
    return ids


def _gen_no_cache(model, ids, max_new_tokens, temperature=1.0, top_k=None, generator=None):
    return _gen_variant(model, ids, max_new_tokens, temperature, top_k, generator, cache_mode="none")


def _gen_whole_sequence_with_cache(model, ids, max_new_tokens, temperature=1.0, top_k=None, generator=None):
    return _gen_variant(model, ids, max_new_tokens, temperature, top_k, generator,
                        cache_mode="whole sequence")


def _gen_no_prefill(model, ids, max_new_tokens, temperature=1.0, top_k=None, generator=None):
    return _gen_variant(model, ids, max_new_tokens, temperature, top_k, generator, cache_mode="no prefill")


def _gen_no_crop(model, ids, max_new_tokens, temperature=1.0, top_k=None, generator=None):
    return _gen_variant(model, ids, max_new_tokens, temperature, top_k, generator, crop=False)


def _gen_argmax(model, ids, max_new_tokens, temperature=1.0, top_k=None, generator=None):
    return _gen_variant(model, ids, max_new_tokens, temperature, top_k, generator, argmax_always=True)


def _gen_times_temperature(model, ids, max_new_tokens, temperature=1.0, top_k=None, generator=None):
    return _gen_variant(model, ids, max_new_tokens, temperature, top_k, generator, multiply=True)


def _gen_temperature_on_probs(model, ids, max_new_tokens, temperature=1.0, top_k=None, generator=None):
    return _gen_variant(model, ids, max_new_tokens, temperature, top_k, generator,
                        temperature_on_probs=True)


def _fed_pattern(got, want, case: Case) -> Diagnosis | None:
    """What the calls the model got say about the use of the cache."""
    if not (isinstance(got, (list, tuple)) and len(got) == 2 and isinstance(got[1], list)):
        return None
    fed, fed_want = got[1], want[1]
    if fed == fed_want or not fed:
        return None
    T = int(case.args[1].shape[1])
    n = case.args[0].cfg.block_size
    if fed[0] != T:
        return Diagnosis("prompt not fed first", f"your first call gets {fed[0]} token(s); it must "
                         f"get the whole prompt ({T} tokens) with use_cache=True, so that the cache "
                         "holds every prompt token's keys and values.")
    if len(fed) > 1 and fed[1] > 1 and fed[1] != fed_want[1]:
        return Diagnosis("whole sequence every step", f"your second call gets {fed[1]} tokens: the "
                         "cache already holds the keys and values of every earlier token, so feed "
                         "only the newest one, model(ids[:, -1:], cache=cache, use_cache=True).")
    if max(fed) > n or (len(fed) == len(fed_want) and fed[-1] != fed_want[-1]):
        return Diagnosis("context window", f"the model has {n} positions (model.cfg.block_size); "
                         f"once the sequence is longer, feed its last {n} tokens each step, without "
                         f"the cache. Your calls got {fed}; expected {fed_want}.")
    return Diagnosis("calls", f"your calls got {fed} tokens; expected {fed_want}: the prompt, then "
                     "one token a step with the cache, then the last block_size tokens afresh once "
                     "the sequence no longer fits.")


def _sampling(got, want, case: Case) -> Diagnosis | None:
    """The right calls, other tokens: how the next token was chosen."""
    if not (isinstance(got, (list, tuple)) and len(got) == 2) or got[1] != want[1]:
        return None
    ids = got[0]
    if isinstance(ids, torch.Tensor) and ids.ndim == 2 and ids.shape[0] == want[0].shape[0] \
            and ids.shape[1] == case.args[2] != want[0].shape[1]:
        return Diagnosis("new tokens only", "you return the new tokens only; return the prompt "
                         "followed by them, (B, T + max_new_tokens), as lm.pretraining.generate does.")
    if not isinstance(ids, torch.Tensor) or ids.shape != want[0].shape or torch.equal(ids, want[0]):
        return None
    temperature = case.kwargs.get("temperature", 1.0)
    if temperature == 0:
        return Diagnosis("greedy", "at temperature 0 take the argmax of the logits (no division by "
                         "0, no sampling).")
    greedy = generate_cached(case.args[0], case.args[1], case.args[2], temperature=0.0)
    if torch.equal(ids, greedy):
        return Diagnosis("argmax when sampling", f"at temperature {temperature:g} you still take the "
                         "argmax; sample: torch.multinomial(torch.softmax(logits / temperature, "
                         "-1), 1, generator=generator).")
    return Diagnosis("other draws", "the model got the right inputs but you chose other tokens: "
                     "divide the last position's logits by the temperature, apply top-k, softmax, "
                     "then ONE torch.multinomial(probs, 1, generator=generator) call per step for "
                     "the whole batch (the same draws as the library's generate).")


register(Exercise(
    key="gpt_generate_cached",
    lesson=LESSON,
    reference=generate_cached,
    cases=_gen_cases,
    call=_with_counting,
    outputs=("ids", "tokens fed per call"),
    diagnosers=[_fed_pattern, _sampling],
    library_name="lm.pretraining.generate",
    mistakes=[
        Mistake("no cache", _gen_no_cache,
                "you give the model the whole sequence every step: right tokens, but each step "
                "recomputes every earlier token. Call it once with the prompt and use_cache=True, "
                "then with only the newest token, model(ids[:, -1:], cache=cache, use_cache=True)."),
        Mistake("whole sequence with the cache", _gen_whole_sequence_with_cache,
                "you feed the whole sequence AND the cache: the cache already holds the earlier "
                "tokens, so they are counted twice (at the wrong positions). With a cache, feed only "
                "the newest token, ids[:, -1:]."),
        Mistake("prompt not fed", _gen_no_prefill,
                "your first call gets only the last prompt token, so the model never sees the rest "
                "of the prompt; the first call gets the whole prompt (use_cache=True), later calls "
                "one token each."),
        Mistake("no window past the context", _gen_no_crop,
                "the model has block_size positions; once the sequence is longer, the cache cannot "
                "grow: feed the last block_size tokens, ids[:, -block_size:], without a cache each "
                "step (as generate without a cache does)."),
        Mistake("argmax at temperature > 0", _gen_argmax,
                "you always take the argmax, which is greedy decoding; at temperature > 0 sample: "
                "torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator)."),
        Mistake("logits times the temperature", _gen_times_temperature,
                "you multiply the logits by the temperature; divide them: a temperature below 1 "
                "must sharpen the distribution (towards greedy), above 1 flatten it."),
        Mistake("temperature on the probabilities", _gen_temperature_on_probs,
                "dividing the probabilities by the temperature changes nothing (torch.multinomial "
                "renormalises them); divide the LOGITS by the temperature, before the softmax."),
    ],
))


# --------------------------------------------------------------------------- beam search


def beam_search_scored(model: nn.Module, ids: torch.Tensor, num_beams: int, max_new_tokens: int,
                       length_penalty: float = 1.0, eos_token_id: int | None = None) -> tuple[torch.Tensor, float]:
    """The library's beam search (no cache): the best sequence (T + n,) and its score."""
    seq, score = pretraining.beam_search(model, ids, num_beams, max_new_tokens, length_penalty,
                                         eos_token_id, use_cache=False, return_scores=True)
    return seq, float(score)


def _beam_variant(model, ids, num_beams, max_new_tokens, length_penalty=1.0, eos_token_id=None, *,
                  count_prompt=False, normalise=True, per_beam=False, multiply=False,
                  keep_finished=True, early_stop=True):
    """Beam search with one thing done differently (the catalogued mistakes)."""
    beams = ids[None]  # (n_beams, T)
    scores = torch.ones(1) if multiply else torch.zeros(1)  # (n_beams,)
    finished: list[tuple[torch.Tensor, torch.Tensor]] = []
    T = ids.shape[0]
    for step in range(max_new_tokens):
        with torch.no_grad():
            logits = model(beams)[:, -1].float()  # (n_beams, V)
        n_vocab = logits.shape[-1]
        if multiply:
            cand = torch.softmax(logits, -1) * scores[:, None]  # (n_beams, V) products of probabilities
        else:
            cand = torch.log_softmax(logits, -1) + scores[:, None]
        if per_beam:
            top, idx = torch.topk(cand, min(2 * num_beams, n_vocab), dim=-1)  # each beam's own best
            idx = idx + torch.arange(len(beams))[:, None] * n_vocab
            top, idx = top.flatten()[:2 * num_beams], idx.flatten()[:2 * num_beams]
        else:
            top, idx = torch.topk(cand.flatten(), 2 * num_beams)
        length = step + 1
        new_beams, new_scores = [], []
        for rank, (score, i) in enumerate(zip(top, idx.tolist())):
            seq = torch.cat([beams[i // n_vocab], torch.tensor([i % n_vocab])])
            last = step == max_new_tokens - 1
            if last or i % n_vocab == eos_token_id:
                if rank < num_beams and (keep_finished or last):
                    s = score.log() if multiply else score
                    if normalise:
                        s = s / ((T + length) if count_prompt else length) ** length_penalty
                    finished.append((s, seq))
            elif len(new_beams) < num_beams:
                new_beams.append(seq)
                new_scores.append(score)
        finished = sorted(finished, key=lambda h: -float(h[0]))[:num_beams]
        if not new_beams:
            break
        beams, scores = torch.stack(new_beams), torch.stack(new_scores)
        if early_stop and len(finished) == num_beams:
            best = scores[0].log() if multiply else scores[0]
            if normalise:
                best = best / ((T + length) if count_prompt else length) ** length_penalty
            if not best > finished[-1][0]:
                break
    score, best_seq = finished[0]
    return best_seq, float(score)


def _beam_prompt_counted(model, ids, num_beams, max_new_tokens, length_penalty=1.0, eos_token_id=None):
    return _beam_variant(model, ids, num_beams, max_new_tokens, length_penalty, eos_token_id,
                         count_prompt=True)


def _beam_not_normalised(model, ids, num_beams, max_new_tokens, length_penalty=1.0, eos_token_id=None):
    return _beam_variant(model, ids, num_beams, max_new_tokens, length_penalty, eos_token_id,
                         normalise=False)


def _beam_per_beam_topk(model, ids, num_beams, max_new_tokens, length_penalty=1.0, eos_token_id=None):
    return _beam_variant(model, ids, num_beams, max_new_tokens, length_penalty, eos_token_id,
                         per_beam=True)


def _beam_products(model, ids, num_beams, max_new_tokens, length_penalty=1.0, eos_token_id=None):
    return _beam_variant(model, ids, num_beams, max_new_tokens, length_penalty, eos_token_id,
                         multiply=True)


def _beam_drops_finished(model, ids, num_beams, max_new_tokens, length_penalty=1.0, eos_token_id=None):
    return _beam_variant(model, ids, num_beams, max_new_tokens, length_penalty, eos_token_id,
                         keep_finished=False)


def _beam_never_stops_early(model, ids, num_beams, max_new_tokens, length_penalty=1.0, eos_token_id=None):
    return _beam_variant(model, ids, num_beams, max_new_tokens, length_penalty, eos_token_id,
                         early_stop=False)


def _beam_cases() -> list[Case]:
    model = tiny_gpt(4, block_size=24)
    wide = tiny_gpt(2, block_size=40, std=0.05, vocab_size=512)  # nearly flat over 512 tokens
    ids = torch.tensor
    return [
        Case("no EOS and 2 beams", (model, ids([1, 2, 3]), 2, 10), dict(length_penalty=1.0),
             hint="without EOS every hypothesis gets max_new_tokens new tokens. Each step: the "
                  "log-probabilities (log_softmax of the last position's logits) added to each beam's "
                  "score, ONE topk over all beams x vocabulary (flattened), and the best num_beams "
                  "go on; the score is sum / max_new_tokens ** length_penalty."),
        Case("EOS with length penalty 1", (model, ids([1, 2, 3]), 3, 12), dict(eos_token_id=13),
             hint="a candidate that ends with eos_token_id, among the num_beams best of its step, is "
                  "finished: keep it aside with score sum / (new tokens, EOS included) ** "
                  "length_penalty, and don't extend it. Return the best finished hypothesis."),
        Case("EOS with length penalty 0.5", (model, ids([1, 2, 3]), 3, 12),
             dict(length_penalty=0.5, eos_token_id=13),
             hint="the length in the penalty counts the NEW tokens only (the prompt never counts), "
                  "the EOS included."),
        Case("EOS early with length penalty 0.5", (model, ids([1, 2, 3]), 3, 12),
             dict(length_penalty=0.5, eos_token_id=5),
             hint="a short hypothesis that ends early stays among the finished ones: keep up to "
                  "num_beams finished hypotheses, the best scores, whatever step they ended at."),
        Case("EOS with length penalty 2: a long one wins", (model, ids([5]), 2, 12),
             dict(length_penalty=2.0, eos_token_id=5),
             hint="keep going while a running beam can still win: stop early only once num_beams "
                  "hypotheses are finished and the best running beam, scored as if it ended now "
                  "(sum / its new tokens ** length_penalty), is no better than the worst finished "
                  "one. Take the 2 * num_beams best candidates each step, so that num_beams can go "
                  "on even when some end."),
        Case("EOS as the first token", (model, ids([5]), 2, 12), dict(eos_token_id=5),
             hint="a hypothesis may end with its very first new token (length 1)."),
        Case("EOS ranked below num_beams", (model, ids([1, 2, 3]), 2, 12),
             dict(length_penalty=0.5, eos_token_id=10),
             hint="only a candidate among the num_beams best of its step may finish; one that ends "
                  "with EOS further down the 2 * num_beams is dropped (those exist only so that "
                  "num_beams beams can go on)."),
        Case("num_beams finished and a running beam still better", (model, ids([5]), 3, 12),
             dict(eos_token_id=20),
             hint="num_beams finished hypotheses are not the end: go on while the best running beam, "
                  "scored as if it ended now, beats the worst finished one; a better hypothesis "
                  "then replaces the worst."),
        Case("many beams end at once", (model, ids([7, 7]), 3, 12), dict(eos_token_id=20),
             hint="look at the 2 * num_beams best candidates each step: when some of them end with "
                  "EOS, num_beams others must still go on."),
        Case("30 new tokens over 512 tokens", (wide, ids([5, 6]), 2, 30),
             hint="add log-probabilities, never multiply probabilities: 30 probabilities of about "
                  "1/500 multiply to about 1e-80, which is 0 in float32 (underflow), and then every "
                  "beam ties."),
        Case("one beam", (model, ids([9, 9, 1, 0]), 1, 8),
             hint="num_beams = 1 is greedy decoding: the argmax each step."),
    ]


def _beam_advice(got, want, case: Case) -> Diagnosis | None:
    """What a wrong best sequence or score says about the search."""
    if not (isinstance(got, (list, tuple)) and len(got) == 2 and isinstance(got[0], torch.Tensor)):
        return None
    g_ids, g_score = got
    w_ids, w_score = want
    T = int(case.args[1].shape[0])
    eos = case.kwargs.get("eos_token_id")
    lp = case.kwargs.get("length_penalty", 1.0)
    try:
        g = float(g_score)
    except (TypeError, ValueError):
        return None
    if g != g or g in (float("inf"), float("-inf")):
        return Diagnosis("score not finite", f"your score is {g}: a product of probabilities "
                         "underflows to 0 (log 0 = -inf); add log-probabilities (log_softmax) instead.")
    if g > 0 >= w_score:
        return Diagnosis("positive score", f"your score is {g:.4g} > 0, but a sum of "
                         "log-probabilities is never above 0: add the log-probabilities "
                         "(torch.log_softmax), not the probabilities.")
    if g_ids.ndim != 1 or g_ids.dtype != w_ids.dtype:
        return None
    if torch.equal(g_ids, w_ids):
        n = len(w_ids) - T
        if n < 1 or w_score == 0 or abs(g - w_score) <= 1e-5 * max(1.0, abs(w_score)):
            return None  # nothing to say: the score is right too (or cannot be told apart)
        ratio = g / w_score
        if abs(ratio - (n / (T + n)) ** lp) < 1e-3 and T > 0:
            return Diagnosis("prompt in the length", "the right sequence, the wrong score: you count "
                             "the prompt in the length; the penalty divides by (new tokens) ** "
                             "length_penalty, the prompt left out.")
        if abs(ratio - n ** lp) < 1e-3 * max(1.0, n ** lp):
            return Diagnosis("not normalised", "the right sequence, the wrong score: divide the sum "
                             "of log-probabilities by (new tokens) ** length_penalty.")
        return Diagnosis("score", "the right sequence, the wrong score: it is the sum of the new "
                         "tokens' log-probabilities (EOS included) divided by (their number) ** "
                         "length_penalty.")
    new = g_ids[T:]
    if eos is not None and len(new) > 1 and bool((new[:-1] == eos).any()):
        return Diagnosis("goes on after EOS", "your best sequence goes on after EOS: a candidate "
                         "that ends with eos_token_id is finished; set it aside, don't extend it.")
    # one name for the three below: they are all about which hypotheses the search keeps
    if eos is not None and len(g_ids) > len(w_ids) and int(w_ids[-1]) == eos:
        return Diagnosis("other hypothesis", "a hypothesis that ended with EOS earlier scores "
                         f"better ({w_score:.4g} against your {g:.4g}) and you lost it or never "
                         "found it: keep the finished hypotheses (up to num_beams, the best scores) "
                         "and return the best of them; and look at the 2 * num_beams best "
                         "candidates each step, so that num_beams beams go on when some end.")
    if eos is not None and len(g_ids) < len(w_ids) and len(new) and int(new[-1]) == eos:
        if g > w_score:
            return Diagnosis("other hypothesis", f"your hypothesis scores better ({g:.4g} against "
                             f"{w_score:.4g}) but the search must not accept it: a candidate that "
                             "ends with EOS finishes only if it is among the num_beams best of its "
                             "step (one further down is dropped), and none joins once the search "
                             "has stopped.")
        return Diagnosis("other hypothesis", "you return a hypothesis that ended early, but a "
                         f"longer one scores better ({w_score:.4g} against your {g:.4g}): keep "
                         "searching while the best running beam, scored as if it ended now, can "
                         "still beat the worst finished one, with num_beams beams going on each "
                         "step (from the 2 * num_beams best candidates).")
    return None


register(Exercise(
    key="beam_search",
    lesson=LESSON,
    reference=beam_search_scored,
    cases=_beam_cases,
    outputs=("ids", "score"),
    diagnosers=[_beam_advice],
    # a wrong search that stops early can give the same result for other num_beams or
    # max_new_tokens without ignoring them; only the length penalty always shows in the score
    probe_arguments=("length_penalty",),
    library_name="lm.pretraining.beam_search",
    mistakes=[
        Mistake("prompt counted in the length", _beam_prompt_counted,
                "you divide by (prompt + new tokens) ** length_penalty; the penalty counts the NEW "
                "tokens only (EOS included): sum / (new tokens) ** length_penalty."),
        Mistake("no length normalisation", _beam_not_normalised,
                "you rank finished hypotheses by their raw sum of log-probabilities, which always "
                "favours the shortest; divide by (new tokens) ** length_penalty."),
        Mistake("top-k per beam", _beam_per_beam_topk,
                "you take each beam's best tokens (topk along dim=-1) and keep them in beam order, "
                "so the first beam's candidates crowd out better ones of the others; take ONE topk "
                "over all beams x vocabulary: scores.flatten(), then beam = i // V, token = i % V."),
        Mistake("multiplied probabilities", _beam_products,
                "you multiply probabilities; a long product underflows to 0 in float32 and every "
                "beam ties (log 0 = -inf). Add log-probabilities (torch.log_softmax) instead."),
        Mistake("finished hypotheses dropped", _beam_drops_finished,
                "you throw away candidates that end with EOS; a finished hypothesis is a result: "
                "keep it aside (up to num_beams, the best scores) and return the best finished one."),
        Mistake("never stops early", _beam_never_stops_early,
                "you search until max_new_tokens even after num_beams hypotheses are finished; stop "
                "as soon as the best running beam, scored as if it ended now, is no better than the "
                "worst finished one (transformers' early_stopping=False): hypotheses found later "
                "would not be allowed in."),
    ],
))
