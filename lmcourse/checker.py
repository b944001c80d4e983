"""Exercise checking: run a learner's function on an exercise's cases, compare with the reference, give a verdict.

This module is the mechanism only. The course's exercises and their registry live in
`lmcourse.exercises`; `lm.check("key", fn)` looks the key up there and calls `check` below.

An `Exercise` holds a reference function, a list of `Case`s (inputs, each with a hint for when it
fails), a catalog of typical `Mistake`s (wrong implementations with the hint they deserve) and,
optionally, diagnosers and `Property`s of its own. `evaluate(exercise, fn)` runs `fn` on every case
and answers:

- passed, when every case matches the reference and every property holds;
- not done yet, when every case still raises `NotImplementedError`;
- wrong, with one piece of advice, chosen in this order: it changed an input in place; it is partly
  done (some cases still raise `NotImplementedError`); it reproduces a catalogued mistake (that
  mistake's hint); it ignores a number argument; a diagnosis that explains every failing case
  (wrong type, dtype or shape, rows that do not sum to 1, a constant factor, a flipped sign, a
  transposed result, entries that should be -inf, ...; the exercise's own diagnosers first); a
  property of right answers it breaks (`Exercise.properties`); the diagnosis that explains the
  most failing cases; which parts of the result are wrong; else the failing case's hint.

`check` prints the verdict and never raises in a learner's notebook, except that with
$LMCOURSE_STRICT_CHECKS=1 (the test command sets it) a *wrong* answer raises, so a broken solution
notebook fails CI.
"""

from __future__ import annotations

import copy
import inspect
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from lmcourse.config import ENV_STRICT, env_flag

PASSED, WRONG, TODO = "passed", "wrong", "not done yet"


# --------------------------------------------------------------------------- the pieces of an exercise


@dataclass
class Case:
    """One input to check a learner's function on."""

    name: str                  # shown to the learner, e.g. "large logits"
    args: tuple = ()           # positional arguments
    kwargs: dict = field(default_factory=dict)  # keyword arguments
    hint: str = ""             # what to look at when this case fails
    canonical: Callable[[Any], Any] | None = None  # maps outputs so equally right ones agree (ties)


@dataclass
class Mistake:
    """A typical wrong answer: its implementation and the hint it deserves."""

    name: str                  # e.g. "no max subtraction"
    fn: Callable               # a wrong implementation with the exercise's signature
    hint: str                  # the specific advice shown when a learner makes this mistake


@dataclass
class Diagnosis:
    """What a diagnoser found wrong in an output, and the advice it deserves."""

    name: str                  # the property that failed, e.g. "rows do not sum to 1"
    advice: str                # shown to the learner as the hint
    detail: Any = None         # a measured number (a factor): for a single number, cases must agree
    weak: bool = False         # found on single numbers: needs two failing cases that agree


Diagnoser = Callable[[Any, Any, Case], "Diagnosis | None"]  # (learner's output, reference's, case)


@dataclass
class Property:
    """A property every right answer has, tested by running the learner's function on inputs of its own."""

    name: str                                  # e.g. "causal"
    check: Callable[[Callable], str | None]    # fn -> None when it holds, else the advice


@dataclass
class Outcome:
    """What one run of a function on one case gave."""

    kind: str                  # "ok", "todo" (NotImplementedError) or "error"
    value: Any                 # the output, or the exception raised
    changed: list[str] = field(default_factory=list)  # inputs the function changed in place


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
    outputs: Sequence[str] = ()  # names of the items of a tuple result, e.g. ("inputs", "targets")
    diagnosers: Sequence[Diagnoser] = ()  # this exercise's own, tried before the generic ones
    properties: Sequence[Property] = ()   # properties every right answer has
    probe_arguments: Sequence[str] | None = None  # number arguments the "ignores an argument"
    #   check may try other values of (None: all); leave out those a wrong answer may not react to
    #   for other reasons (a search that stops early gives the same result for more beams)

    def get_cases(self) -> list[Case]:
        """The cases, built fresh."""
        return list(self.cases() if callable(self.cases) else self.cases)

    def run(self, fn: Callable, case: Case) -> Outcome:
        """fn's outcome on fresh copies of the case's inputs.

        Whatever fn changes in its inputs is noted and undone as soon as fn returns, before `call`
        computes anything more from those inputs (statistics, say).
        """
        args, kwargs = copy.deepcopy(case.args), copy.deepcopy(case.kwargs)
        changed: list[str] = []

        def watched(*a: Any, **k: Any) -> Any:
            before = _snapshot((a, k))
            try:
                out = fn(*a, **k)
            finally:
                names = _changed_inputs(fn, before, a, k)
                if names:
                    changed.extend(n for n in names if n not in changed)
            if names:
                out = _clone_tensors(out)  # the output may be the changed input itself
                _restore(before, (a, k))
            return out

        try:
            out = self.call(watched, *args, **kwargs) if self.call is not None else watched(*args, **kwargs)
        except NotImplementedError as e:
            return Outcome("todo", e, changed)
        except Exception as e:  # a learner's bug: reported, never raised
            return Outcome("error", e, changed)
        return Outcome("ok", out, changed)

    def difference(self, got: Any, want: Any, case: Case, equal_nan: bool = False) -> Difference | None:
        """How `got` differs from `want` on this case (None when it matches)."""
        if case.canonical is not None:
            try:
                got, want = case.canonical(got), case.canonical(want)
            except Exception:  # an output of the wrong kind: compare it as it is
                pass
        return difference(got, want, self.atol, self.rtol, equal_nan, names=self.outputs)


@dataclass
class CheckResult:
    """The verdict of a check."""

    key: str
    status: str                # passed | wrong | not done yet
    message: str               # the text shown to the learner
    hint: str = ""             # the hint given (empty when passed)
    failed_case: str = ""      # the name of the failing case the message shows
    mistake: str = ""          # the name of the known mistake recognised, if any
    diagnosis: str = ""        # the name of the property found broken, if any

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    def __repr__(self) -> str:
        return f"CheckResult(key={self.key!r}, status={self.status!r})"

    def _ipython_display_(self) -> None:
        """The verdict was printed already; show nothing more in a notebook."""


# --------------------------------------------------------------------------- comparison


@dataclass
class Difference:
    """The first way an output differs from the expected one."""

    kind: str                  # type, dtype, shape, keys, length, inf, nan, value
    text: str                  # a short description for the learner
    path: str = ""             # where in the output, e.g. "item 1 (m)" or "['W2']"
    got: Any = None            # the part of the output that differs
    want: Any = None           # the expected part

    def __str__(self) -> str:
        return f"{self.path}: {self.text}" if self.path else self.text


_KIND_WORDS = {"bool": "True/False values", "int": "integers", "float": "floats",
               "complex": "complex numbers"}


def _tensor_kind(t: torch.Tensor) -> str:
    if t.dtype == torch.bool:
        return "bool"
    if t.is_complex():
        return "complex"
    return "float" if t.is_floating_point() else "int"


