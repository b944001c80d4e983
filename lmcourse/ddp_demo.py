"""A small data-parallel training run for `torchrun`: the course's GPT learns to count on
sequences of uneven lengths (so every micro-batch holds its own number of labelled tokens), with
the course's Trainer, evaluation, a checkpoint and, if asked, TensorBoard logs.

    torchrun --nproc_per_node=2 -m lmcourse.ddp_demo --out-dir runs/ddp --set steps=8

or from Python (a notebook): `lm.distributed.launch(nproc=2, steps=8)`. The same `run` on one
process (no torchrun) trains on the same global batches, so the two loss curves can be compared.
The main process writes `result.json` (the history); every process writes `rank-<r>.json`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from lmcourse import config, distributed
from lmcourse.batching import pad_batch
from lmcourse.lm_math import IGNORE_INDEX

RESULT_FILE = "result.json"  # written by rank 0: history, settings, world size


def rank_file(rank: int) -> str:
    """The file process `rank` writes: its device, its first examples, the checkpoints it wrote."""
    return f"rank-{rank}.json"


@dataclass
class DemoSettings:
    """The demo run's sizes; the global batch is the same whatever the number of processes."""

    steps: int = 6               # optimizer steps
    global_batch: int = 16       # examples per optimizer step, over all processes and micro-batches
    grad_accum_steps: int = 2    # micro-batches per step on each process
    n_train: int = 96            # training sequences
    n_eval: int = 20             # evaluation sequences
    eval_every: int = 3          # evaluate every this many steps (and at the end)
    lr: float = 1e-2             # AdamW's peak learning rate (linear decay, 1 warmup step)
    vocab_size: int = 23         # tokens 0..22; 0 is also padding (its label is ignored)
    max_len: int = 16            # longest sequence (inputs), the model's block size
    d_model: int = 32
    n_layers: int = 2
    n_heads: int = 2
    seed: int = config.DEFAULT_SEED
    checkpoint: bool = True      # save one checkpoint, at the end
    tensorboard: bool = False    # write TensorBoard logs to <out_dir>/tensorboard (rank 0)
    progress: bool = False       # progress bars and evaluation lines (rank 0)


