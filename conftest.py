"""Pytest setup for the whole repository: private caches, CUDA-only tests, and a per-notebook
execution summary.

Tests never write into a learner's real cache. Each pytest process (each xdist worker) gets a
temporary folder of its own for $LMCOURSE_CACHE and the Hugging Face caches, and every executed
notebook gets a folder of its own below it, set before its kernel starts. So two copies of the same
lesson running side by side (learner and solution, on two workers) never see each other's
checkpoints or tokenizers.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

import pytest

# Variables pointing at folders a test or a notebook may write (LMCOURSE_CACHE, HF_HOME,
# HF_DATASETS_CACHE), and a private folder for each: the same as `lmcourse build` gives a notebook.
from lmcourse.build import private_caches

# A learner's copies of a lesson (NN_name.new.ipynb written by `lmcourse sync` beside a notebook
# edited by hand, NN_name.mine.ipynb) are not part of the course: never executed as tests.
collect_ignore_glob = ["notebooks/*.*.ipynb"]

_private: dict[str, Path] = {}  # "root" -> this process's folder

_cells: dict[str, list[float]] = defaultdict(list)
_failed: set[str] = set()
_span: dict[str, list[float]] = {}


def pytest_configure(config):
    """Point every cache variable at a fresh folder of this process's own."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    root = Path(tempfile.mkdtemp(prefix=f"lmcourse-test-{worker}-"))
    _private["root"] = root
    os.environ.update(private_caches(root / "tests"))


def pytest_unconfigure(config):
    root = _private.pop("root", None)
    if root is not None:
        shutil.rmtree(root, ignore_errors=True)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Before a notebook's kernel starts (in the setup of its first cell), give it its own caches;
    other tests get the process's folder back."""
    root = _private.get("root")
    if root is None:
        return
    path = item.nodeid.split("::")[0]
    if path.endswith(".ipynb"):
        os.environ.update(private_caches(root / "notebooks" / re.sub(r"[^\w.-]", "_", path)))
    else:
        os.environ.update(private_caches(root / "tests"))


def pytest_collection_modifyitems(config, items):
    """Skip tests marked `cuda` when torch sees no CUDA GPU, saying why."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::")[0]
    if not path.endswith(".ipynb"):
        return
    start, stop = getattr(report, "start", None), getattr(report, "stop", None)
    if start is not None and stop is not None:
        span = _span.setdefault(path, [start, stop])
        span[0], span[1] = min(span[0], start), max(span[1], stop)
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _cells[path].append(report.duration)
        if report.outcome == "failed":
            _failed.add(path)


def pytest_terminal_summary(terminalreporter):
    """List every executed notebook: cell count, time in cells, wall time with the kernel's start."""
    if not _cells:
        return
    tr = terminalreporter
    tr.section("notebooks executed")
    for path in sorted(_cells):
        verdict = "FAILED" if path in _failed else "ok"
        wall = _span[path][1] - _span[path][0] if path in _span else float("nan")
        tr.write_line(f"{verdict:6} {path:45} {len(_cells[path]):3d} cells  "
                      f"{sum(_cells[path]):6.1f} s in cells  {wall:6.1f} s wall")
    tr.write_line(f"{len(_cells)} notebooks, {sum(len(v) for v in _cells.values())} cells")
