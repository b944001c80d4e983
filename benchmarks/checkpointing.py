"""Activation checkpointing on this machine: one training step (forward and backward) of a BERT
encoder with and without it, for the course's Bert and transformers' BertModel.

    python benchmarks/checkpointing.py [--model both] [--batch 8] [--seq 512] [--d-model 256]
                                       [--layers 4] [--heads 4] [--device cpu] [--repeats 3]

Prints, for each model, the peak memory of the step and its time with and without checkpointing,
and their ratios (with / without), and checks that both settings give the same loss. On a GPU the
peak is torch.cuda.max_memory_allocated; on a CPU each setting runs in a fresh process and the
peak is its peak resident memory minus its resident memory before the step (lm.memory says how).
"""

from __future__ import annotations

import argparse
import math

import lmcourse as lm
from lmcourse.memory import MODELS, StepSpec, compare_checkpointing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=(*MODELS, "both"), default="both")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per setting (best kept)")
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    device = lm.get_device(args.device)
    models = MODELS if args.model == "both" else (args.model,)
    print(f"device {lm.config.describe_device(device)}; batch {args.batch} x {args.seq} tokens, "
          f"d_model {args.d_model}, {args.layers} layers, {args.heads} heads, d_ff {4 * args.d_model}")
    header = f"{'model':<13} {'checkpointing':>13} {'peak MiB':>9} {'time s':>8} {'loss':>10}"
    print(header)
    print("-" * len(header))
    for model in models:
        spec = StepSpec(model=model, d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
                        d_ff=4 * args.d_model, seq_len=args.seq, batch_size=args.batch)
        r = compare_checkpointing(spec, device, repeats=args.repeats)
        for m in (r["without"], r["with"]):
            print(f"{model:<13} {'on' if m['checkpointing'] else 'off':>13} "
                  f"{m['peak_bytes'] / 2**20:>9.1f} {m['time_s']:>8.3f} {m['loss']:>10.6f}")
        same = math.isclose(r["with"]["loss"], r["without"]["loss"], rel_tol=1e-5, abs_tol=1e-7)
        print(f"{model:<13} with/without: memory x{r['memory_ratio']:.2f}, time "
              f"x{r['time_ratio']:.2f}, same loss: {same}")
    print(f"peak memory: {r['without']['how']}")


if __name__ == "__main__":
    main()
