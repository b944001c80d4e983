"""The course's checked exercises, one module per lesson (``lesson01.py`` for 01_lm_math, ...), and
their registry.

Each lesson module calls `register` for each of its exercises; the modules are imported the first
time an exercise is looked up, so a new lesson adds a module and nothing else needs editing.
`check("key", fn)` (exported as ``lm.check``) checks a learner's function against an exercise
and records a pass in the learner's progress file (`lmcourse.learner_progress`); the checking
itself is `lmcourse.checker`.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from types import ModuleType

from lmcourse import checker
from lmcourse.checker import CheckResult, Exercise
from lmcourse.config import ENV_STRICT, env_flag
from lmcourse.learner_progress import record_pass

__all__ = ["check", "evaluate", "exercises", "get", "register"]

_REGISTRY: dict[str, Exercise] = {}
_LOADED = False


def register(exercise: Exercise) -> Exercise:
    """Add an exercise to the course's registry (keys must be unique)."""
    if exercise.key in _REGISTRY and _REGISTRY[exercise.key] is not exercise:
        raise ValueError(f"Two exercises use the key {exercise.key!r}; keys must be unique.")
    _REGISTRY[exercise.key] = exercise
    return exercise


def _lesson_modules() -> list[str]:
    return sorted(info.name for info in pkgutil.iter_modules(__path__))


def _load_all() -> None:
    global _LOADED
    if _LOADED:
        return
    for name in _lesson_modules():
        importlib.import_module(f"{__name__}.{name}")
    _LOADED = True


def exercises() -> dict[str, Exercise]:
    """Every exercise of the course, by key."""
    _load_all()
    return dict(_REGISTRY)


def get(key: str) -> Exercise:
    """The exercise registered as `key`; a clear error lists the keys when it is unknown."""
    _load_all()
    if key not in _REGISTRY:
        raise KeyError(f"No exercise {key!r}. Known exercises: {', '.join(sorted(_REGISTRY))}.")
    return _REGISTRY[key]


def evaluate(key: str, fn: Callable) -> CheckResult:
    """Check `fn` against exercise `key` and return the verdict without printing it."""
    return checker.evaluate(get(key), fn)


def check(key: str, fn: Callable) -> CheckResult:
    """Check a learner's function against exercise `key`; print, record (if passed) and return the verdict."""
    try:
        exercise = get(key)
    except KeyError as e:  # a typo in the key: say so, and never stop the lesson
        result = CheckResult(key, checker.WRONG, f"❌ {e.args[0]}", hint=e.args[0])
        print(result.message)
        if env_flag(ENV_STRICT):
            raise AssertionError(f"{ENV_STRICT}=1 and exercise {key!r} failed:\n{result.message}") from None
        return result
    result = checker.check(exercise, fn)
    if result.passed:
        record_pass(key, exercise.lesson)  # never raises: the progress file is optional
    return result


def __getattr__(name: str) -> ModuleType:
    """`lm.exercises.lesson04` works before any exercise was checked."""
    if name in _lesson_modules():
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
