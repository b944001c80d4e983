"""Executed builds: run lesson notebooks top to bottom and keep the executed copies (`lmcourse build`).

    lmcourse build                         # every solution notebook, quick mode, into build/quick/
    lmcourse build --mode smoke --only 01 --only 07
    lmcourse build --learner --mode full   # the learner notebooks instead (exercises not done)

Each notebook runs in a fresh kernel of this Python, in its own folder (so relative paths work as
in the repository), with the mode in $LMCOURSE_MODE and private cache folders ($LMCOURSE_CACHE,
$HF_HOME, $HF_DATASETS_CACHE) that are deleted afterwards: like the test suite, a build never
writes into your own cache, and a lesson never finds the files an earlier lesson saved. A notebook
that fails is saved with its error output and reported; the others still run. The output folder
gets the executed notebooks (same relative paths as in the repository) and a table of status,
time and the kernel's peak memory per notebook: report.md, report.csv and report.json.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

from lmcourse.config import ENV_CACHE, ENV_MODE, MODES

# Variables pointing at folders a notebook may write; each notebook gets private ones.
CACHE_VARIABLES = (ENV_CACHE, "HF_HOME", "HF_DATASETS_CACHE")
REPORT_NAMES = ("report.md", "report.csv", "report.json")
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"  # figures kept in the outputs
DEFAULT_TIMEOUT = 1800  # seconds per cell
# Run after a notebook's last cell, then removed from the executed copy: torch's peak CUDA memory
# (only when the notebook itself started CUDA; the probe never initialises it).
GPU_PROBE = """\
import sys as _lmcourse_sys
_lmcourse_torch = _lmcourse_sys.modules.get("torch")
print("LMCOURSE_PEAK_GPU_GIB", _lmcourse_torch.cuda.max_memory_allocated() / 2**30
      if _lmcourse_torch is not None and _lmcourse_torch.cuda.is_initialized() else -1)