def _to_comparable(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if isinstance(x, np.generic):
        return x.item()
    return x


def _type_name(x: Any) -> str:
    if isinstance(x, np.ndarray):
        return "a numpy array" + (" of Python objects" if x.dtype == object else "")
    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {tuple(x.shape)}"
    if isinstance(x, (list, tuple)):
        return f"a {type(x).__name__} of {len(x)} item{'s' if len(x) != 1 else ''}"
    if isinstance(x, bool):
        return f"{x} (a bool)"
    if isinstance(x, str):
        return f"a str ({x[:30]!r})"
    if x is None:
        return "None"
    return f"a {type(x).__name__}"


def _expected_name(want: Any, names: Sequence[str] = ()) -> str:
    if isinstance(want, torch.Tensor):
        return "a single number (a 0-d tensor)" if want.dim() == 0 else f"a tensor of shape {tuple(want.shape)}"
    if isinstance(want, (list, tuple)):
        named = f" ({', '.join(names)})" if len(names) == len(want) else ""
        return f"a {type(want).__name__} of {len(want)} items{named}"
    if isinstance(want, dict):
        return f"a dict with keys {sorted(want)}"
    if isinstance(want, bool):
        return "True or False"
    if isinstance(want, (int, float)):
        return "a number"
    return type(want).__name__


def _positions(mask: torch.Tensor, limit: int = 3) -> str:
    """'at [0, 2], [1, 3] and 4 more' for the True entries of `mask`."""
    if mask.dim() == 0:
        return ""
    idx = mask.nonzero().tolist()
    shown = ", ".join(str(i) for i in idx[:limit])
    more = f" and {len(idx) - limit} more" if len(idx) > limit else ""
    return f" at {shown}{more}"


def _entries(n: int, verb: bool = False) -> str:
    """'1 entry' / '3 entries', with verb=True '1 entry is' / '3 entries are'."""
    noun = f"{n} entr{'y' if n == 1 else 'ies'}"
    return f"{noun} {'is' if n == 1 else 'are'}" if verb else noun


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _tensor_difference(got: torch.Tensor, want: torch.Tensor, atol: float, rtol: float,
                       equal_nan: bool) -> Difference | None:
    if tuple(got.shape) != tuple(want.shape):
        return Difference("shape", f"shape {tuple(got.shape)}, expected {tuple(want.shape)}", got=got, want=want)
    gk, wk = _tensor_kind(got), _tensor_kind(want)
    if gk != wk:
        return Difference("dtype", f"returned {_KIND_WORDS[gk]} ({got.dtype}), expected "
                          f"{_KIND_WORDS[wk]} ({want.dtype})", got=got, want=want)
    if wk == "bool":
        if torch.equal(got, want):
            return None
        extra, missing = got & ~want, ~got & want
        parts = []
        if extra.any():
            parts.append(f"{_entries(int(extra.sum()))} True where False is expected{_positions(extra)}")
        if missing.any():
            parts.append(f"{_entries(int(missing.sum()))} False where True is expected{_positions(missing)}")
        return Difference("value", "; ".join(parts), got=got, want=want)
    if wk == "int":
        if torch.equal(got, want):
            return None
        bad = got != want
        return Difference("value", f"{_entries(int(bad.sum()))} differ{_positions(bad)}", got=got, want=want)
    g, w = got.double(), want.double()
    neg_w, neg_g = w == -math.inf, g == -math.inf
    if bool(neg_w.any()):  # a result with -inf entries (removed or masked): are they in place?
        finite_instead = neg_w & ~neg_g
        if finite_instead.any():
            n = int(finite_instead.sum())
            return Difference("inf", f"{_entries(n)} should be -inf but {'is' if n == 1 else 'are'} "
                              f"not{_positions(finite_instead)}", got=got, want=want)
        inf_instead = neg_g & ~neg_w
        if inf_instead.any():
            return Difference("inf", f"{_entries(int(inf_instead.sum()), verb=True)} -inf but should be "
                              f"kept{_positions(inf_instead)}", got=got, want=want)
    nan = torch.isnan(g) & ~(torch.isnan(w) if equal_nan else torch.zeros_like(w, dtype=torch.bool))
    if nan.any():
        return Difference("nan", f"nan in {_entries(int(nan.sum()))}{_positions(nan)}", got=got, want=want)
    inf = torch.isinf(g) & ~torch.isinf(w)
    if inf.any():
        return Difference("nan", f"inf or -inf in {_entries(int(inf.sum()))}{_positions(inf)}",
                          got=got, want=want)
    if torch.allclose(g, w, atol=atol, rtol=rtol, equal_nan=equal_nan):
        return None
    diff = (g - w).abs().nan_to_num(nan=math.inf)
    diff = torch.where(g == w, torch.zeros_like(diff), diff)  # inf == inf
    at = _positions(diff == diff.max(), limit=1) if diff.dim() else ""
    return Difference("value", f"values differ (max abs difference {diff.max().item():.3g}{at})",
                      got=got, want=want)


def difference(got: Any, want: Any, atol: float, rtol: float, equal_nan: bool = False,
               names: Sequence[str] = ()) -> Difference | None:
    """None when `got` matches `want`, else the first difference (what, where, and the parts).

    Types must match: a tensor where a tensor is expected, of the same kind (bool, integer or
    float; any float precision is fine); a Python number or a 0-d tensor where a number or a 0-d
    tensor is expected; a tuple or a list where either is expected. A numpy array, a list or a
    bool where a tensor or a number is expected is wrong.
    """
    got, want = _to_comparable(got), _to_comparable(want)
    if isinstance(want, torch.Tensor):
        if want.dim() == 0 and _is_number(got) and want.dtype != torch.bool:
            # a Python number where a 0-d tensor is expected: fine when it is the right kind
            got = torch.tensor(float(got) if _tensor_kind(want) == "float" else got)
        if not isinstance(got, torch.Tensor):
            return Difference("type", f"returned {_type_name(got)}, expected {_expected_name(want)}",
                              got=got, want=want)
        return _tensor_difference(got, want, atol, rtol, equal_nan)
    if isinstance(want, bool) or want is None or isinstance(want, str):
        if isinstance(got, torch.Tensor) and got.dim() == 0:
            got = got.item()
        return None if (type(got) is type(want) and got == want) else Difference(
            "value" if type(got) is type(want) else "type", f"returned {got!r}, expected {want!r}",
            got=got, want=want)
    if _is_number(want):
        if isinstance(got, torch.Tensor):
            if got.dim() != 0:
                return Difference("type", f"returned {_type_name(got)}, expected a single number",
                                  got=got, want=want)
            if got.dtype == torch.bool:
                return Difference("type", f"returned a bool tensor ({bool(got)}), expected a number",
                                  got=got, want=want)
            got = got.item()
        if not _is_number(got):
            return Difference("type", f"returned {_type_name(got)}, expected a number", got=got, want=want)
        if math.isnan(got) and math.isnan(want) and equal_nan:
            return None
        if not math.isclose(got, want, abs_tol=atol, rel_tol=rtol):
            return Difference("nan" if math.isnan(got) or math.isinf(got) else "value",
                              f"returned {got:.6g}, expected {want:.6g}", got=got, want=want)
        return None
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return Difference("type", f"returned {_type_name(got)}, expected {_expected_name(want)}",
                              got=got, want=want)
        missing, extra = sorted(set(want) - set(got), key=str), sorted(set(got) - set(want), key=str)
        if missing or extra:
            text = ", ".join(filter(None, [f"missing keys {missing}" if missing else "",
                                           f"unexpected keys {extra}" if extra else ""]))
            return Difference("keys", text, got=got, want=want)
        for k in want:
            d = difference(got[k], want[k], atol, rtol, equal_nan)
            if d:
                d.path = f"[{k!r}]" + (f"{d.path}" if d.path else "")
                return d
        return None
    if isinstance(want, (list, tuple)):
        if isinstance(got, torch.Tensor) and got.dim() >= 1 and got.shape[0] == len(want) \
                and all(isinstance(w, torch.Tensor) for w in want):
            return Difference("type", f"returned one tensor of shape {tuple(got.shape)}, expected "
                              f"{_expected_name(want, names)}: the items stacked into one tensor",
                              got=got, want=want)
        if not isinstance(got, (list, tuple)):
            return Difference("type", f"returned {_type_name(got)}, expected {_expected_name(want, names)}",
                              got=got, want=want)
        if len(got) != len(want):
            return Difference("length", f"returned {len(got)} item{'s' if len(got) != 1 else ''}, "
                              f"expected {len(want)}{' (' + ', '.join(names) + ')' if len(names) == len(want) else ''}",
                              got=got, want=want)
        for i, (g, w) in enumerate(zip(got, want)):
            d = difference(g, w, atol, rtol, equal_nan)
            if d:
                label = f"item {i}" + (f" ({names[i]})" if i < len(names) else "")
                d.path = label + (f" {d.path}" if d.path else "")
                return d
        return None
    try:
        same = bool(got == want)
    except Exception:  # e.g. arrays, whose == is elementwise
        same = got is want
    return None if same else Difference("value", f"returned {_type_name(got)}, expected "
                                        f"{_expected_name(want)}", got=got, want=want)


def compare(got: Any, want: Any, atol: float, rtol: float, equal_nan: bool = False) -> str | None:
    """None when `got` matches `want`, else a short description of the first difference."""
    d = difference(got, want, atol, rtol, equal_nan)
    return None if d is None else str(d)


# --------------------------------------------------------------------------- inputs changed in place


def _snapshot(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, torch.nn.Module):
        return {k: v.detach().clone() for k, v in x.state_dict().items()}
    if isinstance(x, dict):
        return {k: _snapshot(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_snapshot(v) for v in x]
    return None


def _unchanged(before: Any, x: Any) -> bool:
    if isinstance(x, torch.Tensor):
        if not isinstance(before, torch.Tensor) or x.shape != before.shape or x.dtype != before.dtype:
            return False
        a, b = x.detach(), before
        same = a == b
        if a.is_floating_point():
            same |= torch.isnan(a) & torch.isnan(b)
        return bool(same.all())
    if isinstance(x, torch.nn.Module):
        state = x.state_dict()
        return all(k in state and _unchanged(v, state[k]) for k, v in before.items())
    if isinstance(x, dict):
        return all(k in x and _unchanged(v, x[k]) for k, v in before.items())
    if isinstance(x, (list, tuple)):
        return len(x) == len(before) and all(_unchanged(b, v) for b, v in zip(before, x))
    return True


def _restore(before: Any, x: Any) -> None:
    with torch.no_grad():
        if isinstance(x, torch.Tensor):
            if isinstance(before, torch.Tensor) and x.shape == before.shape and x.dtype == before.dtype:
                x.copy_(before)
        elif isinstance(x, torch.nn.Module):
            state = x.state_dict()
            for k, v in before.items():
                if k in state and state[k].shape == v.shape:
                    state[k].copy_(v)
        elif isinstance(x, dict):
            for k, v in before.items():
                if k in x:
                    _restore(v, x[k])
        elif isinstance(x, (list, tuple)):
            for b, v in zip(before, x):
                _restore(b, v)


def _clone_tensors(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, dict):
        return {k: _clone_tensors(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clone_tensors(v) for v in x]
    if isinstance(x, tuple):
        return tuple(_clone_tensors(v) for v in x)
    return x


def _argument_names(fn: Callable, args: tuple, kwargs: dict) -> list[str]:
    """The names fn gives its positional arguments, then the keyword names."""
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        names = [p.name for p in params[:len(args)]]
    except (TypeError, ValueError):
        names = []
    names += [f"argument {i + 1}" for i in range(len(names), len(args))]
    return names + list(kwargs)


def _changed_inputs(fn: Callable, before: Any, args: tuple, kwargs: dict) -> list[str]:
    b_args, b_kwargs = before
    names = _argument_names(fn, args, kwargs)
    values = list(args) + list(kwargs.values())
    snaps = list(b_args) + list(b_kwargs.values())
    return [n for n, v, s in zip(names, values, snaps) if not _unchanged(s, v)]


# --------------------------------------------------------------------------- diagnosis
#
# A diagnoser looks at a wrong output next to the expected one and names the property that failed.
# The generic ones below work on any exercise; an exercise may add its own (`Exercise.diagnosers`)
# and properties tested by running the learner's function (`Exercise.properties`).

_NAMED_FACTORS = [
    (1 / math.log(2), "1/ln 2: a base-2 logarithm where the natural log is expected?"),
    (math.log(2), "ln 2: a natural log where base 2 is expected?"),
    (100.0, "a percentage instead of a fraction?"),
    (2.0, "twice the expected value: an extra factor 2, or a missing 1/2?"),
    (0.5, "half the expected value: a missing factor 2, or an extra 1/2?"),
    (math.sqrt(2), "sqrt(2): a square root in the wrong place?"),
    (1 / math.sqrt(2), "1/sqrt(2): a square root in the wrong place?"),
]


def _factor_note(c: float) -> str:
    for value, note in _NAMED_FACTORS:
        if math.isclose(c, value, rel_tol=1e-3):
            return note
    n = round(c)
    if abs(c) > 1 and math.isclose(c, n, rel_tol=1e-6):
        return f"a missing division by {n} (a count or a size)?"
    if 0 < abs(c) < 1 and math.isclose(1 / c, round(1 / c), rel_tol=1e-6):
        return f"an extra division by {round(1 / c)} (a count or a size)?"
    return "a missing or extra factor (a count, a size, a square root)?"


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-6) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=rtol, atol=atol))


