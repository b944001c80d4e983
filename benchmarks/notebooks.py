"""Time each lesson notebook in a mode and measure its kernel's peak memory.

    python benchmarks/notebooks.py --mode quick                 # every solution notebook
    python benchmarks/notebooks.py --mode smoke notebooks/*.ipynb

Each notebook runs top to bottom in a fresh kernel (nbclient). After its last cell, one extra
cell asks the kernel for its peak resident memory (getrusage ru_maxrss), the figure that matters
for "quick mode stays under 6 GB of RAM". GPU peak memory is added when the kernel used CUDA.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
PROBE = """\
import resource, sys
_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB on Linux
_gpu = 0.0
if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
    _gpu = sys.modules["torch"].cuda.max_memory_allocated() / 2**30
print(f"PEAK {_peak:.3f} {_gpu:.3f}")
"""


def run(path: Path, mode: str, timeout: int, save: Path | None = None) -> tuple[float, float, float, str]:
    """(wall seconds, peak RSS GiB, peak GPU GiB, status) of one notebook in `mode`."""
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    os.environ["LMCOURSE_MODE"] = mode
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    try:
        client.execute()
        status = "ok"
    except Exception as e:  # report and go on with the other notebooks
        status = f"FAILED: {type(e).__name__}"
    wall = time.perf_counter() - start
    if save is not None:  # the executed notebook, outputs included, to read its figures
        save.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, save / path.name)
    peak = gpu = float("nan")
    for out in nb.cells[-1].get("outputs", []):
        text = out.get("text", "")
        if text.startswith("PEAK"):
            _, peak, gpu = text.split()
    return wall, float(peak), float(gpu), status


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="*", type=Path, help="notebooks (default: solutions/*.ipynb)")
    ap.add_argument("--mode", default="quick", choices=["smoke", "quick", "full"])
    ap.add_argument("--timeout", type=int, default=1800, help="seconds allowed per cell")
    ap.add_argument("--save", type=Path, default=None, help="write the executed notebooks here")
    args = ap.parse_args()
    paths = args.paths or sorted((ROOT / "solutions").glob("*.ipynb"))
    print(f"mode {args.mode}; load average {os.getloadavg()[0]:.1f}; "
          f"LMCOURSE_DATA_DIR={os.environ.get('LMCOURSE_DATA_DIR', '(unset)')}")
    print(f"{'notebook':<42} {'wall s':>8} {'peak RAM GiB':>13} {'peak GPU GiB':>13}  status")
    total = 0.0
    failed = False
    for p in paths:
        wall, peak, gpu, status = run(p.resolve(), args.mode, args.timeout, args.save)
        total += wall
        failed |= status != "ok"
        print(f"{str(p.resolve().relative_to(ROOT)):<42} {wall:8.1f} {peak:13.2f} {gpu:13.2f}  {status}",
              flush=True)
    print(f"total {total:.1f} s")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
