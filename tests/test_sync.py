"""`lmcourse sync` never loses a learner's work: a notebook edited by hand is kept and the new version
written beside it; one that was only run is regenerated; `--check` still fails on any difference."""

import shutil
import subprocess
import sys

import nbformat
import pytest

from lmcourse import notebooks as nbs

from .conftest import ROOT

LESSONS = ("00_welcome.ipynb", "01_lm_math.ipynb")


@pytest.fixture
def course(tmp_path):
    """A course folder with two lessons, in sync."""
    for d in ("solutions", "notebooks"):
        (tmp_path / d).mkdir()
        for name in LESSONS:
            shutil.copy(ROOT / d / name, tmp_path / d / name)
    assert nbs.sync(tmp_path, check=True).ok
    return tmp_path


def _learner(course, name=LESSONS[1]):
    return course / "notebooks" / name


def _change_lesson(course, name=LESSONS[1], text="\n\nOne more sentence."):
    sol = course / "solutions" / name
    nb = nbformat.read(sol, as_version=4)
    nb.cells[-1].source += text
    nbformat.write(nb, sol)


def _edit(path):
    """A learner fills in an exercise: a stub's body replaced by their code."""
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "raise NotImplementedError" in c.source)
    cell.source = cell.source.replace('raise NotImplementedError("exercise not done yet")',
                                      "return 42  # my answer")
    nbformat.write(nb, path)


def _run(path):
    """A learner runs the notebook: outputs, execution counts, Jupyter's cell metadata."""
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        cell.execution_count = i + 1
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="hello\n")]
        cell.metadata["execution"] = {"iopub.status.idle": "2025-01-01T00:00:00Z"}
    nb.metadata["language_info"] = {"name": "python", "version": "3.11.9"}
    nbformat.write(nb, path)


def test_generated_notebooks_carry_the_fingerprint_of_their_cells():
    for name in LESSONS:
        nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
        assert nb.metadata["lmcourse"][nbs.FINGERPRINT] == nbs.source_hash(nb)


def test_fingerprint_sees_sources_and_cells_not_outputs():
    nb = nbformat.read(ROOT / "notebooks" / LESSONS[1], as_version=4)
    h = nbs.source_hash(nb)
    nb.cells[3].outputs = [nbformat.v4.new_output("stream", name="stdout", text="x")]
    nb.cells[3].execution_count = 7
    assert nbs.source_hash(nb) == h
    nb.cells[3].source += " "
    assert nbs.source_hash(nb) != h
    nb.cells[3].source = nb.cells[3].source[:-1]
    nb.cells.append(nbformat.v4.new_markdown_cell("my notes"))
    assert nbs.source_hash(nb) != h


def test_unedited_notebook_is_regenerated(course):
    _change_lesson(course)
    report = nbs.sync(course)
    assert report.changed == [_learner(course)] and not report.kept and not report.cleared
    assert "One more sentence." in _learner(course).read_text()
    assert not nbs.beside(_learner(course)).exists()
    assert nbs.sync(course, check=True).ok


def test_edited_notebook_is_kept_and_the_new_version_written_beside(course, capsys):
    path = _learner(course)
    _edit(path)
    mine = path.read_text()
    _change_lesson(course)
    checked = nbs.sync(course, check=True)  # --check writes nothing, but says what sync would do
    assert checked.kept == {path: nbs.beside(path)} and not nbs.beside(path).exists()
    assert nbs.sync_command(course) == 1
    out = capsys.readouterr().out
    assert path.read_text() == mine, "the learner's notebook is untouched"
    new = nbs.beside(path)
    assert new.name == "01_lm_math.new.ipynb" and "One more sentence." in new.read_text()
    assert f"kept: notebooks/{path.name}" in out and f"notebooks/{new.name}" in out and "--force" in out
    # the copy is a generated notebook of its own, and not an orphan
    copy = nbformat.read(new, as_version=4)
    assert copy.metadata["lmcourse"][nbs.FINGERPRINT] == nbs.source_hash(copy)
    report = nbs.sync(course)
    assert report.kept == {path: new} and not report.orphans and path.read_text() == mine
    # CI's check still fails while notebooks/ differs from the solutions, and says why
    assert nbs.sync_command(course, check=True) == 1
    assert "edited by hand" in capsys.readouterr().out


