"""Lesson 05, causal-LM pretraining: character data cut into blocks, next-token targets, the loss the
`Trainer` minimises, text generation (greedy, temperature, top-k, top-p, with or without a KV cache)
and beam search for the course's GPT and for `transformers` causal LMs, the KV cache's time and
memory, a callback that prints samples during training, and saving the model in `transformers`
format.

The training loop itself is `lmcourse.train.Trainer`; the model is `lmcourse.transformer.GPT`.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from lmcourse import config
from lmcourse.lm_math import IGNORE_INDEX, Vocab, train_val_split
from lmcourse.train import get_logits

# --------------------------------------------------------------------------- data


def causal_lm_targets(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) for next-token prediction: inputs ids[..., :-1], targets ids[..., 1:].

    Position t of the inputs sees tokens 0..t and must predict token t+1, the target at t.
    """
    return ids[..., :-1], ids[..., 1:]


class BlockDataset(Dataset):
    """Windows of `block_size + 1` tokens of one long id sequence, as {input_ids, labels} pairs.

    Example i starts at token i * stride: input_ids = ids[s : s+T], labels = ids[s+1 : s+T+1]
    (`causal_lm_targets` of the window). stride=1 gives every window (training: a shuffled epoch
    visits each position once as a start); stride=block_size gives non-overlapping ones (evaluation).
    """

    def __init__(self, ids: torch.Tensor, block_size: int, stride: int = 1):
        if ids.ndim != 1:
            raise ValueError(f"ids must be one 1-D sequence of token ids, got shape {tuple(ids.shape)}.")
        if len(ids) < block_size + 1:
            raise ValueError(f"{len(ids)} tokens are too few for one block of {block_size} + 1.")
        if stride < 1:
            raise ValueError(f"stride must be at least 1, got {stride}.")
        self.ids, self.block_size, self.stride = ids.long(), block_size, stride

    def __len__(self) -> int:
        return (len(self.ids) - self.block_size - 1) // self.stride + 1

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} blocks")
        s = (i % len(self)) * self.stride
        inputs, targets = causal_lm_targets(self.ids[s:s + self.block_size + 1])  # (T,), (T,)
        return {"input_ids": inputs, "labels": targets}


@dataclass
class CharData:
    """A character-level corpus: its vocabulary and the train/validation id sequences."""

    vocab: Vocab
    train_ids: torch.Tensor  # (N_train,)
    val_ids: torch.Tensor    # (N_val,)

    def datasets(self, block_size: int) -> tuple[BlockDataset, BlockDataset]:
        """Training blocks at every position, validation blocks side by side (no overlap)."""
        return BlockDataset(self.train_ids, block_size), BlockDataset(self.val_ids, block_size, block_size)


def char_data(text: str, val_fraction: float = 0.1) -> CharData:
    """Character vocabulary of the whole text; the first 90% for training, the last 10% for validation
    (as nanoGPT's shakespeare_char)."""
    vocab = Vocab.from_text(text)
    train, val = train_val_split(text, val_fraction)
    return CharData(vocab, vocab.encode(train), vocab.encode(val))


# --------------------------------------------------------------------------- initialisation


RESIDUAL_PROJECTIONS = ("attn.out_proj.weight", "ffn.fc2.weight")  # the layers that write into the residual


@torch.no_grad()
def init_gpt2_weights(model: nn.Module, std: float = 0.02) -> nn.Module:
    """GPT-2's initialisation for the course's GPT, in place: every linear and embedding weight from
    N(0, std^2), biases 0, LayerNorms gain 1 and bias 0, and the two projections that add into the
    residual stream in each block from N(0, (std / sqrt(2 n_layers))^2).

    PyTorch's defaults give embeddings N(0, 1); with the LM head tied to them the first logits are
    about sqrt(d_model) large and the first loss far above ln(vocab_size). The residual scaling keeps
    the residual stream's variance from growing with depth (2 additions per block).
    """
    n_layers = len(getattr(model, "blocks", [])) or 1
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.zero_()
        elif p.ndim == 1:  # LayerNorm gains
            p.fill_(1.0)
        elif name.endswith(RESIDUAL_PROJECTIONS):
            p.normal_(0.0, std / math.sqrt(2 * n_layers))
        else:
            p.normal_(0.0, std)
    return model


