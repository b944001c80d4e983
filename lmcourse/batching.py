"""Batches: the seeded order of an epoch, moving a batch to a device, and counting what a batch
holds (examples, labelled tokens). Shared by the training loop and the lessons' own batchers
(lesson 05b's length-grouped batches draw their order the same way)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from lmcourse.lm_math import IGNORE_INDEX


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator seeded by (seed, epoch): each epoch's shuffle is fixed and differs."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """The example order of one epoch: a permutation drawn from `epoch_generator(seed, epoch)`."""
    if not shuffle:
        return list(range(n))
    return torch.randperm(n, generator=epoch_generator(seed, epoch)).tolist()



def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested) dict/list/tuple to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
        return type(batch)(*(to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def batch_size_of(batch: Any) -> int:
    """The number of examples in a batch: the first dimension of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.ndim else 1
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else []
    for v in values:
        n = batch_size_of(v)
        if n:
            return n
    return 0



def labelled_count(batch: Any, shifted: bool = False) -> int:
    """How many positions of `batch["labels"]` a token-level loss counts (labels != -100).

    `shifted=True` for models that shift the labels inside (transformers' causal LMs given
    labels=input_ids predict labels[..., 1:] from the positions before): the first position of
    each row then never counts.
    """
    labels = batch.get("labels") if isinstance(batch, Mapping) else None
    if not isinstance(labels, torch.Tensor):
        raise TypeError("Counting labelled tokens needs a batch dict with a `labels` tensor; "
                        "average the loss per example instead (eval_loss_per='example').")
    if shifted:
        labels = labels[..., 1:]
    return int((labels != IGNORE_INDEX).sum())
