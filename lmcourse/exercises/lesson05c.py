"""Checked exercises of lesson 05c (the encoder-decoder)."""

from __future__ import annotations

import math

import torch

from lmcourse import seq2seq as s2s
from lmcourse.attention import merge_heads, padding_mask, scaled_dot_product_attention, split_heads
from lmcourse.checker import Case, Diagnosis, Exercise, Mistake, Property
from lmcourse.exercises import register
from lmcourse.lm_math import IGNORE_INDEX

LESSON = "05c_encoder_decoder"

# --------------------------------------------------------------------------- cross-attention

_D, _H = 16, 4  # a small cross-attention: d_model, heads


def make_cross_attention(seed: int = 0) -> s2s.CrossAttention:
    """A small CrossAttention (d_model 16, 4 heads) with fixed random weights, in eval mode."""
    with torch.random.fork_rng(devices=[]):  # leave the caller's random stream untouched
        torch.manual_seed(seed)  # nn.Linear's initialisation draws from the global generator
        attn = s2s.CrossAttention(_D, _H)
        with torch.no_grad():
            for lin in (attn.q_proj, attn.k_proj):  # sharper weights: masks and axes show more
                lin.weight.mul_(3.0)
    return attn.eval()


def _states(seed: int, B: int, T: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(B, T, _D, generator=g)


def _with_attn(fn, seed, x, memory, attention_mask):
    with torch.no_grad():
        return fn(x, memory, attention_mask, make_cross_attention(seed))


def _cross_cases() -> list[Case]:
    am = torch.ones(3, 6, dtype=torch.long)
    am[1, 4:] = 0
    am[2, 1:] = 0  # one real source token
    return [
        Case("one example", (1, _states(1, 1, 3), _states(2, 1, 5), None),
             hint="queries from x (attn.q_proj), keys and values from memory (attn.k_proj, "
                  "attn.v_proj); split the heads, attend, merge the heads, then attn.out_proj."),
        Case("a padded source batch", (2, _states(3, 3, 4), _states(4, 3, 6), am),
             hint="the encoder's padding must stay unseen: mask=padding_mask(attention_mask), "
                  "shape (B, 1, 1, S)."),
        Case("more target positions than source", (3, _states(5, 2, 7), _states(6, 2, 3), None),
             hint="no causal mask in cross-attention: every target position may read the whole source."),
        Case("as many target as source positions", (4, _states(7, 2, 5), _states(8, 2, 5), None),
             hint="keys AND values come from memory; only the queries come from x."),
        Case("one target position", (5, _states(9, 2, 1), _states(10, 2, 6), None),
             hint="a single query still reads every source position, with weights that sum to 1."),
        Case("large activations", (6, _states(11, 2, 3, scale=20.0), _states(12, 2, 4, scale=20.0), None),
             hint="use the course's scaled_dot_product_attention (a stable softmax over the keys)."),
    ]


def _cross_ref(x, memory, attention_mask, attn):
    return s2s.cross_attention(x, memory, attention_mask, attn)


def _attend(attn, q_in, kv_in, mask=None, is_causal=False, k_in=None, project=True):
    q = split_heads(attn.q_proj(q_in), attn.n_heads)  # (B, H, T, d_head)
    k = split_heads(attn.k_proj(kv_in if k_in is None else k_in), attn.n_heads)  # (B, H, S, d_head)
    v = split_heads(attn.v_proj(kv_in), attn.n_heads)  # (B, H, S, d_head)
    out = merge_heads(scaled_dot_product_attention(q, k, v, mask=mask, is_causal=is_causal))
    return attn.out_proj(out) if project else out


def _mask(am):
    return padding_mask(am) if am is not None else None


def _cross_causal(x, memory, am, attn):
    return _attend(attn, x, memory, _mask(am), is_causal=True)


def _cross_self(x, memory, am, attn):
    return _attend(attn, x, x)


def _cross_keys_from_decoder(x, memory, am, attn):
    return _attend(attn, x, memory, _mask(am), k_in=x)


def _cross_no_mask(x, memory, am, attn):
    return _attend(attn, x, memory)


def _cross_softmax_queries(x, memory, am, attn):
    q = split_heads(attn.q_proj(x), attn.n_heads)
    k = split_heads(attn.k_proj(memory), attn.n_heads)
    v = split_heads(attn.v_proj(memory), attn.n_heads)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, T, S)
    if am is not None:
        scores = scores.masked_fill(~_mask(am), float("-inf"))
    return attn.out_proj(merge_heads(torch.softmax(scores, dim=-2).nan_to_num(0.0) @ v))


