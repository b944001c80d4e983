"""Checked exercises of lesson 01 (language-model math)."""

from __future__ import annotations

import math

import torch

from lmcourse import lm_math
from lmcourse.checker import Case, Exercise, Mistake, Property
from lmcourse.exercises import register

LESSON = "01_lm_math"


def _t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


# --------------------------------------------------------------------------- stable softmax


def _softmax_cases() -> list[Case]:
    g = torch.Generator().manual_seed(0)
    return [
        Case("small vector", (_t([1.0, 2.0, 3.0]),), hint="exponentiate, then divide by the sum."),
        Case("batch of rows", (torch.randn(4, 6, generator=g),),
             hint="normalise each row on its own: sum over the last dimension with keepdim=True."),
        Case("large logits", (_t([1000.0, 999.0, 998.0]),),
             hint="exp(1000) overflows to inf: subtract the maximum before exponentiating."),
        Case("very negative logits", (_t([-1000.0, -1001.0, -1002.0]),),
             hint="exp(-1000) underflows to 0: subtract the maximum before exponentiating."),
        Case("rows on different scales", (_t([[1000.0, 999.0], [-1000.0, -1001.0]]),),
             hint="subtract each row's own maximum (amax over the last dim, keepdim=True)."),
        Case("a wide row", (_t([[-1000.0, 0.0, 1000.0]]),),
             hint="subtract each row's MAXIMUM: then the largest exponent is exp(0) = 1 and none "
                  "overflows, however far apart the logits are."),
        Case("single logit", (_t([[5.0]]),), hint="a single option has probability 1."),
        Case("3-D input", (torch.randn(2, 3, 5, generator=g) * 10,),
             hint="work along the last dimension only, whatever the number of dimensions."),
    ]


def _softmax_naive(x):
    return x.exp() / x.exp().sum(-1, keepdim=True)


def _softmax_global_max(x):
    e = (x - x.max()).exp()
    return e / e.sum(-1, keepdim=True)


def _softmax_dim0(x):
    e = (x - x.amax(0, keepdim=True)).exp()
    return e / e.sum(0, keepdim=True)


def _softmax_unnormalised(x):
    return (x - x.amax(-1, keepdim=True)).exp()


def _softmax_total_sum(x):
    e = (x - x.amax(-1, keepdim=True)).exp()
    return e / e.sum()


def _softmax_log(x):
    z = x - x.amax(-1, keepdim=True)
    return z - z.exp().sum(-1, keepdim=True).log()


register(Exercise(
    key="softmax",
    lesson=LESSON,
    reference=lambda x: lm_math.softmax(x, dim=-1),
    cases=_softmax_cases,
    library_name="lm.lm_math.softmax",
    mistakes=[
        Mistake("no max subtraction", _softmax_naive,
                "exp overflows for large logits (inf/inf = nan): subtract the maximum of each row "
                "first; softmax(z - c) = softmax(z) for any constant c."),
        Mistake("global max", _softmax_global_max,
                "you subtract one maximum for the whole tensor; a row far below it underflows to "
                "0/0. Use each row's own maximum: x.amax(dim=-1, keepdim=True)."),
        Mistake("wrong dimension", _softmax_dim0,
                "you normalise along dimension 0 (down the columns); the probabilities live along "
                "the last dimension (dim=-1)."),
        Mistake("not normalised", _softmax_unnormalised,
                "the outputs must sum to 1 along the last dimension: divide by their sum."),
        Mistake("normalised over everything", _softmax_total_sum,
                "you divide by the sum of the whole tensor; divide each row by its own sum "
                "(sum(dim=-1, keepdim=True))."),
        Mistake("log-softmax returned", _softmax_log,
                "you return log-probabilities (log-softmax, values <= 0); softmax returns the "
                "probabilities themselves: exponentiate, then normalise."),
    ],
))


# --------------------------------------------------------------------------- cross-entropy


