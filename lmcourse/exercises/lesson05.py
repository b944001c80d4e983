"""Checked exercises of lesson 05, part 1 (tokenization and causal-LM pretraining of a GPT)."""

from __future__ import annotations

import math

import torch

from lmcourse import pretraining
from lmcourse.checker import Case, Diagnosis, Exercise, Mistake
from lmcourse.exercises import register

LESSON = "05_pretraining_gpt"
NEG_INF = -math.inf


def _logits(probs) -> torch.Tensor:
    """Logits whose softmax is `probs` (log-probabilities, up to a constant)."""
    return torch.tensor(probs, dtype=torch.float32).log()


# --------------------------------------------------------------------------- causal-LM targets


def _targets_cases() -> list[Case]:
    g = torch.Generator().manual_seed(5)
    return [
        Case("one sequence", (torch.tensor([10, 11, 12, 13, 14]),),
             hint="inputs are every token but the last, targets every token but the first."),
        Case("batch of sequences", (torch.randint(0, 50, (3, 7), generator=g),),
             hint="shift along the LAST dimension (time), never along the batch: ids[..., :-1]."),
        Case("two tokens", (torch.tensor([[4, 2]]),),
             hint="two tokens make one training pair: input [4], target [2]."),
        Case("repeated tokens", (torch.tensor([7, 7, 3, 7]),),
             hint="slice by position, not by value."),
    ]


def _targets_no_shift(ids):
    return ids, ids


def _targets_wrong_way(ids):
    return ids[..., 1:], ids[..., :-1]


def _targets_batch_dim(ids):
    return ids[:-1], ids[1:]


def _targets_roll(ids):
    return ids, torch.roll(ids, -1, dims=-1)


register(Exercise(
    key="causal_lm_targets",
    lesson=LESSON,
    reference=pretraining.causal_lm_targets,
    cases=_targets_cases,
    outputs=("inputs", "targets"),
    library_name="lm.pretraining.causal_lm_targets",
    mistakes=[
        Mistake("no shift", _targets_no_shift,
                "inputs and targets are the same tokens: the model would learn to copy its input, "
                "which the causal mask makes trivial. The target at position t is token t+1."),
        Mistake("shifted the wrong way", _targets_wrong_way,
                "your targets are the PREVIOUS tokens; a causal LM predicts the NEXT one: "
                "inputs ids[..., :-1], targets ids[..., 1:]."),
        Mistake("shifted along the batch", _targets_batch_dim,
                "ids[:-1] cuts the first dimension, which for a batch is the examples; shift along "
                "the last dimension (time) with ids[..., :-1] and ids[..., 1:]."),
        Mistake("rolled around", _targets_roll,
                "torch.roll wraps the first token around as the target of the last position: a "
                "pair that never occurs in the text. Slice instead; both results are one shorter."),
    ],
))


# --------------------------------------------------------------------------- what a filter keeps


def _kept_tokens(got, want, case: Case) -> Diagnosis | None:
    """A sampling filter keeps the most likely tokens of each row: which does the learner keep?"""
    logits = case.args[0]
    if not isinstance(got, torch.Tensor) or got.shape != logits.shape or not got.is_floating_point():
        return None
    kept_g, kept_w = got > NEG_INF, want > NEG_INF
    if torch.equal(kept_g, kept_w):
        return None
    removed = ~kept_w
    if removed.any() and torch.isfinite(got[removed]).all() and bool((got[removed] == got[removed][0]).all()):
        return None  # the right tokens, removed with a finite value: the generic -inf advice fits
    rows_l, rows_g, rows_w = (t.reshape(-1, logits.shape[-1]) for t in (logits, kept_g, kept_w))
    for r, (lg, kg) in enumerate(zip(rows_l, rows_g)):
        if kg.any() and (~kg).any() and lg[~kg].max() > lg[kg].min():
            where = f"in row {r} " if rows_l.shape[0] > 1 else ""
            return Diagnosis("not the most likely tokens", f"{where}you keep a token with logit "
                             f"{float(lg[kg].min()):.3g} but remove a more likely one with logit "
                             f"{float(lg[~kg].max()):.3g}: the kept tokens must be the most likely "
                             "ones of their own row. Sort each row (along the last dimension) in "
                             "descending order before you decide.")
    r = int((rows_g != rows_w).any(-1).nonzero()[0])
    n_g, n_w = int(rows_g[r].sum()), int(rows_w[r].sum())
    where = f" in row {r}" if rows_l.shape[0] > 1 else ""
    if n_g == 0:
        return Diagnosis("nothing kept", f"you remove every token{where}; the most likely token must "
                         "always stay.")
    return Diagnosis("kept too many" if n_g > n_w else "kept too few",
                     f"you keep {n_g} token{'s' if n_g != 1 else ''}{where} where {n_w} should stay.")