def _cross_no_out_proj(x, memory, am, attn):
    return _attend(attn, x, memory, _mask(am), project=False)


def _cross_one_head(x, memory, am, attn):
    q, k, v = attn.q_proj(x), attn.k_proj(memory), attn.v_proj(memory)  # (B, T|S, D)
    mask = am.bool()[:, None, :] if am is not None else None  # (B, 1, S)
    return attn.out_proj(scaled_dot_product_attention(q, k, v, mask=mask))


# Properties every right answer has, tested on inputs of their own (the learner's signature).


def _probe(seed: int = 20):
    attn = make_cross_attention(seed)
    x, memory = _states(seed + 1, 2, 4), _states(seed + 2, 2, 6)
    am = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    return attn, x, memory, am


def _run(fn, *args) -> torch.Tensor | None:
    with torch.no_grad():
        out = fn(*args)
    out = torch.as_tensor(out)
    return out if out.shape == args[0].shape else None


def _blind_to_padding(fn) -> str | None:
    """Changing the memory at padded source positions must change nothing."""
    attn, x, memory, am = _probe()
    other = memory.clone()
    other[1, 3:] = _states(40, 1, 3, scale=5.0)[0]  # new vectors where the source is padding
    a, b = _run(fn, x, memory, am, attn), _run(fn, x, other, am, attn)
    if a is None or b is None or torch.allclose(a, b, atol=1e-5):
        return None
    return ("changing the encoder output at PADDED source positions changed your result: hide "
            "them from every query with the encoder's mask, mask=padding_mask(attention_mask) "
            "(True = a real token), passed to the attention.")


def _reads_whole_source(fn) -> str | None:
    """The first target position must see the last source position (cross-attention is never causal)."""
    attn, x, memory, _ = _probe(21)
    other = memory.clone()
    other[:, -1] = _states(41, 2, 1, scale=5.0)[:, 0]
    a, b = _run(fn, x, memory, None, attn), _run(fn, x, other, None, attn)
    if a is None or b is None or not torch.allclose(a[:, 0], b[:, 0], atol=1e-6):
        return None
    return ("the first target position does not see the last source position: cross-attention "
            "is never causal (no is_causal, no causal_mask); every target position may read the "
            "whole source.")


def _rows_are_queries(fn) -> str | None:
    """Changing the decoder state at one position changes that position's output only."""
    attn, x, memory, am = _probe(22)
    x = _states(43, 2, memory.shape[1])  # as many target as source positions: x @ memory shapes fit
    other = x.clone()
    other[:, 2] = _states(42, 2, 1, scale=3.0)[:, 0]
    a, b = _run(fn, x, memory, am, attn), _run(fn, other, memory, am, attn)
    if a is None or b is None:
        return None
    keep = [0, 1, 3, 4, 5]
    if torch.allclose(a[:, keep], b[:, keep], atol=1e-5):
        return None
    return ("changing the decoder state at ONE position changed the outputs at other positions: "
            "in cross-attention x only gives the queries, so output t depends on x[:, t] alone. "
            "Take keys and values from memory, and the softmax over the source positions (the "
            "last dimension of the (B, H, T, S) scores).")


def _depends_on_memory(fn) -> str | None:
    """The output must change when the encoder's output changes."""
    attn, x, memory, _ = _probe(23)
    a, b = _run(fn, x, memory, None, attn), _run(fn, x, memory.flip(1) * 2 + 1, None, attn)
    if a is None or b is None or not torch.allclose(a, b, atol=1e-6):
        return None
    return ("your result ignores the encoder's output: keys and values come from memory, "
            "attn.k_proj(memory) and attn.v_proj(memory).")