def test_edited_notebook_of_an_unchanged_lesson_is_kept_without_a_copy(course, capsys):
    path = _learner(course)
    _edit(path)
    mine = path.read_text()
    assert nbs.sync_command(course) == 0
    assert path.read_text() == mine and not nbs.beside(path).exists()
    assert "its lesson has not changed" in capsys.readouterr().out
    assert not nbs.sync(course, check=True).ok


def test_a_copy_beside_that_was_edited_too_is_not_overwritten(course):
    path = _learner(course)
    _edit(path)
    _change_lesson(course)
    nbs.sync(course)
    new = nbs.beside(path)
    _edit(new)  # the learner went on working in the new version
    theirs = new.read_text()
    _change_lesson(course, text="\n\nAnd another.")
    report = nbs.sync(course)
    assert report.kept == {path: None} and new.read_text() == theirs


def test_executed_but_unedited_notebook_is_regenerated_and_its_outputs_cleared(course, capsys):
    path = _learner(course)
    _run(path)
    _change_lesson(course)
    assert nbs.sync_command(course) == 0
    assert "outputs are cleared" in capsys.readouterr().out
    nb = nbformat.read(path, as_version=4)
    assert "One more sentence." in nb.cells[-1].source
    assert all(not c.get("outputs") and c.get("execution_count") is None
               for c in nb.cells if c.cell_type == "code")
    assert not nbs.beside(path).exists()
    # the same when the lesson did not change: running is not editing, outputs are not work
    _run(path)
    report = nbs.sync(course)
    assert report.cleared == [path] and not report.kept and nbs.sync(course, check=True).ok


def test_force_overwrites_an_edited_notebook(course, capsys):
    path = _learner(course)
    _edit(path)
    _change_lesson(course)
    assert nbs.sync_command(course, force=True) == 0
    assert "overwrote" in capsys.readouterr().out
    assert "return 42" not in path.read_text() and not nbs.beside(path).exists()
    assert nbs.sync(course, check=True).ok


def test_notebooks_without_a_fingerprint_are_kept_unless_they_match(course):
    """Notebooks written before fingerprints: kept when their cells differ from the new version."""
    for name in LESSONS:
        nb = nbformat.read(_learner(course, name), as_version=4)
        del nb.metadata["lmcourse"][nbs.FINGERPRINT]
        nbformat.write(nb, _learner(course, name))
    _change_lesson(course)  # lesson 01 changes, lesson 00 does not
    report = nbs.sync(course)
    assert report.changed == [_learner(course, LESSONS[0])]   # same cells: nothing to lose
    assert list(report.kept) == [_learner(course, LESSONS[1])]


def test_an_unreadable_notebook_is_kept(course):
    path = _learner(course)
    path.write_text("{ half-saved")
    _change_lesson(course)
    assert path in nbs.sync(course).kept and path.read_text() == "{ half-saved"


def test_copies_are_not_orphans_but_strays_are(course):
    for name in ("01_lm_math.mine.ipynb", "01_lm_math.new.ipynb"):
        shutil.copy(_learner(course), course / "notebooks" / name)
    assert nbs.sync(course, check=True).ok
    shutil.copy(_learner(course), course / "notebooks" / "99_stray.ipynb")
    assert nbs.sync(course, check=True).orphans == [course / "notebooks" / "99_stray.ipynb"]
    assert all(not nbs.is_copy(p) for p in nbs.lesson_notebooks(course))


def test_copies_are_not_collected_as_tests(tmp_path):
    (tmp_path / "conftest.py").write_text((ROOT / "conftest.py").read_text())
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")])
    (tmp_path / "notebooks").mkdir()
    for name in ("01_x.ipynb", "01_x.new.ipynb", "01_x.mine.ipynb"):
        nbformat.write(nb, tmp_path / "notebooks" / name)
    run = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "--collect-only", "-q",
                          "-p", "no:cacheprovider", "notebooks"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert "notebooks/01_x.ipynb::" in run.stdout, run.stdout + run.stderr
    assert ".new.ipynb" not in run.stdout and ".mine.ipynb" not in run.stdout