del _lmcourse_sys, _lmcourse_torch
"""


class BuildError(ValueError):
    """A build request that cannot run; the message says how to fix it."""


@dataclass
class NotebookRun:
    """The outcome of executing one notebook."""

    notebook: str                 # the source, relative to the course folder where possible
    output: str                   # the executed copy
    status: str                   # ok | failed | timeout | kernel died
    seconds: float                # wall time, kernel start included
    cells_run: int                # code cells executed (up to and including a failing one)
    code_cells: int
    peak_ram_gib: float | None    # the kernel process's peak resident memory (None: unknown)
    error: str = ""               # "cell 7: ValueError: ..." for a failed notebook
    peak_gpu_gib: float | None = None  # torch's peak CUDA memory in the kernel (None: no CUDA used)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class BuildReport:
    """Every notebook of one build, in the order asked for."""

    mode: str
    out: Path
    runs: list[NotebookRun] = field(default_factory=list)
    seconds: float = 0.0          # wall time of the whole build
    jobs: int = 1
    load: float | None = None     # the machine's 1-minute load average when the build started

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.runs)

    @property
    def failed(self) -> list[NotebookRun]:
        return [r for r in self.runs if not r.ok]

    def markdown(self) -> str:
        """The report as a markdown table with a summary line."""
        lines = [f"# Executed build, mode {self.mode}", "",
                 "| notebook | status | time (s) | code cells run | peak RAM (GiB) | "
                 "peak GPU (GiB) | error |",
                 "|---|---|---:|---:|---:|---:|---|"]
        for r in self.runs:
            ram = "-" if r.peak_ram_gib is None else f"{r.peak_ram_gib:.2f}"
            gpu = "-" if r.peak_gpu_gib is None else f"{r.peak_gpu_gib:.2f}"
            err = r.error.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| `{r.notebook}` | {r.status} | {r.seconds:.1f} | "
                         f"{r.cells_run}/{r.code_cells} | {ram} | {gpu} | {err} |")
        total = sum(r.seconds for r in self.runs)
        load = "" if self.load is None else f" Load average at the start: {self.load:.2f} on " \
            f"{os.cpu_count()} core(s)."
        lines += ["", f"{len(self.runs)} notebook(s), {len(self.failed)} failed; {total:.1f} s of "
                      f"notebook time, {self.seconds:.1f} s wall with {self.jobs} job(s).{load}"]
        return "\n".join(lines) + "\n"

    def write(self) -> list[Path]:
        """Write report.md, report.csv and report.json into the output folder; return their paths."""
        self.out.mkdir(parents=True, exist_ok=True)
        md, csv_path, js = (self.out / name for name in REPORT_NAMES)
        md.write_text(self.markdown(), encoding="utf-8")
        rows = [asdict(r) for r in self.runs]
        with csv_path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["notebook"])
            writer.writeheader()
            writer.writerows(rows)
        js.write_text(json.dumps({"mode": self.mode, "jobs": self.jobs, "seconds": self.seconds,
                                  "load": self.load, "ok": self.ok, "notebooks": rows},
                                 indent=1) + "\n",
                      encoding="utf-8")
        return [md, csv_path, js]


def private_caches(root: Path) -> dict[str, str]:
    """A folder below `root` for each cache variable."""
    return {name: str(root / name.lower()) for name in CACHE_VARIABLES}


def select_notebooks(root: str | Path, only: Sequence[str] = (), learner: bool = False) -> list[Path]:
    """The course's solution (or learner) notebooks whose names match any of `only` (all if empty).

    A pattern with wildcards is a glob on the name without `.ipynb` (`0[1-3]_*`); a plain one
    matches names that start with it (`07`, `05b`, `01_lm_math`).
    """
    folder = Path(root) / ("notebooks" if learner else "solutions")
    found = sorted(p for p in folder.glob("*.ipynb") if "." not in p.stem)  # not NN.new.ipynb copies
    if not found:
        raise BuildError(f"No notebooks in {folder}; run this inside the course folder or pass --root.")
    if not only:
        return found
    chosen = [p for p in found if any(_matches(p.stem, pat) for pat in only)]
    unmatched = [pat for pat in only if not any(_matches(p.stem, pat) for p in found)]
    if unmatched:
        raise BuildError(f"--only {', '.join(unmatched)} matches no notebook in {folder}; "
                         f"the names are: {', '.join(p.stem for p in found)}.")
    return chosen


def _matches(stem: str, pattern: str) -> bool:
    pattern = pattern.removesuffix(".ipynb")
    if any(ch in pattern for ch in "*?["):
        return fnmatch.fnmatchcase(stem, pattern)
    return stem.startswith(pattern)


def _label(path: Path, root: Path | None) -> Path:
    """The notebook's path relative to the course folder, else its bare name."""
    if root is not None:
        try:
            return path.resolve().relative_to(root.resolve())
        except ValueError:
            pass
    return Path(path.name)


