"""Pytest setup for the whole repository: CUDA-only tests, and a per-notebook execution summary."""

from __future__ import annotations

from collections import defaultdict

import pytest

_cells: dict[str, list[float]] = defaultdict(list)
_failed: set[str] = set()
_span: dict[str, list[float]] = {}


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