def _scaled_by_sqrt_d_head(fn) -> str | None:
    """Identity projections, one query, two source positions whose raw scores differ by 1 in every
    head, values 0 and 1: the output is sigmoid(scale), which reveals the scale used."""
    D, H = 36, 4  # d_head = 9: 1/sqrt(9), 1/sqrt(36) and 1/9 all differ
    attn = s2s.CrossAttention(D, H).eval()
    with torch.no_grad():
        for lin in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj):
            lin.weight.copy_(torch.eye(D))
            lin.bias.zero_()
    d_head = D // H
    x = torch.full((1, 1, D), 1.0 / d_head)  # q . k = 1 for a key of ones, 0 for a key of zeros
    memory = torch.stack([torch.zeros(D), torch.ones(D)])[None]  # (1, 2, D)
    out = _run(fn, x, memory, None, attn)
    if out is None:
        return None
    y = out.double().flatten()
    if not torch.allclose(y, y[:1].expand_as(y), atol=1e-6) or not 0 < float(y[0]) < 1:
        return None
    scale = math.log(float(y[0]) / (1 - float(y[0])))  # what the raw scores were multiplied by
    if math.isclose(scale, 1 / math.sqrt(d_head), rel_tol=1e-3):
        return None
    if math.isclose(scale, 1.0, rel_tol=1e-3):
        how = "you don't scale the scores"
    elif math.isclose(scale, 1 / math.sqrt(D), rel_tol=1e-3):
        how = "you divide the scores by sqrt(d_model), the width of all heads together"
    elif math.isclose(scale, 1 / d_head, rel_tol=1e-3):
        how = "you divide the scores by d_head itself"
    else:
        how = f"you multiply the scores by {scale:.3g}"
    return (f"{how}: each head compares vectors of d_head = d_model / n_heads features, so divide "
            f"its scores by sqrt(d_head) (here sqrt({d_head})); scaled_dot_product_attention on the "
            "split heads does it for you.")


register(Exercise(
    key="cross_attention",
    lesson=LESSON,
    reference=_cross_ref,
    cases=_cross_cases,
    call=_with_attn,
    probe_arguments=(),  # the cases' numbers are seeds, not the function's arguments
    library_name="lm.seq2seq.cross_attention",
    properties=[Property("reading the encoder's output", _depends_on_memory),
                Property("blind to the source's padding", _blind_to_padding),
                Property("reading the whole source", _reads_whole_source),
                Property("one output row per query", _rows_are_queries),
                Property("scaled by 1/sqrt(d_head)", _scaled_by_sqrt_d_head)],
    mistakes=[
        Mistake("causal mask", _cross_causal,
                "cross-attention is not causal: the whole source is known before decoding starts, "
                "so every target position may attend to every (real) source token; drop is_causal."),
        Mistake("self-attention", _cross_self,
                "that is self-attention over the decoder: keys and values must come from the "
                "encoder's output, attn.k_proj(memory) and attn.v_proj(memory)."),
        Mistake("keys from the decoder", _cross_keys_from_decoder,
                "the keys come from memory too, attn.k_proj(memory): a query is compared with the "
                "SOURCE positions, whose values it then averages."),
        Mistake("padding mask ignored", _cross_no_mask,
                "padded source tokens must get weight 0: pass mask=padding_mask(attention_mask) "
                "when attention_mask is given."),
        Mistake("softmax over the queries", _cross_softmax_queries,
                "each query's weights over the SOURCE positions must sum to 1: softmax over the "
                "last dimension of the (B, H, T, S) scores."),
        Mistake("no output projection", _cross_no_out_proj,
                "after merging the heads, apply attn.out_proj, as multi-head self-attention does."),
        Mistake("one head", _cross_one_head,
                "split the projections into attn.n_heads heads (split_heads) before attending, and "
                "merge them after: each head has its own d_model / n_heads features and softmax."),
    ],
))


# --------------------------------------------------------------------------- shift right


