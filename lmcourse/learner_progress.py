"""Your progress through the course: which exercises you have passed, kept in a small JSON file.

`lm.check` records each pass in `progress.json` in the course cache ($LMCOURSE_CACHE, default
~/.cache/lmcourse); `lm.progress()` (or `lmcourse progress`) lists every exercise of the course,
lesson by lesson, with the ones you passed marked. An exercise stays passed once it has passed.

The file is a convenience, never a requirement: when it cannot be read or written (corrupt,
read-only folder, full disk), checks work exactly as before and the pass is not recorded (one
line says so, once per process). It is written atomically (a temporary file, then a rename), so an
interrupted write never leaves half a file; a corrupt file is replaced by the next pass. Two
kernels passing exercises at the same instant may lose one of the two records (no lock).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmcourse.config import ENV_CACHE, cache_dir

FILE_NAME = "progress.json"
VERSION = 1
PASS_MARK, TODO_MARK = "✅", "⬜"
LINE_WIDTH = 100
_said: set[str] = set()  # files whose write failed, said once per process


def progress_file() -> Path:
    """Where passes are recorded: progress.json in the course cache ($LMCOURSE_CACHE)."""
    return cache_dir() / FILE_NAME


def read_passes(path: str | Path | None = None) -> tuple[dict[str, dict[str, Any]], str]:
    """The recorded passes ({key: {"lesson", "first", "last"}}) and why the file could not be
    used ('' when it was read, or does not exist yet)."""
    path = Path(path) if path is not None else progress_file()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}, ""
    except (OSError, UnicodeDecodeError) as e:
        return {}, f"cannot read {path} ({e})"
    try:
        passed = json.loads(text)["passed"]
        if not isinstance(passed, dict):
            raise TypeError("'passed' is not a mapping")
    except (ValueError, KeyError, TypeError) as e:
        return {}, (f"{path} is not a progress file the course can read ({type(e).__name__}); "
                    "the next exercise you pass replaces it")
    return {k: v for k, v in passed.items() if isinstance(v, dict)}, ""


def _write(path: Path, data: dict[str, Any]) -> None:
    """Write `data` as JSON to `path` atomically: a temporary file in the same folder, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True, ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def record_pass(key: str, lesson: str, path: str | Path | None = None) -> bool:
    """Record that exercise `key` of `lesson` passed now; False (never an error) when it could not be saved."""
    try:
        path = Path(path) if path is not None else progress_file()
        passed, _ = read_passes(path)
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        first = passed.get(key, {}).get("first", now)
        passed[key] = {"lesson": lesson, "first": first, "last": now}
        _write(path, {"version": VERSION, "passed": passed})
        return True
    except Exception as e:  # the file is a convenience: a check never fails because of it
        where = str(path)
        if where not in _said:
            _said.add(where)
            print(f"(progress not recorded: cannot write {where}: {e}; set {ENV_CACHE} to a "
                  "writable folder to keep it)")
        return False


@dataclass
class LessonProgress:
    """One lesson's exercises, in course order, and the ones passed."""

    lesson: str
    exercises: list[str]
    passed: list[str]


@dataclass
class Progress:
    """Every exercise of the course, lesson by lesson, with the ones passed; printed by `progress()`."""

    lessons: list[LessonProgress]
    path: Path
    problem: str = ""              # why the file could not be read ('' when it could)
    recorded: dict[str, dict[str, Any]] = field(default_factory=dict)  # the file's entries

    @property
    def n_passed(self) -> int:
        return sum(len(lp.passed) for lp in self.lessons)

    @property
    def n_exercises(self) -> int:
        return sum(len(lp.exercises) for lp in self.lessons)

    def __str__(self) -> str:
        lines = [f"Exercises passed: {self.n_passed} of {self.n_exercises} (recorded in {self.path})"]
        if self.problem:
            lines.append(f"(nothing shown as passed: {self.problem})")
        width = max((len(lp.lesson) for lp in self.lessons), default=0)
        for lp in self.lessons:
            head = f"{lp.lesson:<{width}}  {len(lp.passed)}/{len(lp.exercises)}  "
            rows: list[str] = []  # the marked exercises, wrapped between (never inside) items
            for k in lp.exercises:
                item = f"{PASS_MARK if k in lp.passed else TODO_MARK} {k}"
                if rows and len(head) + len(rows[-1]) + 2 + len(item) <= LINE_WIDTH:
                    rows[-1] += "  " + item
                else:
                    rows.append(item)
            lines.append(head + (rows[0] if rows else ""))
            lines += [" " * len(head) + r for r in rows[1:]]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Progress(passed={self.n_passed}, exercises={self.n_exercises})"

    def _ipython_display_(self) -> None:
        """`progress()` printed the table already; show nothing more in a notebook."""


def progress(show: bool = True) -> Progress:
    """Which exercises of the course you have passed, lesson by lesson (printed unless show=False)."""
    from lmcourse.exercises import exercises  # every lesson's exercises: loads their modules

    path = progress_file()
    recorded, problem = read_passes(path)
    by_lesson: dict[str, LessonProgress] = {}
    for key, ex in exercises().items():
        lp = by_lesson.setdefault(ex.lesson, LessonProgress(ex.lesson, [], []))
        lp.exercises.append(key)
        if key in recorded:
            lp.passed.append(key)
    report = Progress(sorted(by_lesson.values(), key=lambda lp: lp.lesson), path, problem, recorded)
    if show:
        print(report)
    return report
