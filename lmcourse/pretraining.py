"""Lesson 05, causal-LM pretraining: character data cut into blocks, next-token targets, the loss the
`Trainer` minimises, text generation (greedy, temperature, top-k, top-p) for the course's GPT and for
`transformers` causal LMs, a callback that prints samples during training, and saving the model in
`transformers` format.

The training loop itself is `lmcourse.train.Trainer`; the model is `lmcourse.transformer.GPT`.
"""

from __future__ import annotations

import math
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


@torch.no_grad()
def generate(
    model: nn.Module,
    ids: torch.Tensor | Sequence[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Continue `ids` by `max_new_tokens` tokens, one at a time; returns prompt + new tokens.

    temperature=0 is greedy decoding (the argmax each step). Otherwise the logits are divided by
    the temperature, filtered by top-k, then by top-p, and a token is drawn from their softmax with
    `generator` (seeded: reproducible). `ids` is (T,) or (B, T); the result has the same rank.
    Works for the course's GPT (logits) and for transformers causal LMs (`.logits`); no KV cache.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0: greedy), got {temperature}.")
    param = next(model.parameters())
    x = torch.as_tensor(ids, dtype=torch.long).to(param.device)
    one_d = x.ndim == 1
    if one_d:
        x = x[None]  # (1, T)
    if x.shape[1] == 0:
        raise ValueError("generate needs a prompt of at least one token.")
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            logits = next_token_logits(model, x)  # (B, V)
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
        if self.show:
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
