"""Tests for lmcourse.build (`lmcourse build`): executed copies, a failure that stops nothing else,
the report, each kernel's mode, caches and folder."""

import csv
import json
import os
from pathlib import Path

import nbformat
import pytest

from lmcourse import build as B
from lmcourse.cli import main

from .conftest import ROOT

SMALL = ROOT / "solutions" / "00_welcome.ipynb"  # the quickest lesson in smoke mode (~3 s)

# A cell that reports what its kernel sees: mode, caches, working folder.
PROBE = ("import json, os\n"
         "print(json.dumps({k: os.environ.get(k) for k in "
         "('LMCOURSE_MODE', 'LMCOURSE_CACHE', 'HF_HOME', 'HF_DATASETS_CACHE', 'MPLBACKEND')}"
         " | {'cwd': os.getcwd()}))")


def _probe_notebook(path: Path, *cells: str) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in (PROBE, *cells)])
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def _probe_output(path: Path) -> dict:
    nb = nbformat.read(path, as_version=4)
    return json.loads(nb.cells[0].outputs[0]["text"])


def test_a_failing_notebook_is_saved_and_reported_and_the_next_one_still_runs(tmp_path):
    broken = tmp_path / "src" / "00_broken.ipynb"
    broken.parent.mkdir()
    nb = nbformat.read(SMALL, as_version=4)
    fail_at = 4  # after the setup and parameters cells
    nb.cells.insert(fail_at, nbformat.v4.new_code_cell('raise RuntimeError("deliberate failure")'))
    nbformat.write(nb, broken)
    out = tmp_path / "out"
    lines, reported = [], []

    def progress(line: str) -> None:  # what report.md holds when each notebook is announced
        lines.append(line)
        reported.append((out / "report.md").read_text() if (out / "report.md").exists() else "")

    report = B.build([broken, SMALL], out, mode="smoke", root=ROOT, progress=progress)
    # the report is written after every notebook: a build stopped halfway keeps what finished
    assert "00_broken.ipynb" in reported[0] and SMALL.name not in reported[0]

    bad, good = report.runs
    assert (bad.status, good.status) == ("failed", "ok") and not report.ok
    assert bad.error.startswith(f"cell {fail_at}: RuntimeError: deliberate failure"), bad.error
    code_before = sum(c.cell_type == "code" for c in nb.cells[:fail_at + 1])
    assert bad.cells_run == code_before < bad.code_cells
    assert good.cells_run == good.code_cells
    assert bad.seconds > 0 and good.seconds > 0
    assert len(lines) == 2 and "deliberate failure" in lines[0]

    # the failing copy is saved with its error where it happened, the rest not run
    saved = nbformat.read(out / "00_broken.ipynb", as_version=4)
    assert saved.cells[fail_at].outputs[-1]["output_type"] == "error"
    assert all(not c.get("outputs") for c in saved.cells[fail_at + 1:] if c.cell_type == "code")
    assert saved.metadata["lmcourse"]["build"]["status"] == "failed"
    # the good one: under its path in the repository, every code cell run, figures kept inline
    done = nbformat.read(out / "solutions" / SMALL.name, as_version=4)
    code = [c for c in done.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)
    assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs)
    # the memory probe run after the last cell is not kept in either copy
    assert len(done.cells) == len(nbformat.read(SMALL, as_version=4).cells)
    assert len(saved.cells) == len(nb.cells)
    assert "LMCOURSE_PEAK_GPU_GIB" not in json.dumps(done.dict())

    # the table: markdown, CSV and JSON, one row per notebook
    md = (out / "report.md").read_text()
    assert "| `00_broken.ipynb` | failed |" in md and f"| `solutions/{SMALL.name}` | ok |" in md
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert [r["status"] for r in rows] == ["failed", "ok"]
    assert all(float(r["seconds"]) > 0 for r in rows)
    js = json.loads((out / "report.json").read_text())
    assert js["ok"] is False and js["mode"] == "smoke" and len(js["notebooks"]) == 2
    if Path("/proc/self/status").exists():
        assert all(0.05 < r.peak_ram_gib < 64 for r in report.runs)
    assert "peak GPU (GiB)" in md and js["load"] == report.load and report.load >= 0
    assert bad.peak_gpu_gib is None, "a failed notebook never reaches the probe"
    if not _cuda_available():
        assert good.peak_gpu_gib is None, "no CUDA used: no GPU figure"


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def test_the_gpu_peak_comes_from_torch_in_the_kernel_only_when_cuda_was_used(tmp_path):
    # A kernel whose torch reports CUDA started with a 3 GiB peak (a stand-in: no GPU needed).
    fake = ("import sys, types\n"
            "cuda = types.SimpleNamespace(is_initialized=lambda: True,\n"
            "                             max_memory_allocated=lambda: 3 * 2**30)\n"
            "sys.modules['torch'] = types.SimpleNamespace(cuda=cuda)")
    idle = ("import sys, types\n"
            "cuda = types.SimpleNamespace(is_initialized=lambda: False,\n"
            "                             max_memory_allocated=lambda: 1 / 0)\n"
            "sys.modules['torch'] = types.SimpleNamespace(cuda=cuda)")
    used = _probe_notebook(tmp_path / "used.ipynb", fake)
    unused = _probe_notebook(tmp_path / "unused.ipynb", idle)
    report = B.build([used, unused], tmp_path / "out", mode="smoke", progress=None)
    assert report.ok, [r.error for r in report.runs]
    assert [r.peak_gpu_gib for r in report.runs] == [3.0, None]
    assert [r.cells_run for r in report.runs] == [2, 2], "the probe is not one of the notebook's cells"
    assert "| 3.00 |" in (tmp_path / "out" / "report.md").read_text()


