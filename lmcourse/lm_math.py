"""Lesson 01, language-model math: probabilities of sequences, softmax, cross-entropy, perplexity,
and a count-based bigram language model over characters."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

# The label of a position that no loss counts (padding, unmasked MLM positions, subword
# continuations): torch's cross_entropy default and transformers' convention. The one definition
# in the course; every other module imports it from here.
IGNORE_INDEX = -100


def softmax(logits: torch.Tensor, dim: int = -1, temperature: float = 1.0) -> torch.Tensor:
    """Numerically stable softmax of `logits / temperature` along `dim`."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}; use argmax for temperature 0.")
    z = logits / temperature
    z = z - z.amax(dim=dim, keepdim=True)  # exp of a number <= 0 never overflows
    e = z.exp()
    return e / e.sum(dim=dim, keepdim=True)


def log_softmax(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Numerically stable log-softmax: z - max - log(sum(exp(z - max)))."""
    z = logits - logits.amax(dim=dim, keepdim=True)
    return z - z.exp().sum(dim=dim, keepdim=True).log()


def cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Mean negative log-likelihood of `targets` under `softmax(logits)`; equals F.cross_entropy.

    logits: (N, V) scores, targets: (N,) class ids; positions whose target is `ignore_index`
    (-100, the transformers convention) do not count. Returns nan when every target is ignored,
    as torch does.
    """
    logp = log_softmax(logits, dim=-1)  # (N, V)
    keep = targets != ignore_index  # (N,)
    safe = targets.masked_fill(~keep, 0)  # any valid index; those rows are dropped below
    nll = -logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # (N,)
    return nll[keep].sum() / keep.sum()


def perplexity(log_probs: torch.Tensor) -> torch.Tensor:
    """Perplexity of a text from the log-probabilities of its tokens: exp(-mean log p)."""
    return torch.exp(-log_probs.mean())


def perplexity_from_loss(loss: float) -> float:
    """Perplexity from a mean cross-entropy in nats (a training or evaluation loss): exp(loss),
    the number of equally likely tokens the model hesitates between. Equals
    `perplexity(log_probs)` when `loss = -log_probs.mean()`."""
    return math.exp(loss)


def sequence_log_prob(token_log_probs: Iterable[float]) -> float:
    """Log-probability of a sequence by the chain rule: the sum of each token's conditional log p."""
    return float(sum(token_log_probs))


@dataclass
class Vocab:
    """A character vocabulary: string <-> integer ids."""

    itos: list[str]  # id -> character, sorted

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        return cls(sorted(set(text)))

    @property
    def stoi(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> torch.Tensor:
        stoi = self.stoi
        unknown = sorted({c for c in text if c not in stoi})
        if unknown:
            raise KeyError(
                f"Characters not in the vocabulary: {unknown[:10]!r}. Build the vocabulary from "
                "all the text you will encode (Vocab.from_text(full_text))."
            )
        return torch.tensor([stoi[c] for c in text], dtype=torch.long)

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        return "".join(self.itos[int(i)] for i in ids)


def bigram_counts(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """counts[a, b] = how often token b follows token a in `ids` (a 1-D tensor of ids)."""
    pairs = ids[:-1] * vocab_size + ids[1:]  # one integer per (previous, next) pair
    return torch.bincount(pairs, minlength=vocab_size * vocab_size).view(vocab_size, vocab_size)


def bigram_probs(counts: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """P(next | previous) with add-alpha (Laplace for alpha=1) smoothing; each row sums to 1."""
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}.")
    smoothed = counts.double() + alpha  # (V, V)
    totals = smoothed.sum(dim=1, keepdim=True)  # (V, 1)
    # A row with no counts and alpha=0 has no evidence at all: fall back to uniform.
    uniform = torch.full_like(smoothed, 1.0 / smoothed.shape[1])
    return torch.where(totals > 0, smoothed / totals.clamp_min(1e-300), uniform)


def bigram_log_probs(probs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log P(x_t | x_{t-1}) for t = 1..T-1 of the sequence `ids` under a bigram table."""
    return probs[ids[:-1], ids[1:]].log()


def bigram_sequence_log_prob(probs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Log-probability of the sequence `ids` under a bigram table: the sum of log P(x_t | x_{t-1})."""
    return bigram_log_probs(probs, ids).sum()


def bigram_nll(probs: torch.Tensor, ids: torch.Tensor) -> float:
    """Mean negative log-likelihood (nats per token) of `ids` under a bigram table."""
    return float(-bigram_log_probs(probs, ids).mean())


def sample_bigram(
    probs: torch.Tensor, start: int, length: int, generator: torch.Generator | None = None,
    temperature: float = 1.0,
) -> list[int]:
    """Sample `length` ids after `start` from a bigram table, with an optional temperature."""
    out = [start]
    logits = probs.clamp_min(1e-300).log()
    for _ in range(length):
        p = softmax(logits[out[-1]], temperature=temperature)
        out.append(int(torch.multinomial(p, 1, generator=generator)))
    return out


def train_val_split(text: str, val_fraction: float = 0.1) -> tuple[str, str]:
    """Split a text into a leading training part and a trailing held-out part."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}.")
    cut = int(len(text) * (1 - val_fraction))
    return text[:cut], text[cut:]


def entropy_bits(probs: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Entropy in bits of distributions along `dim` (0 log 0 taken as 0)."""
    p = probs.double()
    return -(p * torch.where(p > 0, p.log2(), torch.zeros_like(p))).sum(dim)


def nats_to_bits(x: float) -> float:
    """Convert a loss in nats (natural log) to bits (log base 2)."""
    return x / math.log(2)