def _ce_cases() -> list[Case]:
    g = torch.Generator().manual_seed(1)
    return [
        Case("one example", (_t([[2.0, 1.0, 0.1]]), torch.tensor([0])),
             hint="the loss is -log softmax(logits)[target]."),
        Case("batch", (torch.randn(8, 5, generator=g), torch.randint(0, 5, (8,), generator=g)),
             hint="average the per-example losses over the batch."),
        Case("large logits", (_t([[1000.0, 0.0, -1000.0], [0.0, 1000.0, 0.0]]), torch.tensor([2, 0])),
             hint="log(softmax) underflows to log(0) = -inf: use log-softmax, "
                  "z - max - log(sum(exp(z - max)))."),
        Case("very negative logits", (_t([[-1000.0, -1001.0, -1002.0]]), torch.tensor([1])),
             hint="exp(-1000) underflows to 0 and log(0) = -inf: subtract the maximum so the "
                  "largest term is exp(0) = 1."),
        Case("ignored positions (-100)", (torch.randn(6, 4, generator=g),
                                          torch.tensor([1, -100, 3, 0, -100, 2])),
             hint="targets equal to -100 must not count: leave them out of the sum AND of the "
                  "number you divide by."),
        Case("perfect prediction", (_t([[0.0, 50.0], [50.0, 0.0]]), torch.tensor([1, 0])),
             hint="a confident correct prediction has a loss close to 0."),
    ]


def _ce_probs_not_log(logits, targets):
    keep = targets != -100
    p = lm_math.softmax(logits)
    return -p[keep, targets[keep]].mean()


def _ce_no_minus(logits, targets):
    keep = targets != -100
    return lm_math.log_softmax(logits)[keep, targets[keep]].mean()


def _ce_sum(logits, targets):
    keep = targets != -100
    return -lm_math.log_softmax(logits)[keep, targets[keep]].sum()


def _ce_naive_log(logits, targets):
    keep = targets != -100
    p = logits.exp() / logits.exp().sum(-1, keepdim=True)
    return -p.log()[keep, targets[keep]].mean()


def _ce_counts_ignored(logits, targets):
    keep = targets != -100
    return -lm_math.log_softmax(logits)[keep, targets[keep]].sum() / len(targets)


def _ce_lse_no_max(logits, targets):
    keep = targets != -100
    logp = logits - logits.exp().sum(-1, keepdim=True).log()
    return -logp[keep, targets[keep]].mean()


def _ce_drops_class_zero(logits, targets):
    keep = targets > 0
    return -lm_math.log_softmax(logits)[keep, targets[keep]].mean()


def _ce_ignores_mask(logits, targets):
    t = targets.clamp_min(0)
    return -lm_math.log_softmax(logits)[torch.arange(len(t)), t].mean()


def _examples_are_independent(fn) -> str | None:
    """Each example's loss depends on its own row only: a batch's loss is the mean of its rows' losses."""
    g = torch.Generator().manual_seed(11)
    logits, targets = torch.randn(5, 4, generator=g), torch.tensor([3, 0, 2, 1, 1])
    whole = float(fn(logits, targets))
    alone = [float(fn(logits[i:i + 1], targets[i:i + 1])) for i in range(5)]
    if math.isclose(whole, sum(alone) / 5, rel_tol=1e-4, abs_tol=1e-6):
        return None
    return ("an example's loss must depend on its own row of logits only (the loss of a batch is "
            "the mean of its examples' losses, each computed alone): normalise over the vocabulary, "
            "the last dimension (dim=-1), never over the batch.")


