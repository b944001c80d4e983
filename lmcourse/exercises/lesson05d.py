"""Checked exercises of lesson 05d (scaling out: data parallelism, gradient accumulation)."""

from __future__ import annotations

import torch

from lmcourse.checker import Case, Diagnosis, Exercise, Mistake
from lmcourse.exercises import register

LESSON = "05d_scaling_out"

# --------------------------------------------------------------------------- accumulation weights


def accumulated_token_loss_weights(counts: torch.Tensor) -> torch.Tensor:
    """The weight process r gives the mean loss of its micro-batch i in one optimizer step.

    counts (W, k): labelled tokens of micro-batch i on process r (W processes, k micro-batches
    each). Each process backpropagates sum_i w[r, i] L[r, i]; DDP then averages the W gradients.
    For that average to be the gradient of the per-token mean over the whole step,
    w[r, i] = W n[r, i] / N with N the tokens of every process's micro-batches together; every
    weight is 0 when N is 0 (nothing labelled: no loss, no gradient). The rule of
    `lm.train.Trainer.train_step` (TrainConfig.train_loss_per="token").
    """
    n = counts.double()  # (W, k)
    total = n.sum()
    if total == 0:
        return torch.zeros_like(n)
    return n.shape[0] * n / total


def _c(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long)


def _weights_cases() -> list[Case]:
    return [
        Case("uneven micro-batches on one process", (_c([[30, 10, 25, 15]]),),
             hint="each micro-batch's mean counts by its labelled tokens: n / N, with N the tokens "
                  "of the whole step."),
        Case("equal micro-batches", (_c([[8, 8, 8]]),),
             hint="with equal counts every micro-batch weighs the same, 1/k."),
        Case("a micro-batch without labelled tokens", (_c([[12, 0, 8]]),),
             hint="a micro-batch with no labelled token gets weight 0 (its mean loss is nan)."),
        Case("a short last window", (_c([[11, 4]]),),
             hint="at the end of an epoch a window holds fewer micro-batches than grad_accum_steps: "
                  "use the counts you are given, shape (W, k), never a fixed k."),
        Case("two processes", (_c([[30, 10], [5, 15]]),),
             hint="N counts the tokens of every process; DDP divides the sum of the W processes' "
                  "gradients by W, so each weight is W n / N."),
        Case("two processes (one with few tokens)", (_c([[40, 40], [2, 6]]),),
             hint="each process divides by the tokens of ALL processes, not by its own: a process "
                  "with 8 tokens must not count as much as one with 80."),
        Case("four processes with one micro-batch each", (_c([[3], [5], [7], [9]]),),
             hint="W = counts.shape[0] processes: the weights sum to W."),
        Case("a process whose micro-batches are all empty", (_c([[10, 6], [0, 0]]),),
             hint="a process without labelled tokens contributes nothing (weights 0); the other "
                  "process's weights are W n / N."),
        Case("nothing labelled in the whole step", (_c([[0, 0], [0, 0]]),),
             hint="N = 0: every weight is 0, not nan (guard the division)."),
    ]


def _mean_of_means(counts):
    k = counts.shape[1]
    return torch.full(counts.shape, 1.0 / k, dtype=torch.float64)


def _world_size_forgotten(counts):
    n = counts.double()
    return n / n.sum() if n.sum() > 0 else torch.zeros_like(n)


def _local_count_only(counts):
    n = counts.double()
    return (n / n.sum(1, keepdim=True)).nan_to_num(0.0)


def _nan_without_tokens(counts):
    n = counts.double()
    return n.shape[0] * n / n.sum()


def _counts_differ(counts: torch.Tensor) -> bool:
    return bool((counts != counts.flatten()[0]).any())


def _normalised_along(g: torch.Tensor, n: torch.Tensor, dim: int) -> float | None:
    """The common sum of the slices of `g` along `dim` (those with labelled tokens) when each
    slice is proportional to its counts and they all sum to that value; else None."""
    sums_g, sums_n = g.sum(dim), n.sum(dim)
    busy = sums_n > 0
    if int(busy.sum()) < 1 or not bool(torch.allclose(g * n.sum(dim, keepdim=True),
                                                      n * g.sum(dim, keepdim=True))):
        return None
    first = sums_g[busy][0]
    return float(first) if bool(torch.allclose(sums_g[busy], first.expand_as(sums_g[busy]))) else None


