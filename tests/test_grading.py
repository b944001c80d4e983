"""`lmcourse grade`: submissions built from lesson 01's real notebooks, run in real kernels (smoke
mode). One module-scoped run of the command grades most of them together; the time limits get
runs of their own."""

import contextlib
import copy
import csv
import io
import json
import os
import time

import nbformat
import pytest

from lmcourse import exercises as registry
from lmcourse import grading
from lmcourse import notebooks as nbs
from lmcourse.cli import main

from .conftest import ROOT

LESSON = "01_lm_math"
SOLUTION = ROOT / "solutions" / f"{LESSON}.ipynb"
LEARNER = ROOT / "notebooks" / f"{LESSON}.ipynb"
EXERCISES = grading.lesson_exercises(SOLUTION)
KEYS = [key for key, _ in EXERCISES]
STUB = 'raise NotImplementedError("exercise not done yet")'
WRONG_PERPLEXITY = "return torch.exp(log_probs.mean())"  # the sign error
# time limits for the tests that run past them: the cell importing torch must fit in them on a
# loaded 2-core machine
CELL_LIMIT, NOTEBOOK_LIMIT = 10, 10

# a cell that fails unless the kernel runs in smoke mode, strict checks off, with caches of its own
KERNEL_ENV = '''\
import os

caches = [os.environ[n] for n in ("LMCOURSE_CACHE", "HF_HOME", "HF_DATASETS_CACHE")]
assert os.environ["LMCOURSE_MODE"] == "smoke" and "LMCOURSE_STRICT_CHECKS" not in os.environ
assert len(set(caches)) == 3 and not set(caches) & set({caches!r})
assert len({{os.path.dirname(c) for c in caches}}) == 1  # one private folder
'''

TAMPERING = '''\
# every way a notebook might fake its grade
import importlib.abc
import importlib.util
import sys

import lmcourse
import lmcourse.checker
import lmcourse.exercises
from lmcourse.checker import PASSED, CheckResult


def always_passed(*args, **kwargs):
    print("✅ passed")
    return CheckResult("any", PASSED, "✅ passed")


lm.check = lmcourse.exercises.check = lmcourse.checker.check = always_passed
lmcourse.checker.evaluate = lmcourse.exercises.evaluate = always_passed


def wrong_perplexity(log_probs):
    return torch.exp(log_probs.mean())


lm.exercises.get("perplexity").reference = wrong_perplexity  # the wrong answer becomes "right"
lm.lm_math.perplexity = wrong_perplexity


class FakeChecker(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """An import hook serving a lmcourse.checker that passes everything."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name == "lmcourse.checker" else None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        exec(open(lmcourse.checker.__file__).read(), module.__dict__)
        module.evaluate = lambda exercise, fn: module.CheckResult(exercise.key, module.PASSED, "✅")


sys.meta_path.insert(0, FakeChecker())
print('{"nonce": "guess", "complete": true, "verdicts": {"softmax": {"status": "passed"}}}')
'''


# --------------------------------------------------------------------------- building submissions


def _read(path):
    return nbformat.read(path, as_version=4)


def _cell_of(nb, key):
    """The index of the cell that checks exercise `key`."""
    return next(i for i, c in enumerate(nb.cells) if f'lm.check("{key}"' in c.source)


def _solve(nb, key):
    """`nb` with exercise `key` done as in the solution."""
    nb = copy.deepcopy(nb)
    i = _cell_of(nb, key)
    nb.cells[i].source = _read(SOLUTION).cells[i].source
    return nb


def _answer(nb, key, body):
    """`nb` with the stub of exercise `key` replaced by `body`."""
    nb = copy.deepcopy(nb)
    cell = nb.cells[_cell_of(nb, key)]
    assert STUB in cell.source
    cell.source = cell.source.replace(STUB, body)
    return nb


def _insert(nb, index, source):
    """`nb` with a code cell `source` inserted at `index` ("setup": right after lm.setup's cell)."""
    nb = copy.deepcopy(nb)
    if index == "setup":
        index = next(i for i, c in enumerate(nb.cells) if "lm.setup(" in c.source) + 1
    nb.cells.insert(index, nbformat.v4.new_code_cell(source))
    return nb


def _without_checks(nb):
    """`nb` with its lm.check calls deleted (the first two) or replaced by a printed verdict."""
    nb = copy.deepcopy(nb)
    for n, key in enumerate(KEYS):
        cell = nb.cells[_cell_of(nb, key)]
        line = next(x for x in cell.source.splitlines() if x.startswith(f'lm.check("{key}"'))
        cell.source = cell.source.replace(line, "" if n < 2 else 'print("✅ passed")')
    assert not any("lm.check(" in c.source for c in nb.cells)
    return nb