register(Exercise(
    key="cross_entropy",
    lesson=LESSON,
    reference=lm_math.cross_entropy,
    cases=_ce_cases,
    properties=[Property("computed per example", _examples_are_independent)],
    library_name="lm.lm_math.cross_entropy",
    mistakes=[
        Mistake("probabilities, not log-probabilities", _ce_probs_not_log,
                "cross-entropy averages -log p(target), not -p(target): take the logarithm."),
        Mistake("sign error", _ce_no_minus,
                "the loss is the NEGATIVE log-likelihood: log p <= 0, so put a minus sign in "
                "front; a loss must be >= 0."),
        Mistake("sum instead of mean", _ce_sum,
                "average over the counted examples (divide by how many), don't just sum."),
        Mistake("log of softmax", _ce_naive_log,
                "log(softmax(z)) gives -inf/nan for large logits: compute log-softmax directly "
                "as z - max - log(sum(exp(z - max)))."),
        Mistake("log-sum-exp without the max", _ce_lse_no_max,
                "log(sum(exp(z))) overflows to inf for large logits: subtract m = max(z) first "
                "and add it back, log sum exp(z) = m + log sum exp(z - m)."),
        Mistake("ignored positions in the denominator", _ce_counts_ignored,
                "you divide by all positions, -100 ones included; divide by the number of "
                "targets that are not -100."),
        Mistake("class 0 dropped (> 0 instead of != -100)", _ce_drops_class_zero,
                "class 0 is a real class: only -100 marks a position to ignore. Keep targets != -100; "
                "targets > 0 also drops every example whose target is 0."),
        Mistake("-100 not ignored", _ce_ignores_mask,
                "targets equal to -100 mark positions to ignore (padding, subword continuations): "
                "drop them before averaging."),
    ],
))


# --------------------------------------------------------------------------- perplexity


def _ppl_cases() -> list[Case]:
    g = torch.Generator().manual_seed(2)
    return [
        Case("uniform over 4", (torch.full((10,), -torch.log(torch.tensor(4.0)).item()),),
             hint="a model that spreads probability evenly over 4 options has perplexity 4."),
        Case("mixed", (_t([-0.1, -2.3, -0.7, -1.2]),), hint="perplexity = exp(-mean(log p))."),
        Case("certain", (torch.zeros(5),), hint="a model that is always certain and right has perplexity 1."),
        Case("long text", (-torch.rand(1000, generator=g) * 5,),
             hint="use the mean over tokens, so that perplexity does not grow with text length."),
    ]


register(Exercise(
    key="perplexity",
    lesson=LESSON,
    reference=lm_math.perplexity,
    cases=_ppl_cases,
    library_name="lm.lm_math.perplexity",
    mistakes=[
        Mistake("sign error", lambda lp: torch.exp(lp.mean()),
                "log-probabilities are negative: perplexity is exp(MINUS the mean log p), "
                "a number >= 1."),
        Mistake("sum instead of mean", lambda lp: torch.exp(-lp.sum()),
                "use the MEAN log-probability per token; the sum grows with the length of the text."),
        Mistake("base 2 with natural logs", lambda lp: 2 ** (-lp.mean()),
                "these log-probabilities are natural logs (nats): use exp, not 2**; 2** goes "
                "with log2."),
        Mistake("mean of probabilities", lambda lp: 1 / lp.exp().mean(),
                "perplexity is the inverse of the GEOMETRIC mean probability: exp(-mean(log p)), "
                "not 1 / mean(p)."),
        Mistake("cross-entropy, not perplexity", lambda lp: -lp.mean(),
                "-mean(log p) is the cross-entropy in nats; perplexity is its exponential, "
                "exp(-mean(log p))."),
    ],
))


# --------------------------------------------------------------------------- smoothed bigram


def _bigram_cases() -> list[Case]:
    g = torch.Generator().manual_seed(3)
    return [
        Case("small table", (torch.tensor([[2, 0], [1, 3]]), 1.0),
             hint="add alpha to every count, then divide each row by its new total."),
        Case("no smoothing", (torch.tensor([[2, 2, 0], [0, 1, 3], [5, 0, 0]]), 0.0),
             hint="with alpha = 0 the probabilities are the counts divided by their row total."),
        Case("a row of zeros", (torch.tensor([[0, 0, 0], [1, 2, 3], [4, 0, 0]]), 0.5),
             hint="a previous character never seen gets alpha in every cell: a uniform row."),
        Case("random counts", (torch.randint(0, 20, (6, 6), generator=g), 0.1),
             hint="each ROW (the previous token) must sum to 1."),
    ]