def _shift_cases() -> list[Case]:
    return [
        Case("one target", (torch.tensor([[5, 6, 7, 2]]), 2, 1),
             hint="the start token first, then the labels without their last token: [start, y0, y1, ...]."),
        Case("a padded batch", (torch.tensor([[5, 6, 2, IGNORE_INDEX, IGNORE_INDEX],
                                              [7, 8, 9, 10, 2]]), 2, 1),
             hint="-100 marks a label the loss ignores; it is not a token id, so as an input it "
                  "becomes pad_id."),
        Case("a target of one token", (torch.tensor([[2], [2]]), 2, 1),
             hint="a one-token target: the decoder's input is the start token alone (same shape as labels)."),
        Case("other special ids", (torch.tensor([[9, 4, 3, IGNORE_INDEX], [4, 4, 4, 3]]), 0, 5),
             hint="use the start_id and pad_id you are given, not BART's 2 and 1."),
        Case("T5's convention: start with <pad>", (torch.tensor([[8, 1, IGNORE_INDEX], [6, 7, 1]]), 0, 0),
             hint="T5 starts its decoder with the pad token itself (start_id = pad_id = 0)."),
    ]


def _shift_no_start(labels, start_id, pad_id):
    return labels.masked_fill(labels == IGNORE_INDEX, pad_id)


def _shift_left(labels, start_id, pad_id):
    out = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), pad_id)], dim=1)
    return out.masked_fill(out == IGNORE_INDEX, pad_id)


def _shift_keeps_ignore(labels, start_id, pad_id):
    return torch.cat([labels.new_full((labels.shape[0], 1), start_id), labels[:, :-1]], dim=1)


def _shift_ignore_to_zero(labels, start_id, pad_id):
    out = _shift_keeps_ignore(labels, start_id, pad_id)
    return out.masked_fill(out == IGNORE_INDEX, 0)


def _shift_not_truncated(labels, start_id, pad_id):
    out = torch.cat([labels.new_full((labels.shape[0], 1), start_id), labels], dim=1)
    return out.masked_fill(out == IGNORE_INDEX, pad_id)


def _shift_overwrites_first(labels, start_id, pad_id):
    out = labels.masked_fill(labels == IGNORE_INDEX, pad_id)
    out[:, 0] = start_id
    return out


register(Exercise(
    key="shift_right",
    lesson=LESSON,
    reference=s2s.shift_right,
    cases=_shift_cases,
    library_name="lm.seq2seq.shift_right",
    mistakes=[
        Mistake("no start token", _shift_no_start,
                "the decoder input at position t must be the label of t - 1 (the model predicts "
                "label t from the labels before it); given label t itself it learns to copy. Put "
                "start_id first and drop the last label."),
        Mistake("shifted left", _shift_left,
                "you shifted the wrong way: the inputs run one step BEHIND the labels, "
                "[start_id, y0, ..., y(T-2)], not ahead of them."),
        Mistake("-100 left in the inputs", _shift_keeps_ignore,
                "-100 is the ignored-label marker, not a token id (an embedding lookup fails on "
                "it): replace it with pad_id in the inputs."),
        Mistake("-100 replaced by 0", _shift_ignore_to_zero,
                "replace -100 by pad_id, the id you are given; 0 is another token (BART's <s>)."),
        Mistake("start token added, nothing dropped", _shift_not_truncated,
                "the inputs must have the labels' length T: put start_id first and drop the LAST "
                "label (it is only ever a target)."),
        Mistake("first label overwritten", _shift_overwrites_first,
                "you replaced the first label by start_id instead of shifting: every label moves "
                "one position to the right, labels[:, :-1] goes to positions 1..T-1."),
    ],
))


# --------------------------------------------------------------------------- greedy decoding

_V = 12  # the probe model's vocabulary: the 4 specials and 8 more


def make_seq2seq(seed: int = 0, eos_bias: float = 0.0) -> s2s.Seq2Seq:
    """A tiny Seq2Seq (vocabulary 12, d_model 16, one block each side) with fixed random weights,
    in eval mode: it writes ordinary tokens and </s>, whose logit gets `eos_bias` added."""
    cfg = s2s.Seq2SeqConfig(vocab_size=_V, d_model=16, n_layers=1, n_heads=2, d_ff=32,
                            max_positions=16, dropout=0.0,
                            init_std=0.5)  # large weights: the argmax depends on prefix and source
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the initialisation draws from the global generator
        model = s2s.Seq2Seq(cfg)
    with torch.no_grad():
        model.final_logits_bias[0, [cfg.bos_token_id, cfg.pad_token_id, 3]] = -30.0  # never written
        model.final_logits_bias[0, cfg.eos_token_id] = eos_bias
    return model.eval()


