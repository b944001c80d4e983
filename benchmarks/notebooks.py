"""Time each lesson notebook in a mode and hold its peak memory against the course's budgets.

    python benchmarks/notebooks.py --mode quick                 # every solution notebook
    python benchmarks/notebooks.py --mode smoke notebooks/*.ipynb
    python benchmarks/notebooks.py --mode full --out build/full

The notebooks run exactly as `lmcourse build` runs them (`lmcourse.build`: a fresh kernel each,
private caches, the kernel's peak resident memory, torch's peak CUDA memory when a notebook used
CUDA); this script adds the budgets the course promises and exits 1 when a notebook fails or
goes over one:

    quick mode: under 6 GiB of RAM (a laptop, free Colab)
    full mode:  under 12 GiB of RAM and 16 GiB of GPU memory

The executed notebooks and report.md/.csv/.json land in --out (default: a temporary folder).
Times depend on what else the machine runs: the load average at the start is printed with them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from lmcourse import build as B

ROOT = Path(__file__).resolve().parent.parent
# GiB the course promises a notebook stays under, per mode: (RAM, GPU); None: no promise
BUDGETS = {"smoke": (None, None), "quick": (6.0, None), "full": (12.0, 16.0)}


def over_budget(run: B.NotebookRun, mode: str) -> list[str]:
    """What `run` used beyond the mode's budgets, as readable phrases (empty: within budget)."""
    ram_budget, gpu_budget = BUDGETS[mode]
    over = []
    if ram_budget is not None and run.peak_ram_gib is not None and run.peak_ram_gib > ram_budget:
        over.append(f"RAM {run.peak_ram_gib:.2f} GiB > {ram_budget:g}")
    if gpu_budget is not None and run.peak_gpu_gib is not None and run.peak_gpu_gib > gpu_budget:
        over.append(f"GPU {run.peak_gpu_gib:.2f} GiB > {gpu_budget:g}")
    return over


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="*", type=Path, help="notebooks (default: solutions/*.ipynb)")
    ap.add_argument("--mode", default="quick", choices=list(BUDGETS))
    ap.add_argument("--timeout", type=float, default=B.DEFAULT_TIMEOUT,
                    help="seconds allowed per cell (0: no limit)")
    ap.add_argument("--out", type=Path, default=None,
                    help="keep the executed notebooks and the report here")
    args = ap.parse_args(argv)
    paths = args.paths or B.select_notebooks(ROOT)
    with tempfile.TemporaryDirectory(prefix="lmcourse-bench-") as tmp:
        report = B.build(paths, args.out or Path(tmp), mode=args.mode, timeout=args.timeout,
                         root=ROOT, progress=print)
    ram_budget, gpu_budget = BUDGETS[args.mode]
    load = "unknown" if report.load is None else f"{report.load:.2f}"
    print(f"mode {args.mode}; load average at the start {load}; budgets: RAM "
          f"{ram_budget or '-'} GiB, GPU {gpu_budget or '-'} GiB")
    print(f"{'notebook':<42} {'wall s':>8} {'peak RAM GiB':>13} {'peak GPU GiB':>13}  status")
    bad = False
    for run in report.runs:
        over = over_budget(run, args.mode)
        bad |= bool(over) or not run.ok
        ram = "-" if run.peak_ram_gib is None else f"{run.peak_ram_gib:.2f}"
        gpu = "-" if run.peak_gpu_gib is None else f"{run.peak_gpu_gib:.2f}"
        status = run.status + (f" ({run.error})" if run.error else "") + \
            ("; OVER BUDGET: " + ", ".join(over) if over else "")
        print(f"{run.notebook:<42} {run.seconds:8.1f} {ram:>13} {gpu:>13}  {status}", flush=True)
    print(f"total {sum(r.seconds for r in report.runs):.1f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