# --------------------------------------------------------------------------- loss


def logits_of(out: Any) -> torch.Tensor:
    """Logits from a model's output: a tensor (the course's GPT) or `.logits` (transformers)."""
    logits = get_logits(out)
    if logits is None:
        raise TypeError(f"No logits in the model's output ({type(out).__name__}).")
    return logits


def causal_lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The Trainer's loss_fn: mean cross-entropy of the next-token logits against `labels`.

    The batch holds inputs and targets already shifted (`BlockDataset`), so no shift happens here
    (transformers' models shift inside when given labels=input_ids; we call them without labels).
    Returns (loss, logits).
    """
    logits = logits_of(model(batch["input_ids"]))  # (B, T, V)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(),  # (B*T, V), (B*T,)
                           ignore_index=IGNORE_INDEX)
    return loss, logits


# --------------------------------------------------------------------------- sampling filters


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row (and any tied with the k-th), set the others to -inf.

    k larger than the vocabulary keeps everything. As transformers' TopKLogitsWarper.
    """
    if k < 1:
        raise ValueError(f"top_k must be at least 1, got {k}.")
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1) the k-th largest value
    return logits.masked_fill(logits < kth, -math.inf)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probabilities add up to
    at least p, set the other logits to -inf. The most likely token always stays.

    A token is dropped when the tokens more likely than it already reach p. p >= 1 keeps everything.
    """
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {p}.")
    if p >= 1.0:
        return logits.clone()
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (..., V) each
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    before = torch.cumsum(probs, dim=-1) - probs  # probability of the tokens ahead of each one
    drop_sorted = before >= p  # the first token has before = 0 < p: it always stays
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to the original order
    return logits.masked_fill(drop, -math.inf)


# --------------------------------------------------------------------------- generation


def context_length(model: nn.Module) -> int | None:
    """The longest input a model accepts: the course GPT's block_size, transformers' n_positions."""
    cfg = getattr(model, "cfg", None)
    if cfg is not None and hasattr(cfg, "block_size"):
        return int(cfg.block_size)
    hf = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(hf, name, None)
        if value:
            return int(value)
    return None


def next_token_logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The model's logits for the token after `ids` (B, T) -> (B, V), with the context cropped to
    the model's context length."""
    n = context_length(model)
    if n is not None and ids.shape[1] > n:
        ids = ids[:, -n:]  # (B, n) a sliding window: the model never saw longer inputs
    return logits_of(model(ids))[:, -1, :].float()  # (B, V)


def _cache_argument(model: nn.Module) -> str | None:
    """The keyword a model takes its KV cache by: `cache` (the course's GPT, recent transformers),
    `past_key_values` (older transformers), or None (no cache)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return None
    if "use_cache" not in params:
        return None
    return next((name for name in ("cache", "past_key_values") if name in params), None)


def forward_with_cache(model: nn.Module, ids: torch.Tensor, cache: Any = None) -> tuple[torch.Tensor, Any]:
    """One call with a KV cache: ids (B, T) follow the tokens `cache` holds (None: no tokens yet)
    -> (logits (B, T, V), the cache, now holding them too). The course's GPT or a transformers LM."""
    name = _cache_argument(model)
    if name is None:
        raise TypeError(f"{type(model).__name__} takes no KV cache (no `cache` / `past_key_values` "
                        "and `use_cache` arguments): generate with use_cache=False.")
    out = model(ids, **{name: cache}, use_cache=True)
    if isinstance(out, tuple):  # the course's GPT: (logits, cache)
        return out[0], out[1]
    new = getattr(out, "cache", None)
    return logits_of(out), new if new is not None else getattr(out, "past_key_values", None)


def _reorder_cache(cache: Any, index: torch.Tensor) -> None:
    """Keep the batch rows `index` of a KV cache, in place (ours and transformers' alike)."""
    reorder = getattr(cache, "reorder_cache", None)
    if reorder is None:
        raise TypeError(f"A {type(cache).__name__} cannot be reordered for beam search: use_cache=False.")
    reorder(index)