def _sources(seed: int, B: int, S: int, lengths: list[int] | None = None):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, _V, (B, S), generator=g)
    am = torch.ones(B, S, dtype=torch.long)
    for i, n in enumerate(lengths or []):
        am[i, n:] = 0
    ids = ids.masked_fill(am == 0, 1)  # <pad> where the mask is 0
    ids[torch.arange(B), am.sum(1) - 1] = 2  # every source ends with </s>
    return ids, am


def _with_model(fn, seed, eos_bias, input_ids, attention_mask, max_new_tokens):
    return fn(make_seq2seq(seed, eos_bias), input_ids, attention_mask, max_new_tokens)


_WIDTH = 32  # outputs are compared padded to this many columns (cases ask for at most 8 tokens)


def _padded(out) -> torch.Tensor:
    """The output with <pad> columns added up to _WIDTH: stopping once all rows ended and running
    on to max_new_tokens (a row that ended only gets <pad>) give the same tensor."""
    if not isinstance(out, torch.Tensor):  # a list or an array: left as it is, so the checker
        return out                          # says a tensor was expected
    if out.ndim != 2 or out.shape[1] >= _WIDTH:
        return out
    return torch.cat([out, out.new_full((out.shape[0], _WIDTH - out.shape[1]), 1)], dim=1)


def _after_the_end(got, want, case: Case) -> Diagnosis | None:
    """A row with tokens other than <pad> after its first </s>."""
    if not isinstance(got, torch.Tensor) or got.ndim != 2:
        return None
    ended = (got == 2).long().cumsum(dim=1) - (got == 2).long() > 0  # strictly after the first </s>
    if not bool((ended & (got != 1)).any()):
        return None
    return Diagnosis("tokens after </s>", "a row goes on after its </s>: once a row has produced "
                     "cfg.eos_token_id it is finished, and every later step gives it "
                     "cfg.pad_token_id (keep a `done` flag per row).")


def _too_few_steps(got, want, case: Case) -> Diagnosis | None:
    """Rows that never end must have max_new_tokens tokens."""
    n = case.args[-1]
    if not isinstance(got, torch.Tensor) or got.ndim != 2 or (got == 2).any(1).all():
        return None
    if got.shape[1] >= n:
        return None
    return Diagnosis("too few steps", f"a row that never produces </s> must get max_new_tokens = {n} "
                     f"new tokens; yours has {got.shape[1]}: run the loop max_new_tokens times, "
                     "one new token per step.")


@torch.no_grad()
def _first_wrong_step(got, want, case: Case) -> Diagnosis | None:
    """Replay the first step where the output goes wrong: which next token did the learner take?"""
    if not isinstance(got, torch.Tensor) or got.ndim != 2 or got.dtype != torch.long:
        return None
    g, w = _padded(got), _padded(want)
    if g.shape != w.shape or torch.equal(g, w):
        return None
    t = int((g != w).any(0).nonzero()[0])
    b = int((g[:, t] != w[:, t]).nonzero()[0])
    token = int(g[b, t])
    if token == 1 or bool((w[b, :t] == 2).any()):
        return None  # a missing token, or a row that had ended: the other diagnosers say more
    seed, eos_bias, ids, am, n = case.args
    model = make_seq2seq(seed, eos_bias)

    def same_as(**variant) -> bool:
        return torch.equal(_padded(_greedy_with(model, ids, am, n, **variant)), g)

    start = model.cfg.decoder_start_token_id
    if any(same_as(start=other) for other in range(4) if other != start):
        return Diagnosis("another start token", "your tokens are what the model writes after "
                         "another start token: begin with cfg.decoder_start_token_id, the token "
                         "the decoder was trained to start from.")
    if any(same_as(encode_mask=e, pass_mask=d) for e, d in ((False, True), (True, False), (False, False))):
        return Diagnosis("source padding read", "your tokens are what the model writes when it reads "
                         "the source's padding: pass attention_mask to model.encode AND to "
                         "model.decode (its cross-attention).")
    return Diagnosis("not the argmax", f"at step {t} of row {b} your token ({token}) is not the most "
                     f"probable next token ({int(w[b, t])}): each step takes the argmax over the "
                     "vocabulary of the LAST position's logits, model.decode(ys, memory, "
                     "attention_mask)[:, -1].argmax(-1).")