def _constant(t: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-7) -> float | None:
    """The single value of `t` when all its entries agree, else None."""
    if t.numel() == 0:
        return None
    c = t.flatten()[0]
    return float(c) if bool(torch.allclose(t, c.expand_as(t), rtol=rtol, atol=atol)) else None


def _structure_advice(d: Difference, case: Case) -> Diagnosis | None:
    """Advice for a wrong type, dtype, shape, set of keys or number of items."""
    g, w = d.got, d.want
    where = f"{d.path}: " if d.path else ""
    if d.kind == "type":
        if isinstance(g, np.ndarray):
            kind = " of Python objects (dtype=object)" if g.dtype == object else ""
            return Diagnosis("numpy result", f"{where}you return a numpy array{kind}; return a torch "
                             "tensor: stay in torch (torch.exp, .sum(dim=...)) or convert at the end "
                             "with torch.from_numpy / torch.as_tensor.")
        if isinstance(g, list) and isinstance(w, torch.Tensor):
            return Diagnosis("list result", f"{where}you return a Python list; return one tensor "
                             "(build it with torch.stack(...) or tensor operations, not a list).")
        if isinstance(g, tuple) and isinstance(w, torch.Tensor):
            return Diagnosis("tuple result", f"{where}you return a tuple of {len(g)} items; return "
                             "one tensor.")
        if isinstance(g, torch.Tensor) and isinstance(w, (list, tuple)):
            return Diagnosis("stacked result", f"{where}you return one tensor; return a tuple of "
                             f"{len(w)} separate results (`return a, b`), not torch.stack([a, b]).")
        if isinstance(w, dict):
            return Diagnosis("not a dict", f"{where}return a dict {{name: tensor}} with the keys "
                             f"{sorted(w)}, not {_type_name(g)}.")
        if isinstance(g, str):
            return Diagnosis("str result", f"{where}you return a str; return the number itself "
                             "(no formatting).")
        if isinstance(g, (list, tuple)) and _is_number(w):
            return Diagnosis("tuple for a number", f"{where}you return {_type_name(g)}; return one "
                             "number.")
        if isinstance(g, bool) or (isinstance(g, torch.Tensor) and g.dtype == torch.bool):
            return Diagnosis("bool result", f"{where}you return True/False; return the number.")
        if isinstance(g, torch.Tensor) and _is_number(w):
            return Diagnosis("tensor for a number", f"{where}you return a tensor of shape "
                             f"{tuple(g.shape)}; return a single number (reduce with .sum() or "
                             ".mean(), or take .item()).")
        return Diagnosis("wrong type", f"{where}you return {_type_name(g)}; return "
                         f"{_expected_name(w)}.")
    if d.kind == "dtype":
        if isinstance(g, torch.Tensor) and g.dtype == torch.bool:
            return Diagnosis("bool result", f"{where}you return a bool tensor (True/False, from a "
                             f"comparison?); the expected result holds {_KIND_WORDS[_tensor_kind(w)]} "
                             f"({w.dtype}).")
        if isinstance(w, torch.Tensor) and w.dtype == torch.bool:
            return Diagnosis("mask dtype", f"{where}you return {g.dtype} values; a mask is a bool "
                             "tensor (True/False, dtype=torch.bool), not 0/1 numbers or 0/-inf scores.")
        if isinstance(w, torch.Tensor) and _tensor_kind(w) == "float":
            return Diagnosis("integer result", f"{where}you return integers ({g.dtype}); the "
                             "expected result holds floats: convert with .float() / .double() "
                             "before dividing, and don't use // (integer division).")
        return Diagnosis("float result", f"{where}you return floats; the expected result holds "
                         f"integers ({w.dtype}, e.g. token ids): keep the integer dtype.")
    if d.kind == "keys":
        return Diagnosis("keys", f"{where}the result's keys are wrong ({d.text}): return exactly "
                         f"{sorted(w, key=str)}.")
    if d.kind == "length":
        return Diagnosis("length", f"{where}{d.text}: return every result, as a tuple.")
    if d.kind == "shape" and isinstance(g, torch.Tensor) and isinstance(w, torch.Tensor):
        gs, ws = tuple(g.shape), tuple(w.shape)
        if len(gs) >= 2 and gs[:-2] + (gs[-1], gs[-2]) == ws:
            return Diagnosis("transposed shape", f"{where}shape {gs} is the expected shape {ws} "
                             "with the last two dimensions swapped: a transpose too many or too few, "
                             "or the operands of a matrix product swapped.")
        if w.dim() == 0:
            return Diagnosis("not reduced", f"{where}you return a tensor of shape {gs}; the result "
                             "is a single number (0-d): reduce (sum or mean) over everything, and "
                             "don't keep a dimension of size 1.")
        squeezed = [n for n in gs if n != 1] == [n for n in ws if n != 1]
        if squeezed and g.dim() > w.dim():
            return Diagnosis("extra dimension", f"{where}shape {gs}, expected {ws}: a dimension of "
                             "size 1 too many (an unsqueeze, keepdim=True, indexing with None, or "
                             "a stack too many).")
        if squeezed and g.dim() < w.dim():
            return Diagnosis("dimension lost", f"{where}shape {gs}, expected {ws}: a dimension of "
                             "size 1 went missing (a reduction without keepdim=True, or a squeeze).")
        if g.numel() == w.numel():
            return Diagnosis("reshaped", f"{where}shape {gs}, expected {ws}: the right number of "
                             "entries arranged wrongly; check your view/reshape and which "
                             "dimensions you transpose or permute.")
        if g.dim() == w.dim() - 1:
            return Diagnosis("dimension lost", f"{where}shape {gs}, expected {ws}: a dimension "
                             "went missing (a reduction without keepdim=True, or indexing that "
                             "dropped one).")
        if g.dim() == w.dim() + 1:
            return Diagnosis("extra dimension", f"{where}shape {gs}, expected {ws}: one dimension "
                             "too many (an unsqueeze, keepdim=True, or a stack too many).")
        if g.dim() == w.dim():
            bad = [i for i, (a, b) in enumerate(zip(gs, ws)) if a != b]
            return Diagnosis("wrong size", f"{where}shape {gs}, expected {ws}: dimension "
                             f"{', '.join(map(str, bad))} has the wrong size.")
        return Diagnosis("shape", f"{where}shape {gs}, expected {ws}.")
    return None


