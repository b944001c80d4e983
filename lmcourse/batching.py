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
                        "average the loss per example instead (TrainConfig eval_loss_per='example', "
                        "train_loss_per='example').")
    if shifted:
        labels = labels[..., 1:]
    return int((labels != IGNORE_INDEX).sum())


# --------------------------------------------------------------------------- padding


def pad_rows(rows: Any, value: int, multiple_of: int | None = None) -> torch.Tensor:
    """Right-pad lists of ids to the longest (rounded up to a multiple of `multiple_of`): (B, T)."""
    width = max(len(r) for r in rows)
    if multiple_of:
        width = (width + multiple_of - 1) // multiple_of * multiple_of
    out = torch.full((len(rows), width), value, dtype=torch.long)  # (B, T)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.as_tensor(list(r), dtype=torch.long)
    return out


def tokenizer_pad_id(tokenizer: Any) -> int:
    """The tokenizer's [PAD] id, or an error that says how to set one."""
    if tokenizer.pad_token_id is None:
        raise ValueError("The tokenizer has no padding token; set tokenizer.pad_token first.")
    return int(tokenizer.pad_token_id)


def pad_batch(examples: Any, pad_token_id: int, multiple_of: int | None = None,
              token_keys: Mapping[str, int] | None = None, example_keys: tuple[str, ...] = (),
              name: str = "the collator") -> dict[str, torch.Tensor]:
    """One batch from encoded examples (dicts with input_ids and maybe more), dynamic padding.

    input_ids (B, T) padded with pad_token_id and attention_mask (B, T) (1 real token, 0 padding)
    always; each key of `token_keys` that the examples have, one value per token, padded with its
    value there (labels with IGNORE_INDEX, token_type_ids with 0); each key of `example_keys`, one
    value per example, stacked (B,). T is the longest example, rounded up to a multiple of
    `multiple_of` if set. Every example must have a key or none; other keys are left out.
    """
    if not examples:
        raise ValueError(f"{name} got an empty list of examples.")
    token_keys = {"token_type_ids": 0} if token_keys is None else token_keys
    ids = [[int(t) for t in e["input_ids"]] for e in examples]
    batch = {"input_ids": pad_rows(ids, pad_token_id, multiple_of),                # (B, T)
             "attention_mask": pad_rows([[1] * len(r) for r in ids], 0, multiple_of)}  # (B, T)
    for key in (*token_keys, *example_keys):
        has = [key in e for e in examples]
        if any(has) and not all(has):
            raise ValueError(f"Some examples have {key} and some do not; encode them alike.")
        if not all(has):
            continue
        if key in example_keys:
            batch[key] = torch.tensor([int(e[key]) for e in examples])  # (B,)
            continue
        rows = [e[key] for e in examples]
        for i, (r, x) in enumerate(zip(rows, ids)):
            if len(r) != len(x):
                raise ValueError(f"Example {i}: {len(x)} input_ids but {len(r)} {key}.")
        batch[key] = pad_rows(rows, token_keys[key], multiple_of)  # (B, T)
    return batch