def _next_logits(model: nn.Module, x: torch.Tensor, cache: Any, use_cache: bool,
                 context: int | None) -> tuple[torch.Tensor, Any]:
    """Float logits (B, V) of the token after x (B, T), and the cache to pass the next time.

    The cache holds every token of x but the last (none on the first call: the whole prompt goes
    in). Once x is longer than the model's context, the window slides: every position shifts, the
    cached keys and values are no longer those of the window, so it is computed afresh each step.
    """
    if not use_cache or (context is not None and x.shape[1] > context):
        return next_token_logits(model, x), None
    new = x if cache is None else x[:, -1:]  # (B, T) the prompt, then (B, 1): only the new token
    logits, cache = forward_with_cache(model, new, cache)
    return logits[:, -1, :].float(), cache  # (B, V)


def _prompt_batch(model: nn.Module, ids: torch.Tensor | Sequence[int], what: str) -> tuple[torch.Tensor, bool]:
    """ids as a (B, T) long tensor on the model's device, and whether they were 1-D."""
    param = next(model.parameters())
    x = torch.as_tensor(ids, dtype=torch.long).to(param.device)
    one_d = x.ndim == 1
    if one_d:
        x = x[None]  # (1, T)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"{what} needs a prompt of at least one token, shaped (T,) or (B, T); "
                         f"got shape {tuple(x.shape)}.")
    return x, one_d


