"""Checked exercise of lesson 00 (welcome): a first taste of how checks work."""

from __future__ import annotations

import torch

from lmcourse.checker import Case, Exercise, Mistake
from lmcourse.exercises import register


def normalize(counts: torch.Tensor) -> torch.Tensor:
    """Turn non-negative counts into probabilities that sum to 1 along the last dimension."""
    counts = counts.double()
    return counts / counts.sum(dim=-1, keepdim=True)


register(Exercise(
    key="normalize",
    lesson="00_welcome",
    reference=normalize,
    library_name="lm.exercises.lesson00.normalize",
    cases=[
        Case("three counts", (torch.tensor([1, 2, 1]),), hint="divide each count by the total."),
        Case("floats", (torch.tensor([0.5, 1.5, 2.0, 0.0]),), hint="divide each count by the total."),
        Case("a batch of rows", (torch.tensor([[1, 3], [5, 5], [0, 2]]),),
             hint="each row is its own distribution: sum over the last dimension, keepdim=True."),
        Case("a single count", (torch.tensor([7]),), hint="one outcome gets probability 1."),
    ],
    mistakes=[
        Mistake("divided by the maximum", lambda c: c / c.max(),
                "dividing by the largest count makes it 1, but probabilities must SUM to 1: "
                "divide by the sum."),
        Mistake("divided by the length", lambda c: c / c.shape[-1],
                "divide by the total count (c.sum()), not by the number of entries."),
        Mistake("integer division", lambda c: c // c.sum(-1, keepdim=True),
                "// is integer division and rounds down to 0: use / (true division)."),
        Mistake("whole-tensor total", lambda c: c / c.sum(),
                "with a batch of rows, divide each row by its own total: "
                "c.sum(dim=-1, keepdim=True)."),
    ],
))