def _top_k_threshold(got, want, case: Case) -> Diagnosis | None:
    """Which value the learner's threshold is, counted from the largest."""
    d = _kept_tokens(got, want, case)
    if d is None or d.name not in ("kept too many", "kept too few"):
        return d
    logits, k = case.args
    V = logits.shape[-1]
    k = min(k, V)
    rows_l = logits.reshape(-1, V)
    rows_g = (got > NEG_INF).reshape(-1, V)
    r = int((rows_g != (want > NEG_INF).reshape(-1, V)).any(-1).nonzero()[0])
    desc = rows_l[r].sort(descending=True).values
    smallest_kept = rows_l[r][rows_g[r]].min()
    rank = int((desc > smallest_kept).sum()) + 1  # the learner's threshold is the rank-th largest
    note = (" (the k-th SMALLEST: sorted in ascending order)" if rank == V - k + 1 and rank != k
            else "")
    return Diagnosis(d.name, f"{d.advice} Your threshold is the {rank}-th largest logit{note}; it "
                     f"must be the k-th largest (k = {k}): torch.topk(logits, k).values[..., -1:], "
                     "or index k - 1 of the logits sorted in descending order. Keep everything >= it.")


# --------------------------------------------------------------------------- top-k filtering


def _topk_cases() -> list[Case]:
    g = torch.Generator().manual_seed(6)
    return [
        Case("k = 2", (torch.tensor([1.0, 3.0, -2.0, 2.5, 0.0]), 2),
             hint="keep the 2 largest logits as they are; every other one becomes -inf."),
        Case("batch of rows", (torch.randn(4, 10, generator=g), 3),
             hint="each row keeps its own k largest: topk along the last dimension."),
        Case("k = 1", (torch.tensor([[0.5, -1.0, 2.0, 1.9]]), 1),
             hint="k = 1 keeps only the largest logit (greedy's choice)."),
        Case("ties at the k-th value", (torch.tensor([4.0, 1.0, 3.0, 3.0, 0.0]), 2),
             hint="keep every logit >= the k-th largest value (a threshold), as transformers does: "
                  "tokens tied with the k-th one stay."),
        Case("ties around the k-th value", (torch.tensor([[2.0, 5.0, 2.0, 5.0, 1.0, 2.0]]), 3),
             hint="the 3rd largest value is 2, and three logits equal it: all of them stay, with "
                  "the two 5s (remove only what is strictly below the threshold)."),
        Case("all logits equal", (torch.tensor([[1.0, 1.0, 1.0, 1.0]]), 2),
             hint="every logit equals the k-th largest: nothing is strictly below it, so all stay."),
        Case("k larger than the vocabulary", (torch.tensor([0.1, 0.2, 0.3]), 10),
             hint="with k >= the vocabulary size nothing is removed: use min(k, logits.shape[-1])."),
        Case("negative logits", (torch.tensor([-5.0, -1.0, -3.0, -2.0]), 2),
             hint="the removed entries must be -inf, lower than any logit (0 is larger than these)."),
    ]


def _topk_smallest(logits, k):
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1, largest=False).values[..., -1:]
    return logits.masked_fill(logits > kth, NEG_INF)


def _topk_off_by_one(logits, k):
    s = torch.sort(logits, dim=-1, descending=True).values
    kth = s[..., min(k, logits.shape[-1] - 1):][..., :1]  # the (k+1)-th largest
    return logits.masked_fill(logits < kth, NEG_INF)


def _topk_zero(logits, k):
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, 0.0)


def _topk_exactly_k(logits, k):
    k = min(k, logits.shape[-1])
    idx = torch.topk(logits, k, dim=-1).indices
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, idx, True)
    return logits.masked_fill(~keep, NEG_INF)


