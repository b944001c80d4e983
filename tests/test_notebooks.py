"""Tests for lmcourse.notebooks and the committed notebooks: sync, stubs, header, no outputs."""

import shutil
import subprocess
import sys

import nbformat
import pytest

from lmcourse import notebooks as nbs
from lmcourse._project import REPO_URL

from .conftest import ROOT

SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
LEARNER = sorted((ROOT / "notebooks").glob("*.ipynb"))
ALL = SOLUTIONS + LEARNER


def test_notebooks_are_in_sync_with_solutions():
    report = nbs.sync(ROOT, check=True)
    stale = [str(p.relative_to(ROOT)) for p in report.changed + report.orphans]
    assert not stale, f"out of date: {stale}; run `lmcourse sync`"


def test_every_solution_has_a_learner_notebook():
    assert [p.name for p in SOLUTIONS] == [p.name for p in LEARNER]
    assert len(SOLUTIONS) >= 2


def test_changing_a_solution_without_sync_is_caught(tmp_path):
    for d in ("solutions", "notebooks"):
        shutil.copytree(ROOT / d, tmp_path / d)
    assert nbs.sync(tmp_path, check=True).ok
    sol = tmp_path / "solutions" / SOLUTIONS[0].name
    nb = nbformat.read(sol, as_version=4)
    nb.cells[-1].source += "\n\nOne more sentence."
    nbformat.write(nb, sol)
    report = nbs.sync(tmp_path, check=True)
    assert tmp_path / "notebooks" / sol.name in report.changed
    nbs.sync(tmp_path)  # regenerating fixes it
    assert nbs.sync(tmp_path, check=True).ok


def test_cli_check_fails_when_out_of_date(tmp_path):
    for d in ("solutions", "notebooks"):
        shutil.copytree(ROOT / d, tmp_path / d)
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "notebooks" / SOLUTIONS[0].name).unlink()
    run = subprocess.run([sys.executable, "-m", "lmcourse", "sync", "--check", "--root", str(tmp_path)],
                         capture_output=True, text=True)
    assert run.returncode == 1 and "out of date" in run.stdout


def test_stub_replaces_solution_region_keeping_indent():
    src = "def f(x):\n    ### BEGIN SOLUTION\n    y = x + 1\n    return y\n    ### END SOLUTION\n\nlm.check('f', f)"
    out = nbs.stub_solutions(src)
    assert "y = x + 1" not in out and "BEGIN SOLUTION" not in out
    assert '    raise NotImplementedError("exercise not done yet")' in out
    assert out.endswith("lm.check('f', f)")
    ns = {}
    exec(out.replace("lm.check('f', f)", ""), ns)
    with pytest.raises(NotImplementedError):
        ns["f"](1)


@pytest.mark.parametrize("src, msg", [
    ("### BEGIN SOLUTION\nx = 1\n### END SOLUTION", "column 0"),
    ("def f():\n    ### BEGIN SOLUTION\n    return 1", "no matching"),
    ("def f():\n    return 1\n    ### END SOLUTION", "without"),
])
def test_bad_markers_are_explained(src, msg):
    with pytest.raises(nbs.NotebookError, match=msg):
        nbs.stub_solutions(src, "x.ipynb, cell 3")


@pytest.mark.parametrize("path", ALL, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_committed_notebook_has_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} cell {i}"


@pytest.mark.parametrize("path", ALL, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_notebook_header_badge_colab_setup_params(path):
    nb = nbformat.read(path, as_version=4)
    rel = f"{path.parent.name}/{path.name}"
    assert nb.cells[0].source.startswith("[![Open In Colab]")
    assert f"/blob/main/{rel})" in nb.cells[0].source.split("\n")[0]
    colab = nb.cells[1]
    assert nbs.COLAB_TAG in colab.metadata.get("tags", []) and REPO_URL in colab.source
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert f'lm.setup("{path.stem}")' in code[1], "the cell after the Colab cell calls lm.setup"
    assert "cfg.params(" in code[2], "the next code cell is the parameters cell"
    for src in code:
        assert "import *" not in src and ".cuda()" not in src and '"cuda"' not in src


@pytest.mark.parametrize("path", LEARNER, ids=lambda p: p.name)
def test_learner_notebook_has_no_solution_code(path):
    text = path.read_text()
    assert nbs.BEGIN not in text and nbs.END not in text
    code = "".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    sol = nbformat.read(ROOT / "solutions" / path.name, as_version=4)
    n_regions = sum(c.source.count(nbs.BEGIN) for c in sol.cells if c.cell_type == "code")
    assert code.count('raise NotImplementedError("exercise not done yet")') == n_regions


def test_colab_cell_does_nothing_outside_colab(monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(nbs.COLAB_CELL.format(repo=REPO_URL), {})
    assert calls == []


def test_colab_cell_installs_inside_colab(monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a[0]))
    monkeypatch.setitem(sys.modules, "google.colab", object())
    exec(nbs.COLAB_CELL.format(repo=REPO_URL), {})
    assert calls and f"lmcourse @ git+{REPO_URL}" in calls[0]
