"""Measuring what activation checkpointing saves: the peak memory and the time of one training
step (forward and backward) of a BERT encoder, with and without checkpointing.

On a GPU the peak is `torch.cuda.max_memory_allocated` (what torch's allocator handed out). On a
CPU torch keeps no such count, so each setting runs in a fresh Python process and the peak is
that process's peak resident memory (Linux's VmHWM; `resource.getrusage`'s maxrss elsewhere)
minus its resident memory just before the step: the step's own high-water mark (activations, gradients, temporaries).
`benchmarks/checkpointing.py` prints both settings side by side.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from lmcourse import config

MODELS = ("course", "transformers")  # lm.transformer.Bert, transformers.BertModel


@dataclass
class StepSpec:
    """The encoder and batch of one measured step (sizes in the course's names)."""

    model: str = "course"   # course (lm.transformer.Bert) | transformers (BertModel)
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 1024
    seq_len: int = 512
    batch_size: int = 8
    vocab_size: int = 1000
    dropout: float = 0.1    # on: checkpointing must replay the same dropout masks
    seed: int = config.DEFAULT_SEED

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise config.ConfigError(f"model={self.model!r}; choose one of {MODELS}.")


def build(spec: StepSpec, device: torch.device | str | None = None) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """(encoder in train mode, a batch of random token ids) on `device`, seeded by spec.seed."""
    from lmcourse.transformer import Bert, BertConfig

    device = config.get_device(device)
    cfg = BertConfig(vocab_size=spec.vocab_size, d_model=spec.d_model, n_layers=spec.n_layers,
                     n_heads=spec.n_heads, d_ff=spec.d_ff, max_positions=spec.seq_len,
                     dropout=spec.dropout, attn_dropout=spec.dropout, pooler=False)
    torch.manual_seed(spec.seed)
    if spec.model == "course":
        model: torch.nn.Module = Bert(cfg)
    else:
        from transformers import BertModel

        hf_cfg = cfg.to_hf()
        hf_cfg._attn_implementation = "eager"  # softmax weights kept, as the course's Bert keeps them
        model = BertModel(hf_cfg, add_pooling_layer=False)
    g = torch.Generator().manual_seed(spec.seed)
    ids = torch.randint(1, spec.vocab_size, (spec.batch_size, spec.seq_len), generator=g)  # (B, T)
    batch = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}
    return model.to(device).train(), batch


def step_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """A loss over every hidden state (B, T, D): the mean of their cubes (no head is needed
    here; what matters is that every block's activations take part in the gradient)."""
    out = model(**batch)
    hidden = out if isinstance(out, torch.Tensor) else out.last_hidden_state  # (B, T, D)
    return hidden.float().pow(3).mean()


def _train_step(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    model.zero_grad(set_to_none=True)  # the gradients' memory counts in every measured step
    loss = step_loss(model, batch)
    loss.backward()
    return loss.item()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_kib(field: str) -> int | None:
    """A field of /proc/self/status in KiB (Linux), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _rss_bytes() -> int:
    """This process's resident memory now (Linux; elsewhere its peak so far)."""
    now = _status_kib("VmRSS")
    return now * 1024 if now is not None else _maxrss_bytes()


def _maxrss_bytes() -> int:
    """This process's peak resident memory so far.

    Linux: VmHWM, the high-water mark of this process's own memory (getrusage's maxrss would
    carry over the peak of the process that started it, since it survives exec). Elsewhere
    getrusage's maxrss (in bytes on macOS).
    """
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        return hwm * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def measure_here(spec: StepSpec, checkpointing: bool, device: torch.device | str | None = None,
                 repeats: int = 2) -> dict[str, Any]:
    """Peak memory and time of one training step in this process (on a CPU: only meaningful
    in a fresh process, since the peak resident memory never goes down; `measure_step` starts
    one). The first step is measured for memory; the time is the best of `repeats` more."""
    from lmcourse.transformer import set_gradient_checkpointing

    device = config.get_device(device)
    model, batch = build(spec, device)
    set_gradient_checkpointing(model, checkpointing)
    if device.type == "cuda":
        _train_step(model, batch)  # warm-up: the library's workspaces are not the step's memory
        model.zero_grad(set_to_none=True)
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        loss = _train_step(model, batch)
        _sync(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        how = "torch.cuda.max_memory_allocated - allocated before the step"
    else:
        # warm-up on one row: kernels and their caches are set up once, at a small cost, so the
        # measured step's high-water mark is its own (maxrss never goes down: no full warm-up)
        _train_step(model, {k: v[:1] for k, v in batch.items()})
        model.zero_grad(set_to_none=True)
        gc.collect()
        base = _rss_bytes()
        loss = _train_step(model, batch)
        peak = _maxrss_bytes() - base
        how = "peak resident memory (VmHWM / maxrss) - resident memory before the step"
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        _train_step(model, batch)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return {"model": spec.model, "checkpointing": checkpointing, "device": str(device),
            "peak_bytes": int(peak), "time_s": min(times) if times else None, "loss": loss,
            "how": how, "threads": torch.get_num_threads()}


def measure_step(spec: StepSpec, checkpointing: bool, device: torch.device | str | None = None,
                 repeats: int = 2, timeout_s: float = 600) -> dict[str, Any]:
    """`measure_here` on a GPU; on a CPU the same in a fresh Python process, so the peak resident
    memory it reports belongs to this step alone."""
    device = config.get_device(device)
    if device.type != "cpu":
        return measure_here(spec, checkpointing, device, repeats)
    cmd = [sys.executable, "-m", "lmcourse.memory", "--spec", json.dumps(asdict(spec)),
           "--repeats", str(repeats)] + (["--checkpointing"] if checkpointing else [])
    # a fixed mmap threshold makes glibc hand every large block straight back to the system when
    # it is freed (by default the threshold grows and freed blocks stay resident), so the resident
    # memory follows the live tensors; other C libraries ignore the variable
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"Measuring the step failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare_checkpointing(spec: StepSpec | None = None, device: torch.device | str | None = None,
                          repeats: int = 2) -> dict[str, Any]:
    """One step without and one with activation checkpointing: both measurements, and the
    ratios of their peak memory and time (with / without)."""
    spec = spec or StepSpec()
    without = measure_step(spec, False, device, repeats)
    with_ = measure_step(spec, True, device, repeats)
    return {"without": without, "with": with_,
            "memory_ratio": with_["peak_bytes"] / max(without["peak_bytes"], 1),
            "time_ratio": (with_["time_s"] / without["time_s"]
                           if with_["time_s"] and without["time_s"] else None)}


def main(argv: list[str] | None = None) -> None:
    """Child process: measure one setting and print it as one JSON line."""
    p = argparse.ArgumentParser(description="Measure one training step's peak memory and time.")
    p.add_argument("--spec", required=True, help="StepSpec fields as JSON")
    p.add_argument("--checkpointing", action="store_true")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    spec = StepSpec(**json.loads(args.spec))
    print(json.dumps(measure_here(spec, args.checkpointing, args.device, args.repeats)))


if __name__ == "__main__":
    main()