def _float_pair(g: Any, w: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Both as float64 tensors of one shape, or None."""
    if _is_number(g) and _is_number(w):
        return torch.tensor(float(g), dtype=torch.float64), torch.tensor(float(w), dtype=torch.float64)
    if isinstance(g, torch.Tensor) and isinstance(w, torch.Tensor) and g.shape == w.shape \
            and g.dtype != torch.bool and w.dtype != torch.bool:
        return g.double(), w.double()
    return None


def _relations(g: torch.Tensor, w: torch.Tensor, case: Case) -> list[Diagnosis]:
    """Simple relations between the output and the expected one: sign, factor, offset, log, ..."""
    found: list[Diagnosis] = []
    scalar = g.numel() == 1
    both = torch.isfinite(g) & torch.isfinite(w)
    if not bool(both.any()):
        return found
    gf, wf = g[both], w[both]
    if _close(gf, -wf) and bool((wf.abs() > 1e-9).any()):
        found.append(Diagnosis("sign flipped", "the sign is flipped: your result is minus the "
                               "expected one.", detail=-1.0, weak=scalar))
        return found
    if scalar:
        f = _factor(g, w)
        if f is not None:
            found.append(f)
        gv, wv = float(gf), float(wf)
        if gv == 0 and wv != 0:
            found.append(Diagnosis("zero", f"your result is 0 where {wv:.4g} is expected: an integer "
                                   "division (//) that rounds a fraction down to 0, a mask that keeps "
                                   "nothing, or a comparison that never matches?", detail=0, weak=True))
        elif wv != round(wv) and gv in (math.floor(wv), round(wv), float(math.trunc(wv))):
            found.append(Diagnosis("rounded", "your result is rounded to a whole number: integer "
                                   "division (//), int() or round() somewhere?", weak=True))
        if gv < 0 < wv:
            found.append(Diagnosis("negative", "your result is negative where the expected one is "
                                   "positive: a minus sign in the wrong place?", detail="negative",
                                   weak=True))
        if gv > 0 and wv > 0 and abs(math.log(wv)) > 1e-6:
            power = math.log(gv) / math.log(wv)
            note = next((n for v, n in [
                (math.log(10), "= ln 10: 10 ** x where exp(x) is expected?"),
                (math.log(2), "= ln 2: 2 ** x where exp(x) is expected?"),
                (2.0, ": squared?"), (0.5, ": a square root too many?")]
                if math.isclose(power, v, rel_tol=1e-3)), None)
            if note:
                found.append(Diagnosis("power", f"your result is the expected one to the power "
                                       f"{power:.4g} {note}", detail=round(power, 4), weak=True))
        found.append(Diagnosis("constant offset", f"your result is the expected one {gv - wv:+.4g}.",
                               detail=round(gv - wv, 6), weak=True))
        return found
    if int(both.sum()) >= 2:
        c = _constant(gf - wf, atol=1e-6)
        if c is not None and abs(c) > 1e-6:
            found.append(Diagnosis("constant offset", f"your result is the expected one {c:+.4g}: "
                                   "the same constant added everywhere."))
    if w.dim() >= 2 and w.shape[-1] >= 2 and torch.equal(torch.isfinite(g), torch.isfinite(w)):
        shift = torch.where(both, g - w, torch.nan).reshape(-1, w.shape[-1])
        consts = []
        for r in shift:
            r = r[~torch.isnan(r)]
            c = _constant(r, atol=1e-6) if r.numel() else 0.0
            if c is None:
                consts = []
                break
            consts.append(c)
        if consts and any(abs(c) > 1e-6 for c in consts) and _constant(torch.tensor(consts), atol=1e-6) is None:
            found.append(Diagnosis("row offset", "each row of your result is the expected row "
                                   f"shifted by its own constant (e.g. {consts[0]:+.3g}): the values "
                                   "inside a row are right relative to each other, but something was "
                                   "added to or subtracted from whole rows (a log-sum-exp, a max); "
                                   "keep the entries as they are."))
    if bool((wf > 0).all()) and _close(gf, wf.log(), atol=1e-5):
        found.append(Diagnosis("log of the result", "you return the logarithm of the expected "
                               "result: drop the final log (or don't take logs at all)."))
    if _close(gf, wf.exp(), atol=1e-6):
        found.append(Diagnosis("exp of the result", "you return exp of the expected result: the "
                               "expected values are logs (log-probabilities or logits); don't "
                               "exponentiate them."))
    if w.dim() >= 1 and w.shape[-1] >= 2 and bool(torch.isfinite(g).all()) \
            and _close(g, torch.softmax(w, -1), atol=1e-5):
        found.append(Diagnosis("softmax of the result", "you return probabilities (softmax of the "
                               "expected result); return the logits themselves, with -inf where "
                               "tokens are removed."))
    if bool((gf != 0).any()) and not bool((wf == wf.round()).all()) and any(
            _close(gf, r(wf), atol=0) for r in (torch.floor, torch.round, torch.trunc)):
        found.append(Diagnosis("rounded", "your result is rounded to whole numbers: integer "
                               "division (//), int() or round() somewhere?"))
    return found


def _factor(g: torch.Tensor, w: torch.Tensor) -> Diagnosis | None:
    """The output is the expected one times a constant."""
    scalar = g.numel() == 1
    both = torch.isfinite(g) & torch.isfinite(w)
    gf, wf = g[both], w[both]
    nz = wf.abs() > 1e-12
    if bool(nz.any()) and (scalar or int(nz.sum()) >= 2) and bool((gf[~nz].abs() < 1e-9).all()):
        c = _constant(gf[nz] / wf[nz], rtol=1e-4, atol=1e-9)
        if c is not None and c != 0 and not math.isclose(c, 1.0, rel_tol=1e-4):
            return Diagnosis("constant factor", f"your result is {c:.4g} times the expected one: "
                             f"{_factor_note(c)}", detail=round(c, 4), weak=scalar)
    return None


def _sums_to_one(g: torch.Tensor, w: torch.Tensor) -> Diagnosis | None:
    """Rows of the expected result are distributions; the learner's rows are not."""
    if w.dim() < 1 or w.shape[-1] < 2 or not bool((w >= 0).all()):
        return None
    if float((w.sum(-1) - 1).abs().max()) > 1e-6 or not bool(torch.isfinite(g).all()):
        return None
    rows = g.sum(-1)
    if float((rows - 1).abs().max()) < 1e-5:
        return None
    for d in range(g.dim() - 1):
        if g.shape[d] >= 2 and float((g.sum(d) - 1).abs().max()) < 1e-5:
            return Diagnosis("normalised along the wrong dimension", "your result sums to 1 along "
                             f"dimension {d}, not along the last one: normalise each row on its own "
                             "(dim=-1, keepdim=True).")
    if g.dim() >= 2 and math.isclose(float(g.sum()), 1.0, abs_tol=1e-5):
        return Diagnosis("normalised over everything", "your whole result sums to 1; each row must "
                         "sum to 1 on its own: divide by sum(dim=-1, keepdim=True).")
    if g.dim() == 2 and g.shape[0] == g.shape[1] and bool((w > 0).all()):
        r = g / w
        if _close(r, r[:, :1] * r[:1, :] / r[0, 0], rtol=1e-4) and math.isclose(float(r[0, 0]), 1.0, rel_tol=1e-3):
            return Diagnosis("total of the wrong row", "each row was divided by another row's total: "
                             "x / x.sum(-1) without keepdim=True divides column j by row j's total. "
                             "Keep the summed dimension: x.sum(-1, keepdim=True).")
    shown = ", ".join(f"{v:.3g}" for v in rows.flatten()[:3].tolist())
    return Diagnosis("rows do not sum to 1", f"the rows of your result should each sum to 1 (they are "
                     f"probabilities) but sum to {shown}{', ...' if rows.numel() > 3 else ''}: divide "
                     "each row by its own sum.")


def _neg_inf(g: torch.Tensor, w: torch.Tensor) -> Diagnosis | None:
    """The -inf entries of the learner's result are not where they belong."""
    wn, gn = w == -math.inf, g == -math.inf
    if not bool(wn.any()):
        return None
    missing, extra = wn & ~gn, gn & ~wn
    if bool(missing.any()) and not bool(extra.any()):
        fill = _constant(g[missing])
        if fill is not None and bool(torch.isfinite(g[missing]).all()) and _close(g[~wn], w[~wn]):
            return Diagnosis("finite instead of -inf", f"entries that should be -inf are {fill:g} in "
                             "yours (finite): fill them with float('-inf'), so that softmax gives "
                             "them probability exactly 0.")
        n = int(missing.sum())
        return Diagnosis("too few -inf", f"{_entries(n)} that should be -inf {'is' if n == 1 else 'are'} kept (finite)"
                         f"{_positions(missing)}: you remove too few. Look at the entries exactly "
                         "at the threshold: < versus <=.")
    if bool(extra.any()) and not bool(missing.any()):
        n = int(extra.sum())
        return Diagnosis("too many -inf", f"{_entries(n, verb=True)} -inf that should be kept"
                         f"{_positions(extra)}: you remove too many. Look at the entries exactly at "
                         "the threshold (ties, < versus <=), and make sure at least one entry per "
                         "row survives.")
    if bool(missing.any()) and bool(extra.any()):
        return None  # the -inf entries are elsewhere: the difference says so already
    kept = ~wn
    if bool(kept.any()) and not _close(g[kept], w[kept]):
        return Diagnosis("kept entries changed", "the right entries are -inf, but the kept ones "
                         "changed: keep them exactly as they are in the input.")
    return None


def _transposed(g: torch.Tensor, w: torch.Tensor) -> Diagnosis | None:
    if g.dim() >= 2 and g.shape[-1] == g.shape[-2] and w.shape == g.shape:
        if _close(g, w.transpose(-2, -1)) and not _close(w, w.transpose(-2, -1)):
            return Diagnosis("transposed", "your result is transposed: rows and columns are "
                             "swapped (a transpose too many or too few, or the operands of a "
                             "product swapped).")
    return None


def _layout(g: torch.Tensor, w: torch.Tensor) -> Diagnosis | None:
    """The right numbers in the wrong places, or all one value."""
    if g.numel() >= 2:
        gs, ws = g.flatten().sort().values, w.flatten().sort().values
        if bool(torch.isfinite(gs).all()) and _close(gs, ws) and _constant(ws) is None:
            return Diagnosis("entries in the wrong places", "your result holds the right numbers "
                             "in the wrong places: check the order of the dimensions (transpose / "
                             "permute, view versus reshape) and your indexing.")
        c = _constant(g)
        if c is not None and _constant(w) is None:
            return Diagnosis("all entries equal", f"every entry of your result has the same value "
                             f"({c:.4g}), but the expected entries differ.")
    return None


def _bool_layout(g: torch.Tensor, w: torch.Tensor) -> Diagnosis | None:
    if g.dtype != torch.bool or w.dtype != torch.bool or g.shape != w.shape:
        return None
    if torch.equal(g, ~w):
        return Diagnosis("inverted", "True and False are swapped everywhere: your mask is inverted.")
    if g.dim() >= 2 and g.shape[-1] == g.shape[-2] and torch.equal(g, w.transpose(-2, -1)):
        return Diagnosis("transposed", "your mask is transposed: rows and columns are swapped.")
    bad = g != w
    if g.dim() >= 2:
        i = torch.arange(g.shape[-2])[:, None]
        j = torch.arange(g.shape[-1])[None, :]
        if bool((bad & (i != j)).sum() == 0):
            return Diagnosis("diagonal", "only the diagonal (i == j) is wrong: the border case of "
                             "your comparison, < versus <= (or tril(-1) versus tril()).")
    extra, missing = g & ~w, ~g & w
    if bool(extra.any()) and not bool(missing.any()):
        return Diagnosis("too many True", f"{_entries(int(extra.sum()))} are True that should be "
                         f"False{_positions(extra)}.")
    if bool(missing.any()) and not bool(extra.any()):
        return Diagnosis("too few True", f"{_entries(int(missing.sum()))} are False that should be "
                         f"True{_positions(missing)}.")
    return None


def _nonfinite(d: Difference, case: Case) -> Diagnosis | None:
    if d.kind != "nan":
        return None
    where = f" ({d.text})" if isinstance(d.got, torch.Tensor) else ""
    extra = f" {case.hint}" if case.hint else ""
    return Diagnosis("nan or inf", f"your result has nan or inf where numbers are expected{where}: "
                     "something overflowed or divided 0 by 0 (exp of a large number: subtract the "
                     "max first; log of 0; a division by a zero sum)." + extra)


def _generic_diagnoses(d: Difference, case: Case) -> list[Diagnosis]:
    """What the generic diagnosers find in one difference, strongest first."""
    found = []
    s = _structure_advice(d, case)
    if s is not None:
        return [s]
    prefix = f"{d.path}: " if d.path else ""
    g, w = d.got, d.want
    if isinstance(g, torch.Tensor) and isinstance(w, torch.Tensor) and g.dtype == torch.bool:
        b = _bool_layout(g, w)
        if b is not None:
            found.append(b)
    pair = _float_pair(g, w)
    if pair is not None:
        gd, wd = pair
        t = _transposed(gd, wd)
        found += [t] if t is not None else []
        found += _relations(gd, wd, case)  # sign, offsets, log/exp/softmax, rounding, ...
        for diag in (_sums_to_one, _factor, _neg_inf, _layout):  # rows that must sum to 1 say more
            r = diag(gd, wd)                                       # than a bare factor
            if r is not None and r.name not in {f.name for f in found}:
                found.append(r)
    n = _nonfinite(d, case)
    if n is not None:
        found.append(n)
    for f in found:
        if prefix and not f.advice.startswith(prefix):
            f.advice = prefix + f.advice
    return found


def _weak_diagnosis(d: Difference, got: Any, want: Any, ex: Exercise) -> Diagnosis | None:
    """Where the output is wrong, when nothing better is known: which items, which rows."""
    if isinstance(want, dict) and isinstance(got, dict) and set(got) == set(want):
        bad = [k for k in want if difference(got[k], want[k], ex.atol, ex.rtol) is not None]
        good = [k for k in want if k not in bad]
        if good:
            return Diagnosis("items", f"{', '.join(map(str, bad))} {'is' if len(bad) == 1 else 'are'} "
                             f"wrong; {', '.join(map(str, good))} {'is' if len(good) == 1 else 'are'} right.")
    if isinstance(want, (list, tuple)) and isinstance(got, (list, tuple)) and len(got) == len(want):
        names = [ex.outputs[i] if i < len(ex.outputs) else f"item {i}" for i in range(len(want))]
        bad = [n for n, g, w in zip(names, got, want) if difference(g, w, ex.atol, ex.rtol) is not None]
        good = [n for n in names if n not in bad]
        if good:
            return Diagnosis("items", f"{', '.join(bad)} {'is' if len(bad) == 1 else 'are'} wrong; "
                             f"{', '.join(good)} {'is' if len(good) == 1 else 'are'} right.")
    g, w = d.got, d.want
    if isinstance(g, torch.Tensor) and isinstance(w, torch.Tensor) and g.shape == w.shape and g.dim() >= 2:
        gd, wd = g.double(), w.double()
        close = torch.isclose(gd, wd, rtol=ex.rtol, atol=ex.atol, equal_nan=True)
        rows = ~close.reshape(-1, g.shape[-1]).all(-1)
        n_rows = rows.numel()
        if 0 < int(rows.sum()) <= n_rows // 2:
            which = rows.nonzero().flatten().tolist()
            shown = ", ".join(map(str, which[:4])) + (", ..." if len(which) > 4 else "")
            return Diagnosis("some rows", f"{d.path + ': ' if d.path else ''}only row"
                             f"{'s' if len(which) > 1 else ''} {shown} of the {n_rows} rows (along "
                             f"the last dimension) {'is' if len(which) == 1 else 'are'} wrong: what "
                             f"is special about {'it' if len(which) == 1 else 'them'}?")
    return None


_ERROR_ADVICE = [
    (r"-100|Class values must be non-negative",
     "-100 marks positions to ignore: leave them out (targets != -100) before you index or one-hot "
     "encode with the targets."),
    (r"can't be cast to the desired output type|result type .* can't be cast",
     "an in-place operation (x /= ..., x.div_(...), x.add_(...)) can't store floats in an integer "
     "tensor, and it would change your input anyway: build a new tensor (x = x / ...), converting "
     "with .double() or .float() first."),
    (r"must match the size of tensor|The size of tensor a",
     "two shapes don't line up in an elementwise operation: a reduction (sum, mean, max) without "
     "keepdim=True, or the wrong dimension."),
    (r"mat1 and mat2 shapes cannot be multiplied|shapes cannot be multiplied|size mismatch|"
     r"Expected size for first two dimensions of batch2",
     "the shapes of a matrix product don't fit: check which operand is transposed (.T, "
     ".transpose(-2, -1)) and the order of the operands."),
    (r"view size is not compatible",
     ".view needs memory laid out in order (it isn't after transpose or permute): use .reshape."),
    (r"Boolean value of Tensor with more than one",
     "`if`, `and`, `or` and `not` can't decide for a tensor of many values: use torch.where, &, | "
     "and ~ instead."),
    (r"Dimension out of range|too many indices for tensor",
     "your code assumes more (or other) dimensions than this input has: index from the end "
     "(dim=-1, x[..., i]) so that any number of leading dimensions works."),
    (r"NoneType", "an argument is None in this case (e.g. no mask): handle None before using it."),
    (r"expected scalar type|expected both vectors to have same dtype|found dtype|expected m1 and m2",
     "two tensors of different dtypes meet: convert one (.to(other.dtype))."),
    (r"not implemented for '(Long|Int|Bool)'",
     "this operation needs floats: convert with .float() or .double() first."),
]


def _error_diagnosis(e: BaseException) -> Diagnosis | None:
    text = f"{type(e).__name__}: {e}"
    for pattern, advice in _ERROR_ADVICE:
        if re.search(pattern, text):
            return Diagnosis(f"error: {pattern[:30]}", advice)
    return None


@dataclass
class _Failure:
    case: Case
    outcome: Outcome
    want: Any
    diff: Difference | None    # None when fn raised


def _nudged(v: int | float) -> list[int | float]:
    """Other values to try for a number argument: clearly different ones."""
    return [v + 1, v - 1, 2 * v] if isinstance(v, int) else ([v * 10, v / 10] if v else [0.5, -0.5])


def _ignored_argument(ex: Exercise, fn: Callable, failures: list[_Failure]) -> Diagnosis | None:
    """A number argument the learner's function ignores while the reference uses it.

    Claimed only when the function's result stays the same in every trial (other values, on every
    failing case) where the reference's result changes, and there are at least two such trials.
    """
    ok = [f for f in failures if f.outcome.kind == "ok"][:3]
    if not ok:
        return None
    first = ok[0].case
    names = _argument_names(fn, first.args, first.kwargs)
    slots = [("arg", i) for i in range(len(first.args))] + [("kw", k) for k in first.kwargs]
    for (where, i), name in zip(slots, names):
        if ex.probe_arguments is not None and name not in ex.probe_arguments:
            continue
        trials, tried = 0, []
        for f in ok:
            case = f.case
            v = case.args[i] if where == "arg" else case.kwargs.get(i)
            if not _is_number(v):
                trials = -1
                break
            for new in _nudged(v):
                if where == "arg":
                    changed = replace(case, args=tuple(new if j == i else a for j, a in enumerate(case.args)))
                else:
                    changed = replace(case, kwargs={**case.kwargs, i: new})
                ref2 = ex.run(ex.reference, changed)
                if ref2.kind != "ok" or ex.difference(ref2.value, f.want, case) is None:
                    continue  # the reference does not change either: no evidence
                got2 = ex.run(fn, changed)
                if got2.kind != "ok" or difference(got2.value, f.outcome.value, 0.0, 0.0, equal_nan=True) is not None:
                    trials = -1  # the function reacts to this argument (ignoring it gives the very same result)
                    break
                trials += 1
                tried.append(f"{v} -> {new:g}")
            if trials < 0:
                break
        if trials >= 2 and len(set(tried)) >= 2:
            return Diagnosis("ignores an argument", f"your result does not change when `{name}` "
                             f"changes ({', '.join(tried[:2])}), but it should: use the `{name}` "
                             "argument you are given, not a fixed value.")
    return None


def _diagnose(ex: Exercise, fn: Callable, failures: list[_Failure]) -> tuple[Diagnosis | None, _Failure]:
    """The advice that fits the failing cases best, and the failure it is shown with."""
    # 0. an argument the function ignores: a certain finding
    ignored = _ignored_argument(ex, fn, failures)
    if ignored is not None:
        return ignored, next(f for f in failures if f.outcome.kind == "ok")
    per_case: list[list[Diagnosis]] = []
    for f in failures:
        found: list[Diagnosis] = []
        if f.diff is None:
            e = _error_diagnosis(f.outcome.value)
            if e is not None:
                found.append(e)
        else:
            for diagnoser in ex.diagnosers:
                try:
                    r = diagnoser(f.outcome.value, f.want, f.case)
                except Exception:  # a diagnoser that cannot read this output says nothing
                    r = None
                if r is not None:
                    found.append(r)
            found += _generic_diagnoses(f.diff, f.case)
        per_case.append(found)
    # 1. one diagnosis that explains every failing case
    for candidate in per_case[0]:
        group = [next((d for d in ds if d.name == candidate.name), None) for ds in per_case]
        if any(d is None for d in group):
            continue
        if all(d.weak for d in group):  # single numbers: two cases must agree on the detail
            if len(group) < 2 or len({d.detail for d in group}) != 1:
                continue
        return candidate, failures[0]
    # 2. a property of right answers that the function breaks
    for p in ex.properties:
        try:
            advice = p.check(fn)
        except Exception:
            advice = None
        if advice:
            return Diagnosis(p.name, advice), failures[0]
    # 3. the diagnosis that explains the most failing cases (single numbers: two that agree)
    best, best_count, best_failure = None, 0, failures[0]
    for f, ds in zip(failures, per_case):
        for d in ds:
            same = [e for es in per_case for e in es if e.name == d.name
                    and (not d.weak or e.detail == d.detail)]
            if (len(same) >= 2 or not d.weak) and len(same) > best_count:
                best, best_count, best_failure = d, len(same), f
    if best is not None:
        return best, best_failure
    # 4. which parts are wrong
    for f in failures:
        if f.diff is not None:
            w = _weak_diagnosis(f.diff, _to_comparable(f.outcome.value), f.want, ex)
            if w is not None:
                return Diagnosis(w.name, f"{w.advice} {f.case.hint}".strip()), f
    return None, failures[0]


# --------------------------------------------------------------------------- checking


def _same_outputs(a: list[Outcome], b: list[Outcome], ex: Exercise, cases: list[Case]) -> bool:
    for case, oa, ob in zip(cases, a, b):
        if oa.kind != ob.kind:
            return False
        if oa.kind == "error":
            if type(oa.value) is not type(ob.value):
                return False
        elif oa.kind == "ok" and ex.difference(oa.value, ob.value, case, equal_nan=True) is not None:
            return False
    return True


def _names(items: Sequence[str]) -> str:
    return ", ".join(f"`{n}`" for n in items)


def evaluate(exercise: Exercise, fn: Callable) -> CheckResult:
    """Check `fn` against `exercise` and return the verdict without printing it."""
    if not isinstance(exercise, Exercise):
        raise TypeError(f"checker.evaluate takes an Exercise, not {exercise!r}; to check by key use "
                        f"lmcourse.exercises.evaluate({exercise!r}, fn).")
    ex = exercise
    key = ex.key
    name = getattr(fn, "__name__", key)
    cases = ex.get_cases()
    got = [ex.run(fn, c) for c in cases]
    then = f" The lesson goes on with the library's `{ex.library_name}`." if ex.library_name else ""
    todo = [c for c, o in zip(cases, got) if o.kind == "todo"]
    if len(todo) == len(cases):
        return CheckResult(key, TODO, f"⏳ {name}: not done yet. Replace `raise NotImplementedError` "
                           f"with your code, then rerun its cell and this one.{then}")
    want = [ex.run(ex.reference, c) for c in cases]
    for c, w in zip(cases, want):
        if w.kind != "ok":
            raise RuntimeError(f"the reference of {key!r} fails on case {c.name!r}: {w.value!r}")
    failures: list[_Failure] = []
    for case, o, w in zip(cases, got, want):
        if o.kind == "error":
            failures.append(_Failure(case, o, w.value, None))
        elif o.kind == "ok":
            d = ex.difference(o.value, w.value, case)
            if d is not None:
                failures.append(_Failure(case, o, w.value, d))
    changed = sorted({n for o in got for n in o.changed})
    n = len(cases)
    if not failures and not todo and not changed:
        for p in ex.properties:
            try:
                advice = p.check(fn)
            except Exception:  # the function fails on the property's own inputs: not this property's call
                advice = None
            if advice:
                return CheckResult(key, WRONG, f"❌ {name}: right on all {n} checks, but it is not "
                                   f"{p.name} on other inputs.\n   Hint: {advice}", hint=advice,
                                   diagnosis=p.name)
        return CheckResult(key, PASSED, f"✅ {name}: passed all {n} checks: "
                           f"{'; '.join(c.name for c in cases)}.")
    mistake = None
    if not todo and not changed:
        mistake = next((m for m in ex.mistakes
                        if _same_outputs(got, [ex.run(m.fn, c) for c in cases], ex, cases)), None)
    diagnosis, shown = None, failures[0] if failures else None
    if changed:
        hint = (f"don't change your inputs ({_names(changed)}) in place (x -= ..., x[mask] = ..., "
                "x.exp_(), x.mul_()): build new tensors (x = x - ..., torch.where, masked_fill).")
    elif todo:
        hint = ("finish the function: it still raises NotImplementedError on some inputs; handle "
                "those cases too (and remove every `raise NotImplementedError`).")
    elif mistake is not None:
        hint = mistake.hint
    else:
        try:
            diagnosis, shown = _diagnose(ex, fn, failures)
        except Exception:  # finding advice must never stop the verdict
            diagnosis, shown = None, failures[0]
        hint = diagnosis.advice if diagnosis is not None else (
            shown.case.hint or "compare your code with the formula above.")
    parts = []
    if changed:
        count = sum(1 for o in got if o.changed)
        parts.append(f"it changed its input {_names(changed)} in place (on {count} of {n} checks)")
    if todo:
        parts.append(f"partly done: it still raises NotImplementedError on {len(todo)} of {n} "
                     f"checks ({'; '.join(repr(c.name) for c in todo)})")
    if shown is not None:
        what = f"raised {type(shown.outcome.value).__name__}: {shown.outcome.value}" \
            if shown.diff is None else str(shown.diff)
        label = "first" if shown is failures[0] else "e.g."
        wrong_on = f"wrong on {len(failures)} of {n} checks; {label}: '{shown.case.name}' ({what})"
        parts.append(("also " if parts else "") + wrong_on)
    msg = f"❌ {name}: {'; '.join(parts)}.\n   Hint: {hint}"
    return CheckResult(key, WRONG, msg, hint=hint, failed_case=shown.case.name if shown else "",
                       mistake=mistake.name if mistake else "",
                       diagnosis=diagnosis.name if diagnosis else ("in place" if changed else ""))


def check(exercise: Exercise, fn: Callable) -> CheckResult:
    """Check a learner's function against `exercise`, print the verdict, and return it."""
    try:
        result = evaluate(exercise, fn)
    except Exception as e:  # a bug in the checking itself must not stop the lesson
        result = CheckResult(exercise.key, WRONG, f"❌ the check of {exercise.key!r} itself failed "
                             f"(a bug in the course, not necessarily in your code): "
                             f"{type(e).__name__}: {e}", hint=str(e))
    print(result.message)
    if result.status == WRONG and env_flag(ENV_STRICT):
        raise AssertionError(f"{ENV_STRICT}=1 and exercise {exercise.key!r} failed:\n{result.message}")
    return result
