"""Exercise checking: run a learner's function against the library's reference and give a verdict.

An `Exercise` holds a reference function, a list of `Case`s (inputs, each with a hint for when it
fails) and a catalog of typical `Mistake`s (wrong implementations with the hint they deserve).
`check(key, fn)` runs `fn` on every case, compares with the reference, and prints one of:

- passed,
- wrong, with the hint of the known mistake whose outputs `fn` reproduces, else the hint of the
  first case it fails and what differed,
- not done yet, when `fn` still raises `NotImplementedError`.

It never raises in a learner's notebook, except that with $LMCOURSE_STRICT_CHECKS=1 (the test
command sets it) a *wrong* answer raises, so a broken solution notebook fails CI.
"""

from __future__ import annotations

import copy
import importlib
import math
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lmcourse.config import ENV_STRICT, env_flag

PASSED, WRONG, TODO = "passed", "wrong", "not done yet"
IN_PLACE = "it changed its input in place"


@dataclass
class Case:
    """One input to check a learner's function on."""

    name: str                  # shown to the learner, e.g. "large logits"
    args: tuple = ()           # positional arguments
    kwargs: dict = field(default_factory=dict)  # keyword arguments
    hint: str = ""             # what to look at when this case fails


@dataclass
class Mistake:
    """A typical wrong answer: its implementation and the hint it deserves."""

    name: str                  # e.g. "no max subtraction"
    fn: Callable               # a wrong implementation with the exercise's signature
    hint: str                  # the specific advice shown when a learner makes this mistake


@dataclass
class Exercise:
    """A checked exercise: a reference, the cases it is checked on, and known mistakes."""

    key: str                   # unique across the course, used as lm.check("key", fn)
    lesson: str                # the notebook it belongs to, e.g. "01_lm_math"
    reference: Callable        # the library's correct implementation
    cases: Sequence[Case] | Callable[[], Sequence[Case]]  # inputs (a callable builds them fresh)
    mistakes: Sequence[Mistake] = ()  # the catalog of wrong answers the tests prove are caught
    atol: float = 1e-5         # absolute tolerance of the comparison
    rtol: float = 1e-4         # relative tolerance of the comparison
    library_name: str = ""     # what the lesson uses afterwards, e.g. "lm.lm_math.softmax"
    call: Callable[..., Any] | None = None  # how to call fn on a case; default fn(*args, **kwargs)

    def get_cases(self) -> list[Case]:
        return list(self.cases() if callable(self.cases) else self.cases)

    def run(self, fn: Callable, case: Case) -> tuple[Any, bool]:
        """fn's output on fresh copies of the case's inputs, and whether fn changed those copies."""
        args, kwargs = copy.deepcopy(case.args), copy.deepcopy(case.kwargs)
        out = self.call(fn, *args, **kwargs) if self.call is not None else fn(*args, **kwargs)
        return out, _changed_inputs(case, args, kwargs)


@dataclass
class CheckResult:
    """The verdict of a check."""

    key: str
    status: str                # passed | wrong | not done yet
    message: str               # the text shown to the learner
    hint: str = ""             # the hint given (empty when passed)
    failed_case: str = ""      # the name of the first failing case
    mistake: str = ""          # the name of the known mistake recognised, if any

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    def __repr__(self) -> str:
        return f"CheckResult(key={self.key!r}, status={self.status!r})"

    def _ipython_display_(self) -> None:
        """The verdict was printed already; show nothing more in a notebook."""


# --------------------------------------------------------------------------- comparison


def _to_comparable(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x.copy())
    if isinstance(x, np.generic):
        return x.item()
    return x


def compare(got: Any, want: Any, atol: float, rtol: float, equal_nan: bool = False) -> str | None:
    """None when `got` matches `want`, else a short description of the first difference."""
    got, want = _to_comparable(got), _to_comparable(want)
    if isinstance(want, torch.Tensor):
        if isinstance(got, (int, float)) and want.numel() == 1:
            got = torch.tensor(got)
        if not isinstance(got, torch.Tensor):
            return f"returned {type(got).__name__}, expected a tensor of shape {tuple(want.shape)}"
        if tuple(got.shape) != tuple(want.shape):
            return f"shape {tuple(got.shape)}, expected {tuple(want.shape)}"
        if want.dtype == torch.bool or got.dtype == torch.bool:
            if not torch.equal(got.bool(), want.bool()):
                return f"{int((got.bool() != want.bool()).sum())} entries differ"
            return None
        g, w = got.double(), want.double()
        if not equal_nan:
            bad = ~torch.isfinite(g) & torch.isfinite(w)
            if bad.any():
                return f"{int(bad.sum())} entries are nan or inf where finite values were expected"
        if not torch.allclose(g, w, atol=atol, rtol=rtol, equal_nan=equal_nan):
            diff = (g - w).abs().nan_to_num(nan=math.inf)
            return f"values differ (max abs difference {diff.max().item():.3g})"
        return None
    if isinstance(want, bool) or want is None or isinstance(want, str):
        return None if got == want else f"returned {got!r}, expected {want!r}"
    if isinstance(want, (int, float)):
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if not isinstance(got, (int, float)):
            return f"returned {type(got).__name__}, expected a number"
        if equal_nan and math.isnan(got) and math.isnan(want):
            return None
        if not math.isclose(got, want, abs_tol=atol, rel_tol=rtol):
            return f"returned {got:.6g}, expected {want:.6g}"
        return None
    if isinstance(want, dict):
        if not isinstance(got, dict) or set(got) != set(want):
            return f"returned keys {sorted(got) if isinstance(got, dict) else got!r}, expected {sorted(want)}"
        for k in want:
            d = compare(got[k], want[k], atol, rtol, equal_nan)
            if d:
                return f"[{k!r}]: {d}"
        return None
    if isinstance(want, (list, tuple)):
        if not isinstance(got, (list, tuple)) or len(got) != len(want):
            return f"returned {type(got).__name__} of length {len(got) if hasattr(got, '__len__') else '?'}, expected {len(want)} items"
        for i, (g, w) in enumerate(zip(got, want)):
            d = compare(g, w, atol, rtol, equal_nan)
            if d:
                return f"item {i}: {d}"
        return None
    return None if got == want else f"returned {got!r}, expected {want!r}"