def _topk_removes_kth(logits, k):
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits <= kth, NEG_INF)


def _topk_no_clamp(logits, k):
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, NEG_INF)


def _topk_global(logits, k):
    kth = torch.topk(logits.flatten(), min(k, logits.numel())).values[-1]
    return logits.masked_fill(logits < kth, NEG_INF)


register(Exercise(
    key="top_k_filter",
    lesson=LESSON,
    reference=pretraining.top_k_filter,
    cases=_topk_cases,
    diagnosers=[_top_k_threshold],
    library_name="lm.pretraining.top_k_filter",
    mistakes=[
        Mistake("keeps the k smallest", _topk_smallest,
                "you keep the k LEAST likely tokens; keep the k largest logits (torch.topk's default "
                "largest=True) and remove what is below the k-th largest."),
        Mistake("off by one (k + 1 kept)", _topk_off_by_one,
                "you keep k + 1 tokens: the k-th largest value is at index k - 1 of the sorted "
                "logits (topk(...).values[..., -1])."),
        Mistake("0 instead of -inf", _topk_zero,
                "a removed logit must be -inf so that softmax gives it probability exp(-inf) = 0; a "
                "logit of 0 still has probability, and can even beat negative kept logits."),
        Mistake("exactly k, ties dropped", _topk_exactly_k,
                "scattering topk's indices keeps exactly k tokens and drops an arbitrary one of a "
                "tie; compare with the k-th largest value instead (logits < kth -> -inf), so tied "
                "tokens are treated alike."),
        Mistake("k-th removed too (<= instead of <)", _topk_removes_kth,
                "you remove the k-th largest logit itself (and every one tied with it): remove only "
                "what is strictly below it, logits < kth, so that k tokens (or more, with ties) stay."),
        Mistake("k not clamped", _topk_no_clamp,
                "torch.topk fails when k is larger than the vocabulary; use k = min(k, "
                "logits.shape[-1]) (asking for more tokens than exist keeps them all)."),
        Mistake("one threshold for the whole batch", _topk_global,
                "you take the k largest of the whole tensor; each row (each sequence in the batch) "
                "keeps its own k largest: topk along dim=-1."),
    ],
))


# --------------------------------------------------------------------------- top-p (nucleus) filtering


def _topp_cases() -> list[Case]:
    g = torch.Generator().manual_seed(7)
    # probabilities 0.5, 0.2, 0.15, 0.1, 0.05 in a shuffled order
    dist = _logits([0.1, 0.5, 0.05, 0.2, 0.15])
    return [
        Case("p = 0.6", (dist, 0.6),
             hint="0.5 alone is not enough; 0.5 + 0.2 = 0.7 >= 0.6: keep those two tokens. The token "
                  "that crosses p belongs to the nucleus."),
        Case("p = 0.9", (dist, 0.9),
             hint="0.5 + 0.2 + 0.15 = 0.85 < 0.9, adding 0.1 gives 0.95: keep four tokens."),
        Case("p below the top probability", (dist, 0.3),
             hint="the most likely token alone already reaches p: keep just it (never remove all)."),
        Case("p = 1", (dist, 1.0), hint="p = 1 keeps every token."),
        Case("mass reaches p exactly", (torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, NEG_INF, NEG_INF]]), 0.5),
             hint="row 0: four tokens of 0.25 each; the first two add up to exactly 0.5 = p, so the "
                  "nucleus is complete with two (drop a token once the ones BEFORE it reach p: "
                  "before >= p). Row 1: 0.5 alone reaches p. Tied tokens are interchangeable.",
             canonical=lambda out: torch.as_tensor(out).sort(dim=-1, descending=True).values),
        Case("batch of rows", (torch.randn(3, 8, generator=g) * 2, 0.75),
             hint="each row gets its own sort, cumulative sum and nucleus, along the last dimension."),
        Case("shifted logits", (_logits([0.3, 0.45, 0.25]) + 1000.0, 0.7),
             hint="the cumulative sum is over PROBABILITIES (softmax of the logits), not the logits; "
                  "here the logits are near 1000 but the probabilities are 0.45, 0.3, 0.25."),
        Case("3-D logits (B x T x V)", (torch.randn(2, 3, 6, generator=g), 0.5),
             hint="work along the last dimension, whatever the leading dimensions."),
    ]