def _write(folder, name, nb):
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / name)
    return folder / name


# --------------------------------------------------------------------------- one run of the command


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """`lmcourse grade` on a folder of submissions, strict checks on in the grader's environment."""
    folder = tmp_path_factory.mktemp("submissions")
    learner = _read(LEARNER)
    _write(folder, "solution.ipynb", _read(SOLUTION))
    _write(folder, f"{LESSON}.ipynb", learner)  # fresh, under its own name
    _write(folder, "alice.ipynb", _solve(learner, "softmax"))
    bob = _insert(_answer(learner, "perplexity", WRONG_PERPLEXITY), 0,
                  'raise RuntimeError("a cell that crashes")')
    _write(folder, "bob.ipynb", _insert(bob, "setup", KERNEL_ENV.format(
        caches=[os.environ.get(n) for n in grading.CACHE_VARIABLES])))
    tampered = _insert(_without_checks(_answer(learner, "perplexity", WRONG_PERPLEXITY)),
                       "setup", TAMPERING)
    _write(folder, "mallory.ipynb", tampered)
    (folder / "junk.ipynb").write_text("{ not json", encoding="utf-8")
    plain = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)")])
    _write(folder, "plain.ipynb", plain)
    _write(folder, "future.ipynb", nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell('import lmcourse as lm\ncfg = lm.setup("99_future")')]))
    out = tmp_path_factory.mktemp("grades")
    stdout = io.StringIO()
    start = time.monotonic()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdout):
        mp.setenv("LMCOURSE_STRICT_CHECKS", "1")  # the grader must switch both off in the kernels
        mp.setenv("LMCOURSE_MODE", "full")
        code = main(["grade", str(folder), "--root", str(ROOT), "--jobs", "2",
                     "--csv", str(out / "grades.csv"), "--json", str(out / "grades.json")])
    data = json.loads((out / "grades.json").read_text(encoding="utf-8"))
    with open(out / "grades.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    by_learner = {s["learner"]: s for s in data["submissions"]}
    return dict(code=code, stdout=stdout.getvalue(), data=data, rows=rows, by=by_learner,
                seconds=time.monotonic() - start)


def _statuses(sub):
    return {k: v["status"] for k, v in sub["verdicts"].items()}


def test_the_solution_passes_every_exercise(run):
    sol = run["by"]["solution"]
    assert sol["lesson"] == LESSON and sol["run"] == grading.OK
    assert _statuses(sol) == dict.fromkeys(KEYS, grading.PASSED)


def test_a_fresh_learner_notebook_is_not_done(run):
    fresh = run["by"][LESSON]
    assert fresh["run"] == grading.OK and fresh["notes"] == []  # its own name: not renamed
    assert _statuses(fresh) == dict.fromkeys(KEYS, grading.TODO)


def test_half_done_passes_exactly_the_exercise_done_and_renamed_is_reported(run):
    alice = run["by"]["alice"]
    assert _statuses(alice) == {k: grading.PASSED if k == "softmax" else grading.TODO for k in KEYS}
    assert alice["lesson"] == LESSON
    assert f"renamed: file name alice.ipynb, lesson {LESSON}" in alice["notes"]


def test_a_crash_is_reported_what_ran_is_graded_and_others_are_unaffected(run):
    bob = run["by"]["bob"]
    assert bob["run"] == grading.CRASHED
    assert any("cell 0: RuntimeError: a cell that crashes" in n for n in bob["notes"])
    # strict checks are off in the kernel (the wrong answer's lm.check did not raise), smoke mode
    # and private caches (KERNEL_ENV's asserts held)
    assert any(n.startswith("1 cell raised an error") for n in bob["notes"])
    assert _statuses(bob)["softmax"] == grading.TODO and _statuses(bob)["perplexity"] == grading.WRONG
    assert run["by"]["solution"]["run"] == grading.OK
    assert _statuses(run["by"]["solution"]) == dict.fromkeys(KEYS, grading.PASSED)


def test_a_wrong_answer_is_wrong_with_the_checker_s_hint(run):
    got = run["by"]["bob"]["verdicts"]["perplexity"]
    ns = {}
    exec(f"import torch\ndef perplexity(log_probs):\n    {WRONG_PERPLEXITY}", ns)
    want = registry.evaluate("perplexity", ns["perplexity"])
    assert got == {"status": grading.WRONG, "detail": want.hint, "message": want.message}
    assert want.hint and "❌" in want.message


def test_tampering_in_the_notebook_changes_no_grade(run):
    mallory = run["by"]["mallory"]
    # (later cells of the lesson fail: they use the library's perplexity, replaced by a wrong one)
    assert _statuses(mallory) == {k: grading.WRONG if k == "perplexity" else grading.TODO
                                  for k in KEYS}


def test_files_that_are_not_lessons_are_reported_without_a_kernel(run):
    by = run["by"]
    assert by["junk"]["run"] == grading.NOT_NOTEBOOK and "NotJSONError" in by["junk"]["notes"][0]
    assert by["plain"]["run"] == grading.NOT_COURSE and by["plain"]["verdicts"] == {}
    assert by["future"]["run"] == grading.UNKNOWN_LESSON and "99_future" in by["future"]["notes"][0]
    assert all(by[n]["seconds"] < 1 for n in ("junk", "plain", "future"))


def test_the_table_csv_and_json(run):
    assert run["code"] == 0  # grading ran, whatever the grades
    lines = run["stdout"].splitlines()
    assert lines[0] == f"{LESSON} ({len(KEYS)} exercises)"
    assert lines[1].split() == ["learner", "run", *KEYS, "passed"]
    row = next(x for x in lines if x.split()[:1] == ["alice"])
    assert row.split() == ["alice", "ok", "passed", *["not", "done"] * (len(KEYS) - 1), f"1/{len(KEYS)}"]
    assert any(x.strip().startswith("bob · perplexity: wrong: ") for x in lines)
    assert "not graded:" in lines and any("junk.ipynb: not a notebook" in x for x in lines)
    assert run["data"]["mode"] == "smoke" and len(run["data"]["submissions"]) == 8
    graded = [r for r in run["rows"] if r["exercise"]]
    assert len(graded) == 5 * len(KEYS) and len(run["rows"]) == len(graded) + 3
    assert {(r["learner"], r["exercise"]): r["verdict"] for r in graded}[("alice", "softmax")] == "passed"
    print(f"5 notebooks graded in {run['seconds']:.1f} s")


# --------------------------------------------------------------------------- time limits


def test_an_endless_cell_is_interrupted_and_one_ignoring_interrupts_is_killed(tmp_path):
    learner = _read(LEARNER)
    endless = _write(tmp_path, "endless.ipynb", _insert(learner, "setup", "while True:\n    pass"))
    stubborn = _write(tmp_path, "stubborn.ipynb", _insert(  # sleeps: leaves the CPU to the others
        learner, "setup", "import signal\nimport time\n\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                          "while True:\n    time.sleep(0.05)"))
    psutil = pytest.importorskip("psutil")
    start = time.monotonic()
    endless_g, stubborn_g = grading.grade([endless, stubborn], root=ROOT, cell_timeout=CELL_LIMIT,
                                          interrupt_grace=2, jobs=2)
    assert time.monotonic() - start < CELL_LIMIT + 2 + 40
    assert endless_g.run == grading.TIMED_OUT
    assert any(f"ran past {CELL_LIMIT} s and was interrupted" in n for n in endless_g.notes), endless_g.notes
    # the run went on after the interrupt: every exercise was still checked
    assert ({k: v.status for k, v in endless_g.verdicts.items()} == dict.fromkeys(KEYS, grading.TODO)), \
        (endless_g.notes, endless_g.verdicts)
    assert stubborn_g.run == grading.TIMED_OUT
    assert any("did not stop when interrupted" in n for n in stubborn_g.notes), stubborn_g.notes
    assert {v.status for v in stubborn_g.verdicts.values()} == {grading.NOT_RUN}
    kernels = [c for c in psutil.Process().children(recursive=True)
               if "ipykernel" in " ".join(c.cmdline())]
    assert kernels == []  # every kernel was shut down, the killed one and the other


def test_the_limit_for_the_whole_notebook_stops_the_run(tmp_path):
    nb = _insert(_read(LEARNER), "setup", "import time\n\nwhile True:\n    time.sleep(0.05)")
    path = _write(tmp_path, "slow.ipynb", nb)
    start = time.monotonic()
    (g,) = grading.grade([path], root=ROOT, timeout=NOTEBOOK_LIMIT, cell_timeout=100,
                         interrupt_grace=2)
    assert time.monotonic() - start < NOTEBOOK_LIMIT + 40
    assert g.run == grading.TIMED_OUT
    assert any("--timeout" in n for n in g.notes), g.notes
    # the exercises' cells never ran, so their functions do not exist; the grader still checked
    assert {v.status for v in g.verdicts.values()} == {grading.MISSING}, (g.notes, g.verdicts)


# --------------------------------------------------------------------------- without a kernel


def test_every_solution_names_its_exercises_and_functions():
    lessons = grading._lessons(ROOT)
    for solution in sorted((ROOT / "solutions").glob("*.ipynb")):
        pairs = grading.lesson_exercises(solution)
        assert [k for k, _ in pairs] == nbs.exercise_keys(solution), solution.name
        info = lessons[solution.stem]
        assert info.exercises == tuple(pairs) and info.modules, info  # where the kernel finds them
        assert all((ROOT / "lmcourse" / "exercises" / f"{m}.py").is_file() for m in info.modules)
        code = "\n".join(c.source for c in _read(solution).cells if c.cell_type == "code")
        for key, name in pairs:
            assert code.count(f"def {name}(") == 1, f"{solution.name}: {key} checks {name}"
            assert registry.get(key).lesson == solution.stem


def test_a_check_call_the_grader_cannot_read_is_explained(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('lm.check(KEY, softmax)')])
    nbformat.write(nb, tmp_path / "x.ipynb")
    with pytest.raises(grading.GradingError, match="write both out literally"):
        grading.lesson_exercises(tmp_path / "x.ipynb")


def test_the_lesson_comes_from_the_content():
    nb = _read(LEARNER)
    assert grading.identify_lesson(nb) == (LESSON, "")
    nb.cells = [c for c in nb.cells if "lm.setup(" not in c.source]  # the metadata is enough
    assert grading.identify_lesson(nb) == (LESSON, "")
    nb.metadata["lmcourse"]["generated_from"] = "notebooks/02_gradients.ipynb"
    nb.cells.append(nbformat.v4.new_code_cell('cfg = lm.setup("01_lm_math")'))
    lesson, note = grading.identify_lesson(nb)
    assert lesson == LESSON and "02_gradients" in note
    assert grading.identify_lesson(nbformat.v4.new_notebook()) == (None, "")


def test_only_the_verdict_file_with_the_run_s_nonce_counts(tmp_path):
    path = tmp_path / "verdicts.json"
    verdicts = {"softmax": {"status": "passed"}, "perplexity": {"status": "excellent"}}
    path.write_text(json.dumps({"nonce": "abc", "verdicts": verdicts}))
    got = grading._read_verdicts(path, "abc", ["softmax", "perplexity", "gelu"], "")
    assert got["softmax"].status == grading.PASSED
    assert got["perplexity"].status == grading.ERROR  # not a verdict the grader gives
    assert got["gelu"] == grading.Verdict(grading.ERROR, "not checked: the checks did not finish")
    forged = grading._read_verdicts(path, "another run", ["softmax"], "")
    assert forged["softmax"].status == grading.ERROR and "nonce" in forged["softmax"].detail
    gone = grading._read_verdicts(tmp_path / "none.json", "abc", ["softmax"], "the kernel died")
    assert gone["softmax"] == grading.Verdict(grading.ERROR, "not checked: the kernel died")


def test_the_table_lines_up_whatever_each_submission_has():
    V = grading.Verdict
    a = grading.Graded("a.ipynb", "a", LESSON, verdicts={"softmax": V(grading.PASSED),
                                                         "perplexity": V(grading.WRONG, "a hint")})
    b = grading.Graded("b.ipynb", "b", LESSON, run=grading.CRASHED, notes=["cell 0: boom"],
                       verdicts={"softmax": V(grading.TODO)})
    c = grading.Graded("c.txt", "c", run=grading.NOT_NOTEBOOK, notes=["NotJSONError: x"])
    lines = grading.format_table([a, b, c]).splitlines()
    assert lines[:4] == [f"{LESSON} (2 exercises)",
                         "  learner  run      softmax   perplexity  passed",
                         "  a        ok       passed    wrong       1/2",
                         "  b        crashed  not done  -           0/2"]
    assert "    a · perplexity: wrong: a hint" in lines and "    b: cell 0: boom" in lines
    assert lines[-2:] == ["not graded:", "  c.txt: not a notebook: NotJSONError: x"]


def test_the_kernel_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LMCOURSE_STRICT_CHECKS", "1")
    monkeypatch.setenv("LMCOURSE_MODE", "full")
    env = grading.kernel_env("smoke", tmp_path)
    assert "LMCOURSE_STRICT_CHECKS" not in env and env["LMCOURSE_MODE"] == "smoke"
    for name in grading.CACHE_VARIABLES:
        assert env[name].startswith(str(tmp_path)) and env[name] != os.environ.get(name)
        assert os.path.isdir(env[name])
    assert len({env[n] for n in grading.CACHE_VARIABLES}) == len(grading.CACHE_VARIABLES)


@pytest.mark.parametrize("kwargs, msg", [
    (dict(mode="fast"), "Unknown mode"), (dict(jobs=0), "--jobs"), (dict(timeout=0), "positive"),
])
def test_bad_requests_are_explained(tmp_path, kwargs, msg):
    with pytest.raises(grading.GradingError, match=msg):
        grading.grade([LEARNER], root=ROOT, **kwargs)


def test_no_notebooks_is_explained(tmp_path):
    with pytest.raises(grading.GradingError, match="No notebooks to grade"):
        grading.grade([tmp_path], root=ROOT)