def counting_data(n: int, vocab_size: int, max_len: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Sequences that count up by one (mod vocab_size, skipping 0) from a random start, 3 to
    max_len inputs long: {"input_ids": (T,), "labels": (T,)}, labels the next tokens."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(3, max_len + 1, (1,), generator=g))
        start = int(torch.randint(1, vocab_size, (1,), generator=g))
        ids = (start - 1 + torch.arange(length + 1)) % (vocab_size - 1) + 1  # (T+1,) never 0
        out.append({"input_ids": ids[:-1], "labels": ids[1:]})
    return out


def collate(examples: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Pad inputs with 0 and labels with -100 (padding is never counted)."""
    return pad_batch(examples, 0, token_keys={"labels": IGNORE_INDEX})


def predicted_ids(logits: torch.Tensor, batch: Any = None) -> torch.Tensor:
    """Keep argmax ids (B, T) of each evaluation batch."""
    return logits.argmax(-1)


def token_accuracy(kept: list[torch.Tensor], batches: list[Mapping[str, torch.Tensor]]) -> dict[str, float]:
    """Next-token accuracy pooled over every labelled position of the evaluation set."""
    correct = total = 0
    for pred, batch in zip(kept, batches, strict=True):
        keep = batch["labels"] != IGNORE_INDEX
        correct += int((pred[keep] == batch["labels"][keep]).sum())
        total += int(keep.sum())
    return {"accuracy": correct / max(total, 1)}


def micro_batch_size(s: DemoSettings, world_size: int) -> int:
    """Examples per micro-batch on each process: global_batch / (processes x grad_accum_steps)."""
    parts = world_size * s.grad_accum_steps
    if s.global_batch % parts:
        raise config.ConfigError(
            f"global_batch={s.global_batch} does not split into {world_size} process(es) x "
            f"{s.grad_accum_steps} micro-batches; choose a multiple of {parts}.")
    return s.global_batch // parts


def run(s: DemoSettings | None = None, out_dir: str | Path | None = None,
        device: str | torch.device | None = None) -> dict[str, Any]:
    """Train the demo (on every process of a torchrun group, or on this one alone); returns the
    main process's result and, with `out_dir`, writes it (and each process's record) there."""
    from lmcourse.pretraining import causal_lm_loss, init_gpt2_weights
    from lmcourse.train import TrainConfig, Trainer
    from lmcourse.transformer import GPT, GPTConfig

    s = s or DemoSettings()
    dev = distributed.init(device)
    rank, world = distributed.rank(), distributed.world_size()
    micro = micro_batch_size(s, world)
    out = Path(out_dir) if out_dir is not None else None
    config.seed_everything(s.seed)  # the same weights on every process (DDP also copies rank 0's)
    model = init_gpt2_weights(GPT(GPTConfig(
        vocab_size=s.vocab_size, block_size=s.max_len, d_model=s.d_model, n_layers=s.n_layers,
        n_heads=s.n_heads, d_ff=4 * s.d_model, dropout=0.0, attn_dropout=0.0)))
    cfg = TrainConfig(
        max_steps=s.steps, batch_size=micro, grad_accum_steps=s.grad_accum_steps, lr=s.lr,
        warmup_steps=1, eval_every=s.eval_every, eval_batch_size=micro, seed=s.seed,
        checkpoint_dir=str(out / "checkpoints") if out is not None and s.checkpoint else None,
        save_every=s.steps, keep_last=None, progress=s.progress)
    callbacks = []
    if s.tensorboard and out is not None:
        from lmcourse.tracking import TensorBoardCallback

        callbacks.append(TensorBoardCallback(out / "tensorboard", hparams=asdict(s)))
    trainer = Trainer(
        model, cfg, counting_data(s.n_train, s.vocab_size, s.max_len, s.seed),
        counting_data(s.n_eval, s.vocab_size, s.max_len, s.seed + 1), collate_fn=collate,
        loss_fn=causal_lm_loss, metrics_fn=token_accuracy, preprocess_logits=predicted_ids,
        device=dev, callbacks=callbacks)
    trainer.train()
    result = {"history": trainer.history.to_dict(), "settings": asdict(s), "world_size": world,
              "micro_batch_size": micro, "train_loss_unit": trainer.last_train_loss_unit}
    record = {"rank": rank, "world_size": world, "device": str(dev),
              "backend": distributed.backend_for(dev) if world > 1 else None,
              # the examples this process trained on in the first step: a share of the batch
              "first_step_examples": sorted(i for b in trainer.epoch_indices(0)[:s.grad_accum_steps]
                                            for i in b),
              "checkpoints_written": [str(p) for p in trainer.checkpoints_written]}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / rank_file(rank)).write_text(json.dumps(record, indent=1))
        if distributed.is_main_process():
            (out / RESULT_FILE).write_text(json.dumps(result, indent=1))
    return {**result, "rank_record": record}


def parse_settings(pairs: Sequence[str]) -> DemoSettings:
    """DemoSettings from "name=value" strings (values in JSON: 8, 0.01, true)."""
    known = {f.name for f in fields(DemoSettings)}
    values: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or name not in known:
            raise config.ConfigError(f"--set {pair!r}: write name=value with a name among {sorted(known)}.")
        values[name] = json.loads(raw)
    return DemoSettings(**values)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: --out-dir DIR [--device cpu] [--set name=value ...]."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", required=True, help="where result.json, rank-<r>.json, "
                   "checkpoints/ and tensorboard/ go")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: the course's rule; "
                   "under torchrun each process takes the GPU of its LOCAL_RANK)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a DemoSettings field, e.g. --set steps=8")
    args = p.parse_args(argv)
    try:
        run(parse_settings(args.set), args.out_dir, args.device)
    finally:
        distributed.cleanup()


if __name__ == "__main__":
    main()