def _greedy_cases() -> list[Case]:
    ids1, am1 = _sources(50, 1, 5)
    ids2, am2 = _sources(51, 4, 7, lengths=[7, 4, 6, 2])
    ids3, am3 = _sources(52, 3, 6, lengths=[6, 3, 5])
    ids4, am4 = _sources(53, 2, 4)
    return [
        Case("one source and no </s> in reach", (3, -6.0, ids1, am1, 6),
             hint="start from cfg.decoder_start_token_id, append the argmax of the LAST position's "
                  "logits each step, max_new_tokens times; return the new tokens only.",
             canonical=_padded),
        Case("rows that end at different steps", (2, 2.0, ids2, am2, 8),
             hint="once a row has produced </s> (cfg.eos_token_id), it gets cfg.pad_token_id at every "
                  "later step; the others go on.", canonical=_padded),
        Case("a padded source batch", (3, 3.0, ids3, am3, 8),
             hint="pass the encoder's attention_mask to model.decode, so no target position reads "
                  "the source's padding.", canonical=_padded),
        Case("one step", (5, 0.0, ids4, am4, 1),
             hint="max_new_tokens=1: one decoder call, one new token per row.", canonical=_padded),
    ]


def _greedy_ref(model, input_ids, attention_mask, max_new_tokens):
    return s2s.greedy_decode(model, input_ids, attention_mask, max_new_tokens)


def _greedy_with(model, input_ids, attention_mask, max_new_tokens, start=None, last=-1,
                 pad_after_eos=True, pass_mask=True, keep_start=False, stop_any=False,
                 encode_mask=True):
    cfg = model.cfg
    with torch.no_grad():
        memory = model.encode(input_ids, attention_mask if encode_mask else None)
        ys = torch.full((input_ids.shape[0], 1), cfg.decoder_start_token_id if start is None else start)
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
        for _ in range(max_new_tokens):
            logits = model.decode(ys, memory, attention_mask if pass_mask else None)[:, last]
            nxt = logits.argmax(-1)
            if pad_after_eos:
                nxt = nxt.masked_fill(done, cfg.pad_token_id)
            ys = torch.cat([ys, nxt[:, None]], dim=1)
            done |= nxt == cfg.eos_token_id
            if done.any() if stop_any else done.all():
                break
    return ys if keep_start else ys[:, 1:]


register(Exercise(
    key="seq2seq_greedy_decode",
    lesson=LESSON,
    reference=_greedy_ref,
    cases=_greedy_cases,
    call=_with_model,
    probe_arguments=(),  # the cases' numbers are seeds and biases, not the function's arguments
    diagnosers=[_after_the_end, _too_few_steps, _first_wrong_step],
    library_name="lm.seq2seq.greedy_decode",
    mistakes=[
        Mistake("started with <s>", lambda m, i, a, n: _greedy_with(m, i, a, n, start=m.cfg.bos_token_id),
                "the decoder's first input is cfg.decoder_start_token_id, the token it was trained "
                "with (shift_right puts it first); BART's is </s>, not <s>."),
        Mistake("start token returned", lambda m, i, a, n: _greedy_with(m, i, a, n, keep_start=True),
                "return the NEW tokens only: drop the start token in column 0."),
        Mistake("no <pad> after </s>", lambda m, i, a, n: _greedy_with(m, i, a, n, pad_after_eos=False),
                "a row that has produced </s> is finished: give it cfg.pad_token_id at every later "
                "step instead of the argmax."),
        Mistake("first position's logits", lambda m, i, a, n: _greedy_with(m, i, a, n, last=0),
                "the next token comes from the LAST position's logits, logits[:, -1]: position 0 "
                "always predicts the first token again."),
        Mistake("source mask not passed", lambda m, i, a, n: _greedy_with(m, i, a, n, pass_mask=False),
                "pass the encoder's attention_mask to model.decode too: the cross-attention must not "
                "read the source's padding."),
        Mistake("stopped when one row ended", lambda m, i, a, n: _greedy_with(m, i, a, n, stop_any=True),
                "stop only when EVERY row has produced </s> (done.all()), or after max_new_tokens; "
                "the other rows are not finished yet."),
    ],
))