@torch.no_grad()
def generate(
    model: nn.Module,
    ids: torch.Tensor | Sequence[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Continue `ids` by `max_new_tokens` tokens, one at a time; returns prompt + new tokens.

    temperature=0 is greedy decoding (the argmax each step). Otherwise the logits are divided by
    the temperature, filtered by top-k, then by top-p, and a token is drawn from their softmax with
    `generator` (seeded: reproducible). `ids` is (T,) or (B, T); the result has the same rank.
    Works for the course's GPT (logits) and for transformers causal LMs (`.logits`).

    use_cache=True feeds the prompt once and then only each new token, with a KV cache (for as
    long as the sequence fits the model's context; beyond it the window slides and each step is
    computed afresh); use_cache=False computes the whole sequence every step. Both give the same
    logits up to float rounding.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0: greedy), got {temperature}.")
    x, one_d = _prompt_batch(model, ids, "generate")
    use_cache = use_cache and _cache_argument(model) is not None
    context = context_length(model)
    cache = None
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            logits, cache = _next_logits(model, x, cache, use_cache, context)  # (B, V)
            if temperature == 0:
                nxt = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
            else:
                logits = logits / temperature
                if top_k is not None:
                    logits = top_k_filter(logits, top_k)
                if top_p is not None:
                    logits = top_p_filter(logits, top_p)
                probs = torch.softmax(logits, dim=-1)  # (B, V)
                if generator is not None and probs.device != generator.device:
                    probs = probs.to(generator.device)  # sample where the generator lives
                nxt = torch.multinomial(probs, 1, generator=generator).to(x.device)  # (B, 1)
            x = torch.cat([x, nxt], dim=1)  # (B, T+1)
    finally:
        model.train(was_training)
    return x[0] if one_d else x


# --------------------------------------------------------------------------- beam search


EARLY_STOPPING = (False, True, "never")  # transformers' settings of early_stopping


def _beam_search_one(model: nn.Module, prompt: torch.Tensor, num_beams: int, max_new_tokens: int,
                     length_penalty: float, eos_token_id: int | None, early_stopping: bool | str,
                     use_cache: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Beam search from one prompt (1, T): the finished hypotheses as (score, ids), best first."""
    context = context_length(model)
    seqs = prompt  # (n_beams, T) the running beams: one, the prompt, at first
    scores = torch.zeros(1, device=prompt.device)  # (n_beams,) sum of the new tokens' log-probs
    finished: list[tuple[torch.Tensor, torch.Tensor]] = []  # (score / length ** penalty, ids)
    cache = None
    for step in range(max_new_tokens):
        logits, cache = _next_logits(model, seqs, cache, use_cache, context)  # (n_beams, V)
        logp = torch.log_softmax(logits.float(), dim=-1)  # (n_beams, V)
        V = logp.shape[-1]
        total = (logp + scores[:, None]).flatten()  # (n_beams * V,) beam-major, as transformers
        # 2 * num_beams candidates: even if num_beams of them end here, num_beams go on
        top, idx = torch.topk(total, min(2 * num_beams, total.numel()))  # sorted, best first
        beam, token = idx // V, idx % V  # (k,) each
        length = step + 1  # new tokens of every candidate, its EOS included
        if step == max_new_tokens - 1:
            ends = torch.ones_like(token, dtype=torch.bool)  # the last step: every candidate ends
        elif eos_token_id is not None:
            ends = token == eos_token_id
        else:
            ends = torch.zeros_like(token, dtype=torch.bool)
        # a candidate that ends joins the finished hypotheses only when it is among the num_beams
        # best; the rest of the 2 * num_beams exist only so that num_beams can go on
        for r in range(min(num_beams, len(top))):
            if ends[r]:
                ids = torch.cat([seqs[beam[r]], token[r:r + 1]])  # (T + length,)
                finished.append((top[r] / length ** length_penalty, ids))
        finished = sorted(finished, key=lambda h: -float(h[0]))[:num_beams]  # stable: ties keep order
        going = (~ends).nonzero().flatten()[:num_beams]  # the num_beams best that go on
        if len(going) == 0:
            break
        seqs = torch.cat([seqs[beam[going]], token[going, None]], dim=1)  # (num_beams, T + length)
        scores = top[going]
        if cache is not None:
            _reorder_cache(cache, beam[going])  # each new beam continues its parent's keys and values
        if len(finished) == num_beams:  # stop when no running beam can still do better
            if early_stopping is True:
                break
            best_length = max_new_tokens if early_stopping == "never" and length_penalty > 0 else length
            if not bool(scores[0] / best_length ** length_penalty > finished[-1][0]):
                break
    return finished


@torch.no_grad()
def beam_search(
    model: nn.Module,
    ids: torch.Tensor | Sequence[int],
    num_beams: int,
    max_new_tokens: int,
    length_penalty: float = 1.0,
    eos_token_id: int | None = None,
    early_stopping: bool | str = False,
    num_return_sequences: int = 1,
    pad_token_id: int | None = None,
    use_cache: bool = True,
    return_scores: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Beam search, the way transformers' `generate(num_beams=..., do_sample=False)` does it.

    Each step every running beam is extended by every token; a candidate's score is the sum of the
    log-probabilities of its new tokens. Of all beams x vocabulary, the 2 * num_beams best are
    looked at in order: one that ends with `eos_token_id` is finished if it is among the
    num_beams best, with score sum / (new tokens, its EOS included) ** length_penalty; the best
    num_beams others go on. At max_new_tokens the num_beams best candidates all finish. The
    num_beams best finished hypotheses are kept. It stops early, once num_beams are finished,
    when the best running beam, scored at its current length (early_stopping=False), or at
    max_new_tokens if length_penalty > 0 (early_stopping="never"), cannot beat the worst finished
    one; early_stopping=True stops as soon as num_beams are finished. length_penalty > 0 favours
    longer hypotheses, < 0 shorter ones; the prompt's length never counts.

    ids (T,) gives the best sequence (T + n,) (n <= max_new_tokens, ending with EOS when shorter)
    when num_return_sequences is 1; else (and for (B, T), each row its own search) the
    num_return_sequences best per row, (B * num_return_sequences, L), shorter ones padded with
    pad_token_id (None: eos_token_id). return_scores=True also returns their scores. Equals
    transformers' sequences (and sequences_scores) when the vocabulary has at least 2 * num_beams
    tokens (transformers then never has to continue a beam it ruled out) and the prompt and
    max_new_tokens fit the model's context (past it, this slides the window as `generate` does;
    transformers' position table runs out).
    """
    if num_beams < 1 or max_new_tokens < 1:
        raise ValueError(f"num_beams and max_new_tokens must be at least 1, got {num_beams} and "
                         f"{max_new_tokens}.")
    if not 1 <= num_return_sequences <= num_beams:
        raise ValueError(f"num_return_sequences={num_return_sequences} must be between 1 and "
                         f"num_beams={num_beams}: only num_beams hypotheses are kept.")
    if early_stopping not in EARLY_STOPPING:
        raise ValueError(f"early_stopping must be one of {EARLY_STOPPING}, got {early_stopping!r}.")
    x, one_d = _prompt_batch(model, ids, "beam_search")
    use_cache = use_cache and _cache_argument(model) is not None
    was_training = model.training
    model.eval()
    try:
        results = [_beam_search_one(model, row[None], num_beams, max_new_tokens, length_penalty,
                                    eos_token_id, early_stopping, use_cache)[:num_return_sequences]
                   for row in x]
    finally:
        model.train(was_training)
    hyps = [h for row in results for h in row]
    longest = max(len(h_ids) for _, h_ids in hyps)
    pad = pad_token_id if pad_token_id is not None else eos_token_id
    if pad is None and any(len(h_ids) < longest for _, h_ids in hyps):
        raise ValueError("Hypotheses of different lengths need a pad_token_id.")
    out = torch.full((len(hyps), longest), pad if pad is not None else 0, dtype=torch.long, device=x.device)
    for i, (_, h_ids) in enumerate(hyps):
        out[i, :len(h_ids)] = h_ids  # (B * R, L)
    out_scores = torch.stack([score for score, _ in hyps])  # (B * R,)
    if one_d and num_return_sequences == 1:
        out, out_scores = out[0], out_scores[0]
    return (out, out_scores) if return_scores else out


# --------------------------------------------------------------------------- the KV cache's cost


def kv_cache_bytes(n_layers: int, d_model: int, batch_size: int, n_tokens: int,
                   bytes_per_element: int = 4) -> int:
    """Bytes of a KV cache: 2 (keys and values) * n_layers * B * T * d_model * bytes per element.

    Every layer keeps a key and a value vector of d_model numbers (n_heads heads of d_head) for
    each token of each sequence; float32 takes 4 bytes an element, bfloat16 2.
    """
    return 2 * n_layers * batch_size * n_tokens * d_model * bytes_per_element


@dataclass
class GenerationTiming:
    """Greedy generation of `new_tokens` tokens with and without the KV cache."""

    new_tokens: int
    seconds_cache: float       # the fastest of the timed runs
    seconds_no_cache: float
    cache_bytes: int           # what the cache's tensors take at the end (the last token never fed)
    formula_bytes: int         # kv_cache_bytes(...) for the same number of tokens
    same_tokens: bool          # both generated the same tokens

    @property
    def speedup(self) -> float:
        return self.seconds_no_cache / self.seconds_cache


def time_generation(model: nn.Module, prompt_len: int, new_tokens: Sequence[int], batch_size: int = 1,
                    repeats: int = 1, seed: int = config.DEFAULT_SEED) -> list[GenerationTiming]:
    """Time greedy generation of each number of `new_tokens` after a random prompt, with and
    without the KV cache, and measure the cache's memory (the course's GPT, on its device).

    The model's context (block_size) must hold prompt_len + max(new_tokens): beyond it generation
    slides its window and recomputes every step, cache or not.
    """
    from lmcourse.transformer import GPT

    if not isinstance(model, GPT):
        raise TypeError(f"time_generation measures the course's GPT, got {type(model).__name__}.")
    cfg = model.cfg
    if prompt_len + max(new_tokens) > cfg.block_size:
        raise ValueError(f"prompt_len + max(new_tokens) = {prompt_len + max(new_tokens)} is more than "
                         f"block_size={cfg.block_size}: build the GPT with a larger block_size (the "
                         "time does not depend on the weights, random ones will do).")
    param = next(model.parameters())
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, cfg.vocab_size, (batch_size, prompt_len), generator=g).to(param.device)

    def sync() -> None:
        if param.device.type == "cuda":
            torch.cuda.synchronize(param.device)

    def timed(n: int, use_cache: bool) -> tuple[float, torch.Tensor]:
        best, out = math.inf, prompt
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            out = generate(model, prompt, n, temperature=0.0, use_cache=use_cache)
            sync()
            best = min(best, time.perf_counter() - t0)
        return best, out

    generate(model, prompt, 2, temperature=0.0)  # warm-up: first calls pay for allocations
    rows = []
    was_training = model.training
    for n in new_tokens:
        s_cache, with_cache = timed(n, True)
        s_plain, without = timed(n, False)
        with torch.no_grad():  # the cache as it stands after the last step: every token but the last
            _, cache = forward_with_cache(model.eval(), with_cache[:, :-1])
        model.train(was_training)
        rows.append(GenerationTiming(
            n, s_cache, s_plain, cache.nbytes(),
            kv_cache_bytes(cfg.n_layers, cfg.d_model, batch_size, with_cache.shape[1] - 1,
                           param.element_size()),
            torch.equal(with_cache, without)))
    return rows


def format_timings(rows: Sequence[GenerationTiming]) -> str:
    """A table of `time_generation`'s rows: new tokens, seconds with and without the cache,
    speed-up, and the cache's size in MiB (measured, and by the formula)."""
    lines = [f"{'new tokens':>10} {'cache (s)':>10} {'no cache (s)':>13} {'speed-up':>9} "
             f"{'cache MiB':>10} {'formula MiB':>12}"]
    for r in rows:
        lines.append(f"{r.new_tokens:>10} {r.seconds_cache:>10.3f} {r.seconds_no_cache:>13.3f} "
                     f"{r.speedup:>8.1f}x {r.cache_bytes / 2**20:>10.2f} {r.formula_bytes / 2**20:>12.2f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- during training


@dataclass
class SampleCallback:
    """A Trainer callback that generates a sample every `every` steps (and at the last step), keeps
    it in `samples` as (step, text), and prints it."""

    decode: Callable[[list[int]], str]  # ids -> text, e.g. vocab.decode
    prompt_ids: Sequence[int] | torch.Tensor
    every: int
    max_new_tokens: int = 200
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = config.DEFAULT_SEED  # each sample draws from a new generator seeded with this,
    #                                so every sample makes the same draws and only the model changes
    show: bool = True              # print each sample
    samples: list[tuple[int, str]] = field(default_factory=list)

    def __call__(self, trainer: Any, record: dict[str, Any]) -> None:
        step = trainer.state.step
        if step % self.every and step != trainer.total_steps:
            return
        g = torch.Generator().manual_seed(self.seed)  # the same draws each time: only the model changes
        ids = generate(trainer.model, self.prompt_ids, self.max_new_tokens, self.temperature,
                       self.top_k, self.top_p, generator=g)
        text = self.decode(ids.tolist())
        self.samples.append((step, text))
        if self.show and getattr(trainer, "is_main", True):  # under torchrun: rank 0 prints
            print(f"--- step {step} (loss {record['loss']:.3f}) ---\n{text}\n", flush=True)


# --------------------------------------------------------------------------- saving


def save_hf(model: nn.Module, folder: str | Path) -> Path:
    """Save the course's GPT as a transformers GPT2LMHeadModel folder (config.json,
    model.safetensors); `AutoModelForCausalLM.from_pretrained(folder)` loads it."""
    from lmcourse.transformer import GPT, gpt_to_hf

    if not isinstance(model, GPT):
        raise TypeError(f"save_hf expects the course's GPT, got {type(model).__name__}.")
    folder = Path(folder)
    gpt_to_hf(model).eval().save_pretrained(folder)
    return folder


def load_hf(folder: str | Path, device: torch.device | str | None = None) -> nn.Module:
    """Load a causal LM folder with transformers' AutoModelForCausalLM, in eval mode, on `device`
    (None: the course's device, `lm.get_device()`)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder)).to(config.get_device(device)).eval()