def _topp_excludes_crossing(logits, p):
    s, order = torch.sort(logits, dim=-1, descending=True)
    cum = torch.softmax(s, -1).cumsum(-1)
    drop = cum > p
    drop[..., 0] = False
    return logits.masked_fill(drop.scatter(-1, order, drop), NEG_INF)


def _topp_excludes_crossing_and_top(logits, p):
    s, order = torch.sort(logits, dim=-1, descending=True)
    cum = torch.softmax(s, -1).cumsum(-1)
    drop = cum > p
    return logits.masked_fill(drop.scatter(-1, order, drop), NEG_INF)


def _topp_strict_before(logits, p):
    s, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(s, -1)
    drop = probs.cumsum(-1) - probs > p
    return logits.masked_fill(drop.scatter(-1, order, drop), NEG_INF)


def _topp_cum_at_least(logits, p):
    s, order = torch.sort(logits, dim=-1, descending=True)
    drop = torch.softmax(s, -1).cumsum(-1) >= p
    drop[..., 0] = False
    return logits.masked_fill(drop.scatter(-1, order, drop), NEG_INF)


def _topp_ascending(logits, p):
    s, order = torch.sort(logits, dim=-1)
    probs = torch.softmax(s, -1)
    drop = probs.cumsum(-1) - probs >= p
    return logits.masked_fill(drop.scatter(-1, order, drop), NEG_INF)


def _topp_logits_cumsum(logits, p):
    s, order = torch.sort(logits, dim=-1, descending=True)
    drop = s.cumsum(-1) - s >= p
    return logits.masked_fill(drop.scatter(-1, order, drop), NEG_INF)


def _topp_not_unsorted(logits, p):
    s, _ = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(s, -1)
    drop = probs.cumsum(-1) - probs >= p
    return logits.masked_fill(drop, NEG_INF)


def _topp_returns_sorted(logits, p):
    s, _ = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(s, -1)
    drop = probs.cumsum(-1) - probs >= p
    return s.masked_fill(drop, NEG_INF)


register(Exercise(
    key="top_p_filter",
    lesson=LESSON,
    reference=pretraining.top_p_filter,
    cases=_topp_cases,
    diagnosers=[_kept_tokens],
    library_name="lm.pretraining.top_p_filter",
    mistakes=[
        Mistake("excludes the token that crosses p", _topp_excludes_crossing,
                "you keep only tokens whose cumulative probability is <= p, so the kept set adds up "
                "to LESS than p; the nucleus is the smallest set that reaches p, so the token that "
                "crosses p stays. Drop a token when the tokens BEFORE it already reach p: "
                "cumsum - probs >= p."),
        Mistake("removes everything when p is small", _topp_excludes_crossing_and_top,
                "with cumsum > p every token is removed when the top token alone exceeds p (all "
                "-inf, softmax gives nan); the most likely token must always stay. Compare what "
                "comes BEFORE each token: cumsum - probs >= p."),
        Mistake("one too many at exactly p (> instead of >=)", _topp_strict_before,
                "when the tokens before one add up to exactly p, the nucleus is already complete: "
                "drop that token too. Compare with >=: cumsum - probs >= p, not > p."),
        Mistake("drops the token that reaches p exactly (cumsum >= p)", _topp_cum_at_least,
                "the token whose cumulative probability reaches exactly p belongs to the nucleus "
                "(it is what makes the mass reach p); decide on the mass BEFORE each token: drop "
                "when cumsum - probs >= p."),
        Mistake("sorted ascending", _topp_ascending,
                "you accumulate from the least likely token; the nucleus is built from the MOST "
                "likely ones: sort with descending=True."),
        Mistake("cumulative sum of logits", _topp_logits_cumsum,
                "logits are not probabilities (they can be negative or 1000); apply softmax to the "
                "sorted logits before the cumulative sum."),
        Mistake("mask left in sorted order", _topp_not_unsorted,
                "your mask is in SORTED order but you apply it to the unsorted logits; put it back "
                "in the original order first: mask.scatter(-1, sorted_indices, mask)."),
        Mistake("returns the sorted logits", _topp_returns_sorted,
                "you return the logits in sorted order, so token ids no longer match positions; "
                "return the original logits with the removed ones set to -inf."),
    ],
))
