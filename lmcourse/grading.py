"""Grading learners' notebooks (`lmcourse grade`): run each one, then check its exercises with a
copy of the checker the notebook never saw.

    lmcourse grade submissions/                          # every notebook in the folder, smoke mode
    lmcourse grade hw/*.ipynb --csv grades.csv --json grades.json --jobs 2

How a submission is graded:

1. **Which lesson** comes from its content: its `lm.setup("NN_name")` call, else the
   `metadata.lmcourse.generated_from` that `lmcourse sync` writes; never its file name. A renamed
   file is graded, and reported as renamed. A file that is not a notebook, or not one of the
   course's, is reported as such.
2. **Which function each exercise checks** comes from the lesson's solution notebook (its
   `lm.check("key", name)` calls), not from the submission: deleting or editing the notebook's
   own `lm.check` calls changes nothing.
3. **The run**: the notebook runs in a fresh kernel of this Python (nbclient), in a folder of its
   own, with $LMCOURSE_MODE set (smoke by default), $LMCOURSE_STRICT_CHECKS off (a wrong answer
   must not stop the run) and private cache folders ($LMCOURSE_CACHE, $HF_HOME,
   $HF_DATASETS_CACHE), all deleted afterwards, so graders running side by side share no files.
   A cell that raises does not stop the run. A cell past its limit (--cell-timeout, or what is
   left of --timeout for the whole notebook) is interrupted and the run goes on; a kernel that
   does not stop when interrupted is killed. The kernel is always shut down.
4. **The grade**: the grader then runs code of its own in that kernel (`lmcourse._grade_kernel`).
   It imports a fresh copy of the `lmcourse` package from a copy of the package's files that the
   grader read before any notebook ran and wrote to a new folder after the notebook's cells had
   run; import hooks the notebook installed are bypassed. So replacing `lm.check`,
   `lmcourse.checker.evaluate`, an exercise's reference or cases, or a library function (say
   `lm.lm_math.softmax`) in the notebook changes nothing. It looks each exercise's function up by
   name in the notebook's namespace, checks it, and writes the verdicts to a file with a random
   name, tagged with a random nonce of this run. Printed output is never read: printing
   "✅ passed" changes nothing.

Verdicts: passed; wrong (with the checker's hint); not done (still raises NotImplementedError);
missing (no function of that name); error (the check itself failed, or took too long); not run
(the kernel died or was killed before the checks).

What it does **not** defend against. The checks run in the learner's process, after the learner's
code, with the learner's objects; a notebook written to cheat can still:

- change what the checking relies on outside `lmcourse`: torch (e.g. make `torch.allclose`
  always true, or rewrite tensors' comparison), numpy, Python's builtins and standard library
  (`json`, `copy`, `open`), or the import machinery itself (`importlib`'s file loaders);
- leave a thread or a subprocess running that rewrites the verdict file, or the fresh copy of the
  package, while the checks run;
- return right answers without doing the exercise: a function that calls the course's own
  implementation (`lm.lm_math.softmax`) passes. A grade says the function works, not who wrote it.

And the notebooks run with your rights on your machine: grade work you do not trust in a
container or a virtual machine without your credentials (and without network, offline data).
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import logging
import math
import os
import re
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat

from lmcourse.build import CACHE_VARIABLES, kernel_manager_class, private_caches  # noqa: F401
from lmcourse.config import ENV_MODE, ENV_STRICT, MODES

# verdicts of one exercise
PASSED, WRONG, TODO, MISSING, ERROR, NOT_RUN = "passed", "wrong", "not done", "missing", "error", "not run"
VERDICTS = (PASSED, WRONG, TODO, MISSING, ERROR, NOT_RUN)
# how the run of a submission went
OK, CRASHED, TIMED_OUT, DIED = "ok", "crashed", "timed out", "kernel died"
NOT_NOTEBOOK, NOT_COURSE, UNKNOWN_LESSON, GRADER_FAILED = (
    "not a notebook", "not a course notebook", "unknown lesson", "grader error")

DEFAULT_MODE = "smoke"
DEFAULT_TIMEOUT = 900.0        # seconds for all the cells of one notebook
DEFAULT_CELL_TIMEOUT = 300.0   # seconds for one cell
DEFAULT_CHECK_TIMEOUT = 60.0   # seconds for checking one exercise
INTERRUPT_GRACE = 10.0         # seconds an interrupted cell gets to stop before the kernel is killed
KERNEL_CODE = "_grade_kernel.py"  # the grader's code run in the kernel, a file of this package

# nbclient's own log lines (timeouts, interrupts): the grades' notes say the same, per notebook
_QUIET = logging.getLogger("lmcourse.grading.nbclient")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False

_SETUP_CALL = re.compile(r"""\b(?:lm|lmcourse)\.setup\(\s*["']([\w.-]+)["']""")


class GradingError(ValueError):
    """A grading request that cannot run; the message says how to fix it."""


@dataclass
class Verdict:
    """How one exercise of one submission fared."""

    status: str                # passed | wrong | not done | missing | error | not run
    detail: str = ""           # wrong: the checker's hint; missing, error, not run: why
    message: str = ""          # the checker's whole message, as lm.check prints it


@dataclass
class Graded:
    """The grading of one submitted notebook."""

    path: str                  # the file as given
    learner: str               # its name in the table (the file name without .ipynb)
    lesson: str | None = None  # None: not graded (see `run` and `notes`)
    run: str = OK              # ok | crashed | timed out | kernel died | not a notebook | ...
    notes: list[str] = field(default_factory=list)
    verdicts: dict[str, Verdict] = field(default_factory=dict)  # exercise key -> verdict
    seconds: float = 0.0

    @property
    def n_passed(self) -> int:
        return sum(v.status == PASSED for v in self.verdicts.values())

    def to_dict(self) -> dict[str, Any]:
        """The grading as plain data (what --json writes)."""
        return {"path": self.path, "learner": self.learner, "lesson": self.lesson,
                "run": self.run, "notes": list(self.notes), "seconds": self.seconds,
                "passed": self.n_passed, "exercises": len(self.verdicts),
                "verdicts": {k: {"status": v.status, "detail": v.detail, "message": v.message}
                             for k, v in self.verdicts.items()}}


@dataclass(frozen=True)
class LessonExercises:
    """What the grader checks in a lesson: each exercise's key and the function it checks."""

    lesson: str                            # e.g. "01_lm_math"
    modules: tuple[str, ...]               # the lmcourse.exercises modules registering them
    exercises: tuple[tuple[str, str], ...]  # (key, function name), in the lesson's order


# --------------------------------------------------------------------------- reading notebooks


def _python(source: str) -> str:
    """A cell's source with IPython's magics and shell escapes (%..., !...) blanked out."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line
                     for line in source.split("\n"))


def _is_check_call(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "check" and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "lm")


def lesson_exercises(solution: str | Path) -> list[tuple[str, str]]:
    """The (exercise key, function name) pairs a solution notebook checks with `lm.check("key", name)`, in order."""
    nb = nbformat.read(solution, as_version=4)
    pairs: list[tuple[str, str]] = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(_python(cell.source))
        except SyntaxError as e:
            raise GradingError(f"{solution}, cell {i}: not valid Python ({e.msg}, line {e.lineno}); "
                               "fix the solution notebook.") from None
        calls = sorted((n for n in ast.walk(tree) if _is_check_call(n)),
                       key=lambda n: (n.lineno, n.col_offset))
        for call in calls:
            args = call.args
            if (len(args) != 2 or call.keywords or not isinstance(args[0], ast.Constant)
                    or not isinstance(args[0].value, str) or not isinstance(args[1], ast.Name)):
                raise GradingError(
                    f"{solution}, cell {i}: `{ast.unparse(call)}` is not of the form "
                    "lm.check(\"key\", function_name); the grader reads the key and the function's "
                    "name from the solution, so write both out literally.")
            pairs.append((args[0].value, args[1].id))
    return pairs


def identify_lesson(nb: nbformat.NotebookNode) -> tuple[str | None, str]:
    """The lesson a notebook is (its `lm.setup("NN_name")` call, else its lmcourse metadata), and a
    note when the two disagree."""
    called = None
    for cell in nb.cells:
        if cell.cell_type == "code":
            m = _SETUP_CALL.search(cell.source)
            if m:
                called = m.group(1)
                break
    meta = nb.metadata.get("lmcourse", {})
    origin = meta.get("generated_from") if isinstance(meta, dict) else None
    generated = Path(origin).stem if isinstance(origin, str) and origin else None
    if called and generated and called != generated:
        return called, (f"lm.setup names {called} but the notebook was generated from {origin}; "
                        f"graded as {called}")
    return called or generated, ""


# --------------------------------------------------------------------------- running notebooks


def kernel_env(mode: str, folder: Path) -> dict[str, str]:
    """The graded kernel's environment: this one, with `mode`, strict checks off and private caches under `folder`."""
    env = dict(os.environ)
    env.pop(ENV_STRICT, None)
    env[ENV_MODE] = mode
    for name, path in private_caches(folder).items():  # the same layout lmcourse build uses
        Path(path).mkdir(parents=True, exist_ok=True)
        env[name] = path
    return env


def _package_snapshot() -> dict[str, bytes]:
    """Every file of the lmcourse package (no caches), read now: what the kernel's fresh copy is made of."""
    top = Path(__file__).resolve().parent
    files: dict[str, bytes] = {}
    for path in sorted(top.rglob("*")):
        rel = path.relative_to(top)
        if path.is_file() and "__pycache__" not in rel.parts and path.suffix != ".pyc":
            files[rel.as_posix()] = path.read_bytes()
    if KERNEL_CODE not in files:
        raise GradingError(f"{top / KERNEL_CODE} is missing; reinstall the course (pip install -e .).")
    return files


@dataclass
class _Settings:
    mode: str
    timeout: float
    cell_timeout: float
    check_timeout: float
    interrupt_grace: float
    snapshot: dict[str, bytes]
    lessons: dict[str, LessonExercises | str]  # lesson -> what it checks, or why unknown


def _kill(client: Any) -> None:
    """Kill the client's kernel process at once (it ignored an interrupt)."""
    process = getattr(getattr(client.km, "provisioner", None), "process", None)
    if process is not None:
        try:
            process.kill()
        except OSError:  # gone already
            pass


def _execute(client: Any, cell: nbformat.NotebookNode, index: int, limit: int, grace: float) -> str:
    """Run one cell with nbclient's interrupt at `limit` s and a kill `grace` s later: "ok",
    "timed out" (interrupted), "killed" (did not stop) or "died"."""
    from nbclient.exceptions import DeadKernelError

    client.timeout = limit
    killed = threading.Event()

    def kill() -> None:
        killed.set()
        _kill(client)

    timer = threading.Timer(limit + grace, kill)
    timer.daemon = True
    start = time.monotonic()
    timer.start()
    try:
        client.execute_cell(cell, index)
    except DeadKernelError:
        return "killed" if killed.is_set() else "died"
    finally:
        timer.cancel()
    return "timed out" if time.monotonic() - start >= limit else "ok"


def _first_error(cell: nbformat.NotebookNode) -> str:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            value = str(out.get("evalue", "")).strip().splitlines()
            return f"{out.get('ename', 'Error')}: {value[0][:200] if value else ''}".rstrip(": ")
    return ""


def _run_cells(client: Any, nb: nbformat.NotebookNode, g: Graded, s: _Settings) -> bool:
    """Run the notebook's code cells, noting errors and timeouts in `g`; False when the kernel is gone."""
    deadline = time.monotonic() + s.timeout
    errors: list[str] = []
    for index, cell in enumerate(list(nb.cells)):
        if cell.cell_type != "code" or not cell.source.strip():
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            g.run = TIMED_OUT
            g.notes.append(f"stopped before cell {index}: the notebook ran past its {s.timeout:g} s "
                           "(--timeout)")
            return True
        limit = max(1, math.ceil(min(s.cell_timeout, left)))
        outcome = _execute(client, cell, index, limit, s.interrupt_grace)
        if outcome in ("killed", "died"):
            if outcome == "killed":
                g.run = TIMED_OUT
                g.notes.append(f"cell {index} ran past {limit} s and did not stop when interrupted: "
                               "the kernel was killed, so nothing was checked")
            else:
                g.run = DIED
                g.notes.append(f"the kernel died in cell {index} (out of memory, or the code ended "
                               "the process), so nothing was checked")
            return False
        if outcome == "timed out":
            g.run = TIMED_OUT
            g.notes.append(f"cell {index} ran past {limit} s and was interrupted "
                           f"(--cell-timeout {s.cell_timeout:g}, --timeout {s.timeout:g})")
        elif _first_error(cell):
            errors.append(f"cell {index}: {_first_error(cell)}")
    if errors:
        if g.run == OK:
            g.run = CRASHED
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        g.notes.append(f"{len(errors)} cell{'s' if len(errors) > 1 else ''} raised an error; "
                       f"{errors[0]}{more}")
    return True


def _read_verdicts(path: Path, nonce: str, keys: list[str], why_not: str) -> dict[str, Verdict]:
    """The verdicts the grader's code wrote to `path`, checked against the run's nonce."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {k: Verdict(ERROR, f"not checked: {why_not or 'the checks wrote no verdicts'}")
                for k in keys}
    if not isinstance(data, dict) or data.get("nonce") != nonce:
        return {k: Verdict(ERROR, "not checked: the verdict file was not the grader's (nonce)")
                for k in keys}
    found = data.get("verdicts") if isinstance(data.get("verdicts"), dict) else {}
    out: dict[str, Verdict] = {}
    for k in keys:
        v = found.get(k)
        if isinstance(v, dict) and v.get("status") in VERDICTS:
            out[k] = Verdict(str(v["status"]), str(v.get("detail", "")), str(v.get("message", "")))
        else:
            out[k] = Verdict(ERROR, f"not checked: {why_not or 'the checks did not finish'}")
    return out


def _check_in_kernel(client: Any, nb: nbformat.NotebookNode, g: Graded, info: LessonExercises,
                     s: _Settings) -> None:
    """Run the grader's code in the kernel and put its verdicts into `g`."""
    folder = Path(tempfile.mkdtemp(prefix="lmcourse-check-"))  # made now: the notebook ran already
    try:
        package = folder / "package" / "lmcourse"
        for rel, data in s.snapshot.items():
            (package / rel).parent.mkdir(parents=True, exist_ok=True)
            (package / rel).write_bytes(data)
        nonce = secrets.token_hex(16)
        out = folder / f"verdicts-{secrets.token_hex(8)}.json"
        params = {"nonce": nonce, "out": str(out), "package_parent": str(folder / "package"),
                  "modules": list(info.modules), "exercises": [list(e) for e in info.exercises],
                  "check_timeout": s.check_timeout}
        code = (s.snapshot[KERNEL_CODE].decode("utf-8")
                + f"\nlmcourse_grade_in_kernel({json.dumps(params)!r}, globals())\n")
        cell = nbformat.v4.new_code_cell(code)
        nb.cells.append(cell)
        limit = math.ceil(s.check_timeout * len(info.exercises) + 60)
        outcome = _execute(client, cell, len(nb.cells) - 1, limit, s.interrupt_grace)
        why_not = {"ok": _first_error(cell), "timed out": f"the checks ran past {limit} s",
                   "killed": f"the checks ran past {limit} s", "died": "the kernel died"}[outcome]
        g.verdicts = _read_verdicts(out, nonce, list(g.verdicts), why_not)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run_and_check(g: Graded, nb: nbformat.NotebookNode, info: LessonExercises, s: _Settings) -> None:
    """Run the notebook in a fresh kernel, then check its exercises there; the kernel is always shut down."""
    from nbclient import NotebookClient

    folder = Path(tempfile.mkdtemp(prefix="lmcourse-grade-"))
    try:
        work = folder / "work"
        work.mkdir()
        env = kernel_env(s.mode, folder / "caches")
        client = NotebookClient(
            nb, kernel_name="python3", kernel_manager_class=kernel_manager_class(),
            allow_errors=True, interrupt_on_timeout=True, shutdown_kernel="immediate",
            startup_timeout=120, record_timing=False, log=_QUIET,
            resources={"metadata": {"path": str(work)}})
        started = False
        with open(folder / "kernel.log", "wb") as log:
            try:
                with client.setup_kernel(env=env, stdout=log, stderr=log):
                    started = True
                    if _run_cells(client, nb, g, s):
                        _check_in_kernel(client, nb, g, info, s)
            except Exception as e:
                if started:
                    raise
                g.run = DIED
                g.notes.append(f"the kernel did not start: {type(e).__name__}: {e}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _grade_file(path: Path, g: Graded, s: _Settings) -> None:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        g.run = NOT_NOTEBOOK
        g.notes.append(f"cannot read it: {e}")
        return
    try:
        nb = nbformat.reads(text, as_version=4)
    except Exception as e:  # not JSON, or JSON that is not a notebook
        g.run = NOT_NOTEBOOK
        first = str(e).strip().splitlines()
        g.notes.append(f"{type(e).__name__}: {first[0][:200] if first else 'unreadable'}")
        return
    lesson, note = identify_lesson(nb)
    if lesson is None:
        g.run = NOT_COURSE
        g.notes.append('no lm.setup("NN_name") call and no lmcourse metadata: not a lesson of this course')
        return
    info = s.lessons.get(lesson)
    if info is None:
        g.run = UNKNOWN_LESSON
        g.notes.append(f"lesson {lesson!r} has no solution notebook (solutions/{lesson}.ipynb) in this "
                       "course")
        return
    if isinstance(info, str):
        g.run = GRADER_FAILED
        g.notes.append(f"the solution of lesson {lesson} cannot be used for grading: {info}")
        return
    g.lesson = lesson
    if path.stem != lesson:
        g.notes.append(f"renamed: file name {path.name}, lesson {lesson}")
    if note:
        g.notes.append(note)
    g.verdicts = {key: Verdict(NOT_RUN, "the notebook's kernel stopped before the checks")
                  for key, _ in info.exercises}
    _run_and_check(g, nb, info, s)


def _labels(paths: list[Path]) -> list[str]:
    """Each submission's name in the table: the file name without .ipynb, the path where two clash."""
    stems = [p.stem for p in paths]
    return [p.stem if stems.count(p.stem) == 1 else str(p.with_suffix("")) for p in paths]


def _expand(paths: Iterable[str | Path]) -> list[Path]:
    """The notebooks to grade: files as given, folders' *.ipynb (checkpoints skipped)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.rglob("*.ipynb") if ".ipynb_checkpoints" not in q.parts)
        else:
            out.append(p)
    return out


def _lessons(root: Path) -> dict[str, LessonExercises | str]:
    """What each lesson of the course at `root` checks, from its solution notebook (or why that
    notebook cannot say: its submissions are then not graded, the other lessons' are)."""
    from lmcourse.exercises import exercises

    registry = exercises()
    lessons: dict[str, LessonExercises | str] = {}
    for solution in sorted((root / "solutions").glob("*.ipynb")):
        try:
            pairs = lesson_exercises(solution)
        except Exception as e:  # a broken solution notebook: its lesson only
            lessons[solution.stem] = f"{type(e).__name__}: {e}"
            continue
        unknown = [k for k, _ in pairs if k not in registry]
        if unknown:
            lessons[solution.stem] = (f"{solution} checks {unknown}, which no lmcourse/exercises "
                                      "module registers; register them or fix the keys")
            continue
        modules = sorted({_module_of(registry[k]) for k, _ in pairs} - {""})
        lessons[solution.stem] = LessonExercises(solution.stem, tuple(modules), tuple(pairs))
    return lessons


def _module_of(exercise: Any) -> str:
    """The lmcourse.exercises module that registers `exercise` (e.g. "lesson01"): where most of its
    functions (cases, mistakes, diagnosers, properties) are defined; "" when none is."""
    from collections import Counter

    fns = [exercise.cases, exercise.call, *(m.fn for m in exercise.mistakes),
           *exercise.diagnosers, *(p.check for p in exercise.properties)]
    prefix = "lmcourse.exercises."
    found = Counter(m[len(prefix):] for f in fns
                    if isinstance(m := getattr(f, "__module__", None), str) and m.startswith(prefix))
    return found.most_common(1)[0][0] if found else ""


def course_root(start: Path | None = None) -> Path:
    """The course folder (with solutions/ and pyproject.toml): at or above `start` (default: the
    current folder), else the one this package was installed from."""
    start = (start or Path.cwd()).resolve()
    for p in [start, *start.parents, Path(__file__).resolve().parent.parent]:
        if (p / "solutions").is_dir() and (p / "pyproject.toml").is_file():
            return p
    raise GradingError(f"No course folder (with solutions/ and pyproject.toml) at or above {start} "
                       "or where lmcourse is installed from; pass the course folder as --root.")


def grade(submissions: Iterable[str | Path], root: str | Path | None = None,
          mode: str = DEFAULT_MODE, timeout: float = DEFAULT_TIMEOUT,
          cell_timeout: float = DEFAULT_CELL_TIMEOUT, check_timeout: float = DEFAULT_CHECK_TIMEOUT,
          jobs: int = 1, interrupt_grace: float = INTERRUPT_GRACE,
          progress: Callable[[Graded], None] | None = None) -> list[Graded]:
    """Grade each submitted notebook (or folder of notebooks), each in a fresh kernel, `jobs` at a time."""
    if mode not in MODES:
        raise GradingError(f"Unknown mode {mode!r}; use one of {', '.join(MODES)}.")
    if jobs < 1:
        raise GradingError(f"--jobs must be 1 or more, got {jobs}.")
    if min(timeout, cell_timeout, check_timeout) <= 0:
        raise GradingError("--timeout, --cell-timeout and --check-timeout must be positive seconds.")
    paths = _expand(submissions)
    if not paths:
        raise GradingError("No notebooks to grade: pass notebook files or folders holding *.ipynb.")
    root = Path(root) if root is not None else course_root()
    if not (root / "solutions").is_dir():
        raise GradingError(f"{root} has no solutions/ folder; pass the course folder as --root.")
    settings = _Settings(mode, timeout, cell_timeout, check_timeout, interrupt_grace,
                         _package_snapshot(), _lessons(root))
    lock = threading.Lock()

    def one(path: Path, label: str) -> Graded:
        g = Graded(path=str(path), learner=label)
        start = time.monotonic()
        try:
            _grade_file(path, g, settings)
        except Exception as e:  # a bug or a broken environment: this notebook only
            g.run = GRADER_FAILED
            g.notes.append(f"{type(e).__name__}: {e}")
        g.seconds = round(time.monotonic() - start, 1)
        if progress is not None:
            with lock:
                progress(g)
        return g

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, paths, _labels(paths)))


# --------------------------------------------------------------------------- reports


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def format_table(results: list[Graded]) -> str:
    """The grades as text: a table per lesson (a row per learner, a column per exercise), then the
    notes and hints, then the files that could not be graded."""
    lines: list[str] = []
    for lesson in sorted({g.lesson for g in results if g.lesson}):
        graded = [g for g in results if g.lesson == lesson]
        keys = list(dict.fromkeys(k for g in graded for k in g.verdicts))
        lines.append(f"{lesson} ({len(keys)} exercise{'' if len(keys) == 1 else 's'})")
        rows = [["learner", "run", *keys, "passed"]]
        rows += [[g.learner, g.run, *(g.verdicts[k].status if k in g.verdicts else "-" for k in keys),
                  f"{g.n_passed}/{len(keys)}"] for g in graded]
        lines += ["  " + line for line in _table(rows)]
        details = []
        for g in graded:
            details += [f"{g.learner}: {note}" for note in g.notes]
            details += [f"{g.learner} · {k}: {v.status}: {v.detail}" for k, v in g.verdicts.items()
                        if v.detail and v.status in (WRONG, ERROR, MISSING)]
        if details:
            lines.append("  notes:")
            lines += [f"    {d}" for d in details]
        lines.append("")
    ungraded = [g for g in results if not g.lesson]
    if ungraded:
        lines.append("not graded:")
        lines += [f"  {g.path}: {g.run}: {'; '.join(g.notes)}" for g in ungraded]
    return "\n".join(lines).rstrip()


CSV_COLUMNS = ("learner", "path", "lesson", "run", "exercise", "verdict", "detail", "notes")


def write_csv(results: list[Graded], path: str | Path) -> None:
    """One row per learner and exercise (one row with no exercise for a notebook not graded)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for g in results:
            base = [g.learner, g.path, g.lesson or "", g.run]
            notes = "; ".join(g.notes)
            if not g.verdicts:
                w.writerow([*base, "", "", "", notes])
            for key, v in g.verdicts.items():
                w.writerow([*base, key, v.status, v.detail, notes])


def write_json(results: list[Graded], path: str | Path, mode: str = DEFAULT_MODE) -> None:
    """The whole grading, one entry per submission."""
    data = {"mode": mode, "submissions": [g.to_dict() for g in results]}
    Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- the command


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The `grade` subcommand's options."""
    gr = sub.add_parser(
        "grade", help="run learners' notebooks and grade their exercises",
        description="Run each submitted notebook in a fresh kernel (smoke mode by default, private "
                    "caches, strict checks off), then check its exercises with a fresh copy of the "
                    "course's checker; print a table (a row per learner, a column per exercise). "
                    "The notebooks run with your rights: grade untrusted work in a container.")
    gr.add_argument("submissions", nargs="+", type=Path,
                    help="notebooks, or folders whose *.ipynb are graded")
    gr.add_argument("--mode", choices=MODES, default=DEFAULT_MODE,
                    help=f"$LMCOURSE_MODE in the graded kernels (default {DEFAULT_MODE})")
    gr.add_argument("--csv", type=Path, default=None, metavar="FILE",
                    help="also write one row per learner and exercise to FILE")
    gr.add_argument("--json", type=Path, default=None, metavar="FILE",
                    help="also write the whole grading to FILE")
    gr.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S",
                    help=f"seconds for all the cells of one notebook (default {DEFAULT_TIMEOUT:g})")
    gr.add_argument("--cell-timeout", type=float, default=DEFAULT_CELL_TIMEOUT, metavar="S",
                    help=f"seconds for one cell before it is interrupted (default {DEFAULT_CELL_TIMEOUT:g})")
    gr.add_argument("--check-timeout", type=float, default=DEFAULT_CHECK_TIMEOUT, metavar="S",
                    help=f"seconds for checking one exercise (default {DEFAULT_CHECK_TIMEOUT:g})")
    gr.add_argument("--jobs", type=int, default=1, help="notebooks graded at a time (default 1)")
    gr.add_argument("--root", type=Path, default=None,
                    help="the course folder with solutions/ (default: found upward, else the installed one)")


def main(args: argparse.Namespace) -> int:
    """Run `lmcourse grade`: 0 when grading ran (whatever the grades), 1 when it could not."""

    def say(g: Graded) -> None:
        score = f", {g.n_passed}/{len(g.verdicts)} passed" if g.verdicts else ""
        print(f"graded {g.path}: {g.run}{score} ({g.seconds:.1f} s)", file=sys.stderr)

    try:
        results = grade(args.submissions, root=args.root, mode=args.mode, timeout=args.timeout,
                        cell_timeout=args.cell_timeout, check_timeout=args.check_timeout,
                        jobs=args.jobs, progress=say)
    except GradingError as e:
        print(f"lmcourse grade: error: {e}", file=sys.stderr)
        return 1
    print(format_table(results))
    if args.csv is not None:
        write_csv(results, args.csv)
    if args.json is not None:
        write_json(results, args.json, args.mode)
    return 0