register(Exercise(
    key="smoothed_bigram",
    lesson=LESSON,
    reference=lm_math.bigram_probs,
    cases=_bigram_cases,
    library_name="lm.lm_math.bigram_probs",
    mistakes=[
        Mistake("columns normalised", lambda c, a: (c + a) / (c + a).sum(0, keepdim=True),
                "row a holds P(next | previous = a): divide by the ROW total (dim=1), not the "
                "column total."),
        Mistake("alpha missing from the total", lambda c, a: (c + a) / c.sum(1, keepdim=True),
                "after adding alpha to each of the V cells, the row total grows by V * alpha: "
                "divide by the smoothed total."),
        Mistake("whole table normalised", lambda c, a: (c + a) / (c + a).sum(),
                "normalise each row separately: sum(dim=1, keepdim=True)."),
        Mistake("smoothing after normalising",
                lambda c, a: c / c.sum(1, keepdim=True).clamp_min(1) + a,
                "add alpha to the COUNTS, then normalise; probabilities plus alpha no longer sum to 1."),
        Mistake("alpha only on unseen pairs",
                lambda c, a: torch.where(c == 0, a, c) / torch.where(c == 0, a, c).sum(1, keepdim=True),
                "add alpha to EVERY count, seen pairs included, not only to the zeros."),
        Mistake("alpha added once to the total", lambda c, a: (c + a) / (c.sum(1, keepdim=True) + a),
                "each of the V cells of a row gets alpha, so the row total grows by V * alpha, "
                "not by alpha."),
    ],
))


# --------------------------------------------------------------------------- chain rule


def _chain_cases() -> list[Case]:
    g = torch.Generator().manual_seed(4)
    probs = lm_math.bigram_probs(torch.randint(0, 9, (5, 5), generator=g), 1.0)
    return [
        Case("two tokens", (probs, torch.tensor([0, 3])),
             hint="a sequence of two tokens has one transition: log P(x1 | x0)."),
        Case("a sentence", (probs, torch.tensor([1, 2, 2, 4, 0, 3, 1])),
             hint="sum log P(x_t | x_{t-1}) over t = 1..T-1."),
        Case("asymmetric table", (lm_math.bigram_probs(torch.tensor([[0, 9], [1, 0]]), 0.5),
                                  torch.tensor([0, 1, 0, 1])),
             hint="row = previous token, column = next token: probs[previous, next]."),
        Case("one token", (probs, torch.tensor([2])),
             hint="a single token has no transition: the sum is empty, log-probability 0."),
    ]


register(Exercise(
    key="bigram_sequence_log_prob",
    lesson=LESSON,
    reference=lm_math.bigram_sequence_log_prob,
    cases=_chain_cases,
    library_name="lm.lm_math.bigram_sequence_log_prob",
    mistakes=[
        Mistake("transposed table", lambda p, ids: p[ids[1:], ids[:-1]].log().sum(),
                "probs[a, b] is P(next = b | previous = a): index with [previous, next]."),
        Mistake("probability, not log", lambda p, ids: p[ids[:-1], ids[1:]].prod(),
                "return the LOG-probability: a sum of logs (a product of many probabilities "
                "underflows to 0)."),
        Mistake("mean instead of sum", lambda p, ids: p[ids[:-1], ids[1:]].log().mean(),
                "the chain rule multiplies the conditionals, so their logs add up: sum, not mean."),
        Mistake("off by one", lambda p, ids: p[ids[:-2], ids[1:-1]].log().sum(),
                "you skip the last transition: there are T-1 pairs (ids[:-1], ids[1:])."),
        Mistake("log base 2", lambda p, ids: p[ids[:-1], ids[1:]].log2().sum(),
                "use the natural logarithm (.log()): log-probabilities in this course are in nats; "
                "divide by ln 2 only when you want bits."),
        Mistake("log of the sum", lambda p, ids: p[ids[:-1], ids[1:]].sum().log(),
                "the log of a PRODUCT is the sum of the logs: take .log() of each probability, "
                "then .sum(), not the log of their sum."),
    ],
))