def _changed_inputs(before: Case, after_args: tuple, after_kwargs: dict) -> bool:
    return compare(list(after_args) + list(after_kwargs.values()),
                   list(before.args) + list(before.kwargs.values()), 0.0, 0.0, True) is not None


# --------------------------------------------------------------------------- registry

_REGISTRY: dict[str, Exercise] = {}
_LOADED = False


def register(exercise: Exercise) -> Exercise:
    """Add an exercise to the course's registry (keys must be unique)."""
    if exercise.key in _REGISTRY and _REGISTRY[exercise.key] is not exercise:
        raise ValueError(f"Two exercises use the key {exercise.key!r}; keys must be unique.")
    _REGISTRY[exercise.key] = exercise
    return exercise


def _load_all() -> None:
    global _LOADED
    if _LOADED:
        return
    import lmcourse.exercises as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        importlib.import_module(f"{pkg.__name__}.{info.name}")
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


# --------------------------------------------------------------------------- checking


def _outputs(ex: Exercise, fn: Callable, cases: list[Case]) -> list[tuple[str, Any, bool]]:
    """('ok', output, changed its inputs) or ('todo'|'error', exception, False) for each case."""
    results = []
    for case in cases:
        try:
            results.append(("ok", *ex.run(fn, case)))
        except NotImplementedError as e:
            results.append(("todo", e, False))
        except Exception as e:  # a learner's bug: reported, never raised
            results.append(("error", e, False))
    return results


def _same_outputs(a: list[tuple[str, Any, bool]], b: list[tuple[str, Any, bool]], ex: Exercise) -> bool:
    for (ka, va, _), (kb, vb, _) in zip(a, b):
        if ka != kb:
            return False
        if ka == "error":
            if type(va) is not type(vb):
                return False
        elif compare(va, vb, ex.atol, ex.rtol, equal_nan=True) is not None:
            return False
    return True


def evaluate(key: str, fn: Callable) -> CheckResult:
    """Check `fn` against exercise `key` and return the verdict without printing it."""
    ex = get(key)
    name = getattr(fn, "__name__", key)
    cases = ex.get_cases()
    got = _outputs(ex, fn, cases)
    then = f" The lesson goes on with the library's `{ex.library_name}`." if ex.library_name else ""
    if any(kind == "todo" for kind, _, _ in got):
        return CheckResult(key, TODO, f"⏳ {name}: not done yet. Replace `raise NotImplementedError` "
                           f"with your code, then rerun its cell and this one.{then}")
    want = _outputs(ex, ex.reference, cases)
    failures = []
    for case, (kind, out, changed), (_, ref, _) in zip(cases, got, want):
        if kind == "error":
            failures.append((case, f"raised {type(out).__name__}: {out}"))
            continue
        diff = compare(out, ref, ex.atol, ex.rtol)
        if diff is None and changed:
            diff = IN_PLACE
        if diff is not None:
            failures.append((case, diff))
    if not failures:
        return CheckResult(key, PASSED, f"✅ {name}: passed all {len(cases)} checks "
                           f"({', '.join(c.name for c in cases)}).")
    case, diff = failures[0]
    mistake = next((m for m in ex.mistakes if _same_outputs(got, _outputs(ex, m.fn, cases), ex)), None)
    if mistake:
        hint = mistake.hint
    elif diff == IN_PLACE:
        hint = "don't modify the inputs (x -= ..., x.exp_()); build new tensors (x = x - ...)."
    else:
        hint = case.hint or "compare your code with the formula above."
    msg = (f"❌ {name}: wrong on {len(failures)} of {len(cases)} checks; first: '{case.name}' "
           f"({diff}).\n   Hint: {hint}")
    return CheckResult(key, WRONG, msg, hint=hint, failed_case=case.name,
                       mistake=mistake.name if mistake else "")


def check(key: str, fn: Callable) -> CheckResult:
    """Check a learner's function against exercise `key`, print the verdict, and return it."""
    try:
        result = evaluate(key, fn)
    except Exception as e:  # a bug in the checking itself must not stop the lesson
        result = CheckResult(key, WRONG, f"❌ could not check {key!r}: {type(e).__name__}: {e}",
                             hint=str(e))
    print(result.message)
    if result.status == WRONG and env_flag(ENV_STRICT):
        raise AssertionError(f"{ENV_STRICT}=1 and exercise {key!r} failed:\n{result.message}")
    return result