def test_each_kernel_gets_the_mode_private_caches_and_its_own_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("LMCOURSE_MODE", "quick")  # the build's mode wins over the environment
    monkeypatch.setenv("MPLBACKEND", "Agg")       # and figures stay in the executed copies
    span = "import json, time\nt = time.time()\ntime.sleep(1.5)\nprint(json.dumps([t, time.time()]))"
    a = _probe_notebook(tmp_path / "a" / "one.ipynb", span)
    b = _probe_notebook(tmp_path / "b" / "two.ipynb", span)
    report = B.build([a, b], tmp_path / "out", mode="full", jobs=2, progress=None)
    assert report.ok and report.jobs == 2
    done = [nbformat.read(tmp_path / "out" / n, as_version=4) for n in ("one.ipynb", "two.ipynb")]
    (s1, e1), (s2, e2) = (json.loads(nb.cells[1].outputs[0]["text"]) for nb in done)
    assert s1 < e2 and s2 < e1, "--jobs 2: the two notebooks ran side by side"
    seen = [_probe_output(tmp_path / "out" / name) for name in ("one.ipynb", "two.ipynb")]
    assert [s["cwd"] for s in seen] == [str(a.parent), str(b.parent)]
    assert {s["LMCOURSE_MODE"] for s in seen} == {"full"}
    assert {s["MPLBACKEND"] for s in seen} == {B.INLINE_BACKEND}
    caches = [s[v] for s in seen for v in B.CACHE_VARIABLES]
    assert len(set(caches)) == 6, "every notebook, every variable: a folder of its own"
    mine = {os.environ.get(v) for v in B.CACHE_VARIABLES}
    assert not set(caches) & mine and all("lmcourse-build-" in c for c in caches)
    assert not any(Path(c).exists() for c in caches), "private caches are removed afterwards"


def test_a_cell_over_the_timeout_fails_its_notebook(tmp_path):
    nb = _probe_notebook(tmp_path / "slow.ipynb", "import time\ntime.sleep(60)", "print('never')")
    run = B.build([nb], tmp_path / "out", mode="smoke", timeout=2, progress=None).runs[0]
    assert run.status == "timeout" and run.error.startswith("cell 1:") and run.seconds < 30


