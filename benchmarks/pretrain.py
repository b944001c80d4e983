"""Causal-LM pretraining speed on CPU: the course loop (lmcourse.train.Trainer) against
transformers.Trainer, on the same GPT-2 model, data, batch size, optimizer and schedule.

    python benchmarks/pretrain.py [--steps 40] [--repeats 2] [--threads N]

Each run happens in its own subprocess, so its peak resident memory (getrusage's ru_maxrss) is its
own. Runs alternate (course, transformers, course, ...) so that a change in the machine's load hits
both. Reported: tokens per second over the whole train() call and over the steady state (after
--skip warm-up steps), the mean training loss (a sanity check: same initial weights and data,
but each trainer shuffles with its own generator, so the losses agree only roughly), and peak RSS.

One thread by default: on a small CPU that other programs share, two threads of a tiny model spend
most of their time waiting for each other, and the rates then swing tenfold from run to run; one
thread gives rates that repeat within a few percent. `--threads 0` uses torch's default.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from common import peak_rss_mib  # benchmarks/common.py


def describe_optimizer(opt) -> str:
    """The optimizer's class, and whether it runs torch's fused kernel."""
    return f"{type(opt).__name__}(fused={bool(opt.defaults.get('fused'))})"


def build(args: argparse.Namespace):
    """The model (GPT-2, byte-level vocabulary) and a dataset of fixed-length chunks."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    import lmcourse as lm
    from lmcourse.data import load_corpus

    text = load_corpus(args.corpus, quiet=True).text
    ids = torch.tensor(list(text.encode("utf-8")), dtype=torch.long)  # byte-level ids, vocab 256
    n = len(ids) // args.seq_len
    chunks = ids[: n * args.seq_len].view(n, args.seq_len)  # (N, T)
    data = [{"input_ids": c, "labels": c} for c in chunks]
    lm.seed_everything(args.seed)
    cfg = GPT2Config(vocab_size=256, n_positions=args.seq_len, n_embd=args.hidden,
                     n_layer=args.layers, n_head=args.heads, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg), data


def run_course(args: argparse.Namespace, model, data) -> dict:
    """Train with lmcourse.train.Trainer; returns timings and the mean loss."""
    import lmcourse as lm
    from lmcourse.train import TrainConfig, Trainer

    stamps: dict[int, float] = {}
    cfg = TrainConfig(max_steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                      weight_decay=0.01, warmup_steps=args.warmup, schedule="linear",
                      max_grad_norm=1.0, progress=False, seed=args.seed)
    trainer = Trainer(model, cfg, data, device=lm.get_device("cpu"),
                      callbacks=[lambda t, rec: stamps.__setitem__(rec["step"], time.perf_counter())])
    lm.seed_everything(args.seed)
    t0 = time.perf_counter()
    hist = trainer.train()
    total = time.perf_counter() - t0
    return {"total_s": total, "steady_s": stamps[args.steps] - stamps[args.skip],
            "mean_loss": sum(r["loss"] for r in hist.train) / len(hist.train),
            "last_loss": hist.train[-1]["loss"], "optimizer": describe_optimizer(trainer.optimizer)}


def run_transformers(args: argparse.Namespace, model, data) -> dict:
    """Train with transformers.Trainer (current argument names); returns timings and the mean loss."""
    from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator

    import lmcourse as lm

    stamps: dict[int, float] = {}
    losses: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            stamps[state.global_step] = time.perf_counter()

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(
            output_dir=out, per_device_train_batch_size=args.batch_size, max_steps=args.steps,
            learning_rate=args.lr, weight_decay=0.01, warmup_steps=args.warmup,
            lr_scheduler_type="linear", max_grad_norm=1.0, eval_strategy="no", save_strategy="no",
            logging_strategy="steps", logging_steps=1, report_to="none", disable_tqdm=True,
            use_cpu=True, seed=args.seed, dataloader_num_workers=0)
        trainer = Trainer(model=model, args=targs, train_dataset=data,
                          data_collator=default_data_collator, callbacks=[Stamp()])
        lm.seed_everything(args.seed)
        t0 = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - t0
    return {"total_s": total, "steady_s": stamps[args.steps] - stamps[args.skip],
            "mean_loss": sum(losses) / len(losses), "last_loss": losses[-1],
            "optimizer": describe_optimizer(getattr(trainer.optimizer, "optimizer", trainer.optimizer))}