def _diagnose_weights(got, want, case: Case) -> Diagnosis | None:
    """Which rule the learner's weights follow, read off their sums and their proportions."""
    counts = case.args[0]
    if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(counts.shape) \
            or not got.is_floating_point():
        return None
    g, n = got.double(), counts.double()
    W, k = n.shape
    total = float(n.sum())
    if not bool(torch.isfinite(g).all()):
        return Diagnosis("nan without labelled tokens", "your weights hold nan where there is no "
                         "labelled token to divide by (0 / 0): a step, or a process, without "
                         "labelled tokens gives weight 0; return zeros when N == 0.")
    if total == 0:
        if not bool(g.any()):
            return None
        return Diagnosis("weights without tokens", "no micro-batch holds a labelled token, so there "
                         "is no loss to weight: every weight is 0.")
    proportional = bool(torch.allclose(g * total, n * float(g.sum())))
    if k > 1 and not proportional:  # one micro-batch per process: nothing to tell apart
        per_process = _normalised_along(g, n, 1) if W > 1 else None
        if per_process is not None:
            return Diagnosis("normalised per process", f"the weights of each process sum to "
                             f"{per_process:.4g}: you divide by the tokens of that process only. "
                             "DDP averages the processes' gradients as equals, so a process with "
                             "few tokens would count as much as one with many. Divide by N, the "
                             "tokens of ALL processes (counts.sum()), and multiply by W.")
        per_position = _normalised_along(g, n, 0)
        if per_position is not None and (W > 1 or abs(per_position - 1 / k) > 1e-6):
            return Diagnosis("normalised per position", "you divide each micro-batch by a sum that "
                             "holds only the micro-batches at the same position on each process (a "
                             "sum over dim 0, or the micro-batch's own count). N is the sum over "
                             "every process AND every micro-batch of the step: counts.sum().")
    if g.numel() >= 2 and _counts_differ(counts) and bool(torch.allclose(g, g.flatten()[0].expand_as(g))):
        return Diagnosis("the same weight for every micro-batch", "every micro-batch gets the same "
                         "weight although they hold different numbers of labelled tokens: that is "
                         "the mean of the micro-batches' means. Weight each by its share of the "
                         "step's tokens, n / N.")
    if proportional and float(g.sum()) > 0 and abs(float(g.sum()) - W) > 1e-6:
        s = float(g.sum())
        if W > 1 and abs(s - 1) < 1e-6:
            why = (f"you forgot the world size: DDP divides the sum of the {W} processes' "
                   f"gradients by W = {W}, so multiply by W (counts.shape[0]).")
        elif abs(s - k) < 1e-6 and k != W:
            why = f"you multiply by k = {k}, the micro-batches per process; multiply by W instead."
        else:
            why = ("divide by N = counts.sum(), the labelled tokens of every process and every "
                   "micro-batch of the step, and multiply by W.")
        return Diagnosis("weights do not sum to W", f"your weights follow the token counts but sum "
                         f"to {s:.4g}; they must sum to W = {W}, the number of processes "
                         f"(counts.shape[0]): {why}")
    return None


register(Exercise(
    key="accumulated_token_loss_weights",
    lesson=LESSON,
    reference=accumulated_token_loss_weights,
    cases=_weights_cases,
    library_name="lm.train.Trainer (train_loss_per='token')",
    diagnosers=[_diagnose_weights],
    mistakes=[
        Mistake("mean of the micro-batches' means", _mean_of_means,
                "dividing each micro-batch's mean by k counts every micro-batch alike, so the "
                "tokens of a short micro-batch weigh more than those of a long one. Weight micro-"
                "batch i by its share of the step's labelled tokens: W n_i / N."),
        Mistake("world size forgotten", _world_size_forgotten,
                "right proportions, but DDP divides the sum of the W processes' gradients by W: "
                "multiply by W = counts.shape[0] (your weights must sum to W, not to 1)."),
        Mistake("each process's own tokens", _local_count_only,
                "you divide by the tokens of each process alone (each row sums to 1). Processes "
                "hold different numbers of tokens, and DDP averages their gradients as equals: "
                "divide by N, the tokens of every process together, and multiply by W."),
        Mistake("nan without labelled tokens", _nan_without_tokens,
                "right, except when no micro-batch holds a labelled token: 0 / 0 gives nan, and "
                "one nan weight turns every gradient into nan. Return zeros when N == 0."),
    ],
))