def kernel_env(mode: str, cache_root: Path, jobs: int = 1,
               base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a notebook's kernel starts with: the mode, private caches, inline figures."""
    env = dict(os.environ if base is None else base)
    env[ENV_MODE] = mode
    env.update(private_caches(cache_root))
    # An executed copy is for reading: keep figures in it (Agg, set by the test command, drops them).
    env["MPLBACKEND"] = INLINE_BACKEND
    if jobs > 1:  # share the cores among the kernels running side by side
        threads = str(max(1, (os.cpu_count() or 1) // jobs))
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, threads)
    return env


def _peak_rss_gib(pid: int) -> float | None:
    """The peak resident memory of process `pid` (Linux: VmHWM); else its current RSS via psutil."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        m = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
        if m:
            return int(m.group(1)) / 2**20
    except OSError:
        pass
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**30
    except Exception:  # psutil missing or the process gone: memory unknown, the build goes on
        return None


def kernel_manager_class() -> type:
    """A kernel manager that always starts this Python's ipykernel, whatever kernels are installed."""
    from ipykernel.kernelspec import RESOURCES, get_kernel_dict
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class ThisPythonSpecs(KernelSpecManager):
        def get_kernel_spec(self, kernel_name):
            return self.kernel_spec_class(resource_dir=RESOURCES, **get_kernel_dict())

    class ThisPythonKernel(AsyncKernelManager):
        @default("kernel_spec_manager")
        def _default_specs(self):
            return ThisPythonSpecs()

    return ThisPythonKernel


def run_notebook(path: str | Path, output: str | Path, mode: str = "quick",
                 timeout: float | None = DEFAULT_TIMEOUT, jobs: int = 1,
                 label: str | None = None) -> NotebookRun:
    """Execute one notebook in a fresh kernel and write the executed copy to `output`."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    path, output = Path(path).resolve(), Path(output)
    nb = nbformat.read(path, as_version=4)
    code_cells = sum(c.cell_type == "code" for c in nb.cells)
    probe = nbformat.v4.new_code_cell(GPU_PROBE)
    nb.cells.append(probe)
    peak: list[float] = []
    cells_run = 0
    current: list[int] = []  # the index of the cell running now

    def on_cell_execute(cell, cell_index):
        current.append(cell_index)

    def on_cell_executed(cell, cell_index, execute_reply):
        nonlocal cells_run
        cells_run += cell is not probe
        pid = getattr(getattr(getattr(client.km, "provisioner", None), "process", None), "pid", None)
        if pid is not None and (gib := _peak_rss_gib(pid)) is not None:
            peak.append(gib)

    client = NotebookClient(
        nb, timeout=timeout if timeout and timeout > 0 else None, kernel_name="python3",
        kernel_manager_class=kernel_manager_class(), on_cell_executed=on_cell_executed,
        on_cell_execute=on_cell_execute,
        resources={"metadata": {"path": str(path.parent)}})
    status, error = "ok", ""
    with tempfile.TemporaryDirectory(prefix="lmcourse-build-") as caches:
        start = time.perf_counter()
        try:
            client.execute(env=kernel_env(mode, Path(caches), jobs))
        except CellTimeoutError:
            status, error = "timeout", f"{_where(current)}: ran over {timeout:g} s (--timeout)"
        except CellExecutionError as e:
            status, error = "failed", f"{_where(current)}: {e.ename}: {e.evalue}"
        except DeadKernelError as e:
            status, error = "kernel died", f"{_where(current)}: {e} (out of memory?)"
        except Exception as e:  # the kernel could not start, or nbclient broke: report, go on
            status, error = "failed", f"{type(e).__name__}: {e}"
        seconds = time.perf_counter() - start
    nb.cells.remove(probe)
    error = error.splitlines()[0][:300] if error else ""
    nb.metadata.setdefault("lmcourse", {})["build"] = {
        "mode": mode, "status": status, "seconds": round(seconds, 1), "error": error}
    output.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, output)
    return NotebookRun(notebook=label or str(path), output=str(output), status=status,
                       seconds=round(seconds, 2), cells_run=cells_run, code_cells=code_cells,
                       peak_ram_gib=round(max(peak), 3) if peak else None, error=error,
                       peak_gpu_gib=_probe_gpu(probe))


def _probe_gpu(probe) -> float | None:
    """The GPU peak the probe cell printed, None if it did not run or CUDA was never used."""
    for out in probe.get("outputs", []):
        m = re.search(r"LMCOURSE_PEAK_GPU_GIB (\S+)", out.get("text", ""))
        if m and float(m.group(1)) >= 0:
            return round(float(m.group(1)), 3)
    return None


def _where(current: list[int]) -> str:
    """'cell N' (0-based, as Jupyter's cell list) for the last cell that started running."""
    return f"cell {current[-1]}" if current else "before the first cell"


def build(paths: Iterable[str | Path], out: str | Path, mode: str = "quick",
          timeout: float | None = DEFAULT_TIMEOUT, jobs: int = 1, root: str | Path | None = None,
          progress: Callable[[str], None] | None = print) -> BuildReport:
    """Execute `paths` into `out` (each in its own kernel, `jobs` at a time); write and return the report."""
    if mode not in MODES:
        raise BuildError(f"Unknown mode {mode!r}; use one of {', '.join(MODES)}.")
    if jobs < 1:
        raise BuildError(f"--jobs must be 1 or more, got {jobs}.")
    paths = [Path(p) for p in paths]
    if not paths:
        raise BuildError("No notebooks to build: name some, or drop the --only patterns that "
                         "exclude them all.")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise BuildError(f"No such notebook: {', '.join(missing)}.")
    out = Path(out)
    root = Path(root) if root is not None else None
    labels = [_label(p, root) for p in paths]
    if len(set(labels)) != len(labels):
        raise BuildError("Two notebooks would be written to the same place in the output folder: "
                         f"{sorted(str(x) for x in labels if labels.count(x) > 1)}; build them "
                         "into separate --out folders.")
    report = BuildReport(mode=mode, out=out, jobs=jobs,
                         load=os.getloadavg()[0] if hasattr(os, "getloadavg") else None)
    lock = threading.Lock()
    done: dict[int, NotebookRun] = {}
    start = time.perf_counter()

    def one(i: int) -> NotebookRun:
        run = run_notebook(paths[i], out / labels[i], mode=mode, timeout=timeout, jobs=jobs,
                           label=str(labels[i]))
        with lock:
            # the report so far, after every notebook: a build stopped halfway (a long quick or
            # full build interrupted) keeps the figures of the notebooks that finished
            done[i] = run
            report.runs = [done[k] for k in sorted(done)]
            report.seconds = time.perf_counter() - start
            report.write()
            if progress is not None:
                extra = f"  {run.error}" if run.error else ""
                progress(f"{run.status:>11}  {run.notebook}  {run.seconds:.1f} s{extra}")
        return run

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        report.runs = list(pool.map(one, range(len(paths))))
    report.seconds = time.perf_counter() - start
    report.write()
    return report


def main(args: argparse.Namespace) -> int:
    """`lmcourse build`: select, execute, print the table; exit 1 if any notebook failed."""
    from lmcourse.cli import _find_root

    root = (args.root or _find_root(Path.cwd())).resolve()
    try:
        if args.notebooks:
            paths = [Path(p) for p in args.notebooks]
            if args.only:
                paths = [p for p in paths if any(_matches(p.stem, pat) for pat in args.only)]
        else:
            paths = select_notebooks(root, args.only, learner=args.learner)
        out = args.out or root / "build" / args.mode
        print(f"== executing {len(paths)} notebook(s) in {args.mode} mode into {out} "
              f"({args.jobs} at a time, "
              + (f"{args.timeout:g} s per cell at most)" if args.timeout else "no time limit per cell)"), flush=True)
        report = build(paths, out, mode=args.mode, timeout=args.timeout, jobs=args.jobs, root=root)
    except BuildError as e:
        print(f"lmcourse build: error: {e}", file=sys.stderr)
        return 2
    print()
    print(report.markdown())
    print(f"Executed notebooks and the report ({', '.join(REPORT_NAMES)}) are in {out}.")
    if not report.ok:
        names = ", ".join(r.notebook for r in report.failed)
        print(f"Failed: {names}. Each is saved with its error output; open it to see the traceback.")
    return 0 if report.ok else 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The `build` subcommand's options."""
    b = sub.add_parser("build", help="execute notebooks into an output folder, with a time table",
                       description=__doc__.split("\n\n")[-1].strip())
    b.add_argument("notebooks", nargs="*", type=Path,
                   help="notebooks to run (default: every solution notebook)")
    b.add_argument("--mode", choices=MODES, default="quick", help="smoke | quick | full "
                   "(default quick)")
    b.add_argument("--only", action="append", default=[], metavar="PATTERN",
                   help="only notebooks whose name starts with PATTERN or matches it as a glob "
                        "(repeatable: --only 01 --only '07*')")
    b.add_argument("--learner", action="store_true", help="run notebooks/ (learner versions, "
                   "exercises not done) instead of solutions/")
    b.add_argument("--out", type=Path, default=None, help="output folder (default build/<mode>/ "
                   "in the course folder)")
    b.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds one cell may "
                   f"run before the notebook counts as failed (default {DEFAULT_TIMEOUT}; 0: no limit)")
    b.add_argument("--jobs", type=int, default=1, help="notebooks run side by side (default 1; "
                   "each kernel gets an equal share of the cores)")
    b.add_argument("--root", type=Path, default=None, help="the course folder (default: found upward)")