def test_cli_builds_named_notebooks_prints_the_table_and_fails_on_a_failure(tmp_path, capsys):
    ok = _probe_notebook(tmp_path / "ok.ipynb")
    bad = _probe_notebook(tmp_path / "bad.ipynb", "1 / 0")
    out = tmp_path / "out"
    code = main(["build", str(bad), str(ok), "--mode", "smoke", "--out", str(out),
                 "--root", str(ROOT)])
    text = capsys.readouterr().out
    assert code == 1
    assert "| `bad.ipynb` | failed |" in text and "ZeroDivisionError" in text
    assert "| `ok.ipynb` | ok |" in text and "Failed: bad.ipynb" in text
    assert sorted(p.name for p in out.iterdir()) == sorted(["bad.ipynb", "ok.ipynb", *B.REPORT_NAMES])
    assert main(["build", str(ok), "--mode", "smoke", "--out", str(out), "--root", str(ROOT)]) == 0


def test_only_selects_by_prefix_or_glob():
    names = lambda pats, **kw: [p.stem for p in B.select_notebooks(ROOT, pats, **kw)]  # noqa: E731
    every = names([])
    assert every == sorted(p.stem for p in (ROOT / "solutions").glob("*.ipynb")) and len(every) >= 9
    five = names(["05"])  # a prefix: 05, 05b, 05c, ... and nothing else
    assert five[:2] == ["05_pretraining_gpt", "05b_pretraining_bert"]
    assert all(n.startswith("05") for n in five) and "04_transformer" not in five
    assert names(["05b"]) == ["05b_pretraining_bert"]
    assert names(["05b", "00_welcome.ipynb"]) == ["00_welcome", "05b_pretraining_bert"]
    assert names(["0[12]_*"]) == ["01_lm_math", "02_gradients"]
    assert B.select_notebooks(ROOT, ["01"], learner=True) == [ROOT / "notebooks" / "01_lm_math.ipynb"]
    with pytest.raises(B.BuildError, match="matches no notebook.*00_welcome"):
        B.select_notebooks(ROOT, ["01", "99"])


@pytest.mark.parametrize("kwargs, msg", [
    (dict(mode="fast"), "Unknown mode"),
    (dict(jobs=0), "--jobs"),
])
def test_bad_requests_are_explained(tmp_path, kwargs, msg):
    with pytest.raises(B.BuildError, match=msg):
        B.build([SMALL], tmp_path, progress=None, **kwargs)


def test_missing_notebooks_and_clashing_outputs_are_explained(tmp_path):
    with pytest.raises(B.BuildError, match="No notebooks to build"):
        B.build([], tmp_path / "out", progress=None)
    with pytest.raises(B.BuildError, match="No such notebook"):
        B.build([tmp_path / "nope.ipynb"], tmp_path / "out", progress=None)
    a = _probe_notebook(tmp_path / "a" / "x.ipynb")
    b = _probe_notebook(tmp_path / "b" / "x.ipynb")
    with pytest.raises(B.BuildError, match="same place"):
        B.build([a, b], tmp_path / "out", progress=None)


def test_the_notebook_benchmark_holds_each_mode_to_its_memory_budget():
    import runpy

    bench = runpy.run_path(str(ROOT / "benchmarks" / "notebooks.py"), run_name="benchmark_under_test")
    over = bench["over_budget"]
    run = lambda ram, gpu=None: B.NotebookRun("n", "o", "ok", 1.0, 1, 1, ram, peak_gpu_gib=gpu)  # noqa: E731
    assert over(run(5.9), "quick") == [] and over(run(None), "quick") == []
    assert over(run(6.1), "quick") == ["RAM 6.10 GiB > 6"]
    assert over(run(40.0), "smoke") == [], "smoke mode promises no budget"
    assert over(run(11.0, 15.9), "full") == []
    assert over(run(12.5, 16.5), "full") == ["RAM 12.50 GiB > 12", "GPU 16.50 GiB > 16"]