def child(args: argparse.Namespace) -> None:
    """One run in this process; prints one JSON line."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model, data = build(args)
    rss_before = peak_rss_mib()
    res = (run_course if args.runner == "course" else run_transformers)(args, model, data)
    tokens = args.steps * args.batch_size * args.seq_len
    res.update(runner=args.runner, threads=torch.get_num_threads(),
               tok_s=tokens / res["total_s"],
               steady_tok_s=(args.steps - args.skip) * args.batch_size * args.seq_len / res["steady_s"],
               rss_before_mib=rss_before, peak_rss_mib=peak_rss_mib(),
               params=sum(p.numel() for p in model.parameters()))
    print("RESULT " + json.dumps(res))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    p.add_argument("--skip", type=int, default=5, help="warm-up steps left out of the steady rate")
    p.add_argument("--repeats", type=int, default=2, help="runs of each trainer (alternating)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corpus", default="tinyshakespeare")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (0: torch's default); see the module docstring")
    p.add_argument("--runner", choices=["course", "transformers"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not 0 <= args.skip < args.steps:
        p.error("--skip must be below --steps")
    if args.runner:
        child(args)
        return

    env = {**os.environ, "LMCOURSE_DEVICE": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    results: dict[str, list[dict]] = {"course": [], "transformers": []}
    for _ in range(args.repeats):
        for runner in results:
            cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]),
                   "--runner", runner]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not line:
                sys.exit(f"{runner} run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
            results[runner].append(json.loads(line[-1][len("RESULT "):]))
            r = results[runner][-1]
            print(f"  {runner:<12} {r['tok_s']:8.0f} tok/s  steady {r['steady_tok_s']:8.0f} tok/s  "
                  f"peak RSS {r['peak_rss_mib']:6.0f} MiB", flush=True)

    first = results["course"][0]
    print(f"\nGPT-2 {first['params']:,} parameters (hidden {args.hidden}, {args.layers} layers, "
          f"byte vocab 256), seq {args.seq_len}, batch {args.batch_size}, {args.steps} steps, "
          f"CPU threads {first['threads']}, median of {args.repeats} run(s) each\n")
    header = (f"| {'trainer':<22} | {'tokens/s':>9} | {'steady tokens/s':>15} | {'mean loss':>9} | "
              f"{'peak RSS MiB':>12} | {'RSS before train':>16} |")
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    med = {}
    for runner, rs in results.items():
        m = {k: statistics.median(r[k] for r in rs)
             for k in ("tok_s", "steady_tok_s", "mean_loss", "peak_rss_mib", "rss_before_mib")}
        med[runner] = m
        name = "lmcourse.train.Trainer" if runner == "course" else "transformers.Trainer"
        print(f"| {name:<22} | {m['tok_s']:9.0f} | {m['steady_tok_s']:15.0f} | {m['mean_loss']:9.4f} | "
              f"{m['peak_rss_mib']:12.0f} | {m['rss_before_mib']:16.0f} |")
    ratio = med["course"]["tok_s"] / med["transformers"]["tok_s"]
    steady = med["course"]["steady_tok_s"] / med["transformers"]["steady_tok_s"]
    print(f"\ncourse / transformers tokens per second: {ratio:.2f}x overall, {steady:.2f}x steady state")
    print(f"optimizers: course {first['optimizer']}, "
          f"transformers {results['transformers'][0]['optimizer']}")


if __name__ == "__main__":
    main()
