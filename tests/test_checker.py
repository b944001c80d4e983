"""Tests for lmcourse.checker: verdicts, hints, comparison, strictness, never raising."""

import numpy as np
import pytest
import torch

from lmcourse import checker
from lmcourse.checker import Case, Exercise, Mistake


def _ref(x):
    return x * 2


@pytest.fixture
def toy():
    return Exercise(
        key="toy_double", lesson="99", reference=_ref, library_name="lm.toy",
        cases=[Case("vector", (torch.tensor([1.0, 2.0]),), hint="multiply by two"),
               Case("negative", (torch.tensor([-3.0]),), hint="signs matter")],
        mistakes=[Mistake("added", lambda x: x + 2, "double, don't add"),
                  Mistake("abs", lambda x: x.abs() * 2, "keep the sign")],
    )


def test_passed(toy, capsys):
    r = checker.check(toy, lambda x: x + x)
    assert r.passed and "✅" in capsys.readouterr().out


def test_not_done_yet_does_not_raise(toy, capsys, monkeypatch):
    monkeypatch.setenv("LMCOURSE_STRICT_CHECKS", "1")

    def stub(x):
        raise NotImplementedError

    r = checker.check(toy, stub)
    assert r.status == checker.TODO
    out = capsys.readouterr().out
    assert "not done yet" in out and "lm.toy" in out


def test_known_mistake_gets_its_hint(toy):
    r = checker.evaluate(toy, lambda x: x.abs() * 2)
    assert r.status == checker.WRONG and r.mistake == "abs" and r.hint == "keep the sign"
    assert r.failed_case == "negative"


def test_unknown_mistake_gets_the_case_hint_when_nothing_is_diagnosed(toy):
    r = checker.evaluate(toy, lambda x: x * 2 + x ** 2)
    assert r.status == checker.WRONG and r.mistake == "" and r.diagnosis == ""
    assert r.hint == "multiply by two" and "max abs difference" in r.message


def test_unknown_mistake_gets_a_diagnosis_when_one_fits(toy):
    r = checker.evaluate(toy, lambda x: x * 3)
    assert r.status == checker.WRONG and r.mistake == "" and r.diagnosis == "constant factor"
    assert "1.5 times" in r.hint


def test_exceptions_and_shapes_are_reported_not_raised(toy, monkeypatch):
    monkeypatch.delenv("LMCOURSE_STRICT_CHECKS", raising=False)
    r = checker.check(toy, lambda x: 1 / 0)
    assert r.status == checker.WRONG and "ZeroDivisionError" in r.message
    r = checker.check(toy, lambda x: (x * 2).unsqueeze(0))
    assert r.status == checker.WRONG and "shape" in r.message


def test_strict_mode_raises_on_wrong(toy, monkeypatch):
    monkeypatch.setenv("LMCOURSE_STRICT_CHECKS", "1")
    with pytest.raises(AssertionError, match="toy_double"):
        checker.check(toy, lambda x: x + 2)


def test_in_place_change_of_inputs_is_caught(toy):
    def sneaky(x):
        x.mul_(2)
        return x.clone()

    r = checker.evaluate(toy, sneaky)
    assert r.status == checker.WRONG and "in place" in r.message and "`x`" in r.message


def test_in_place_is_reported_even_when_the_output_is_also_wrong(toy):
    def sneaky_and_wrong(x):
        x.add_(1)
        return x * 5

    r = checker.evaluate(toy, sneaky_and_wrong)
    assert r.status == checker.WRONG and r.diagnosis == "in place"
    assert "in place" in r.message and "also wrong on 2 of 2" in r.message
    assert "in place" in r.hint


def test_a_checker_bug_is_reported_without_blaming_the_learner(toy, capsys, monkeypatch):
    monkeypatch.delenv("LMCOURSE_STRICT_CHECKS", raising=False)
    broken = Exercise(key="broken", lesson="99", reference=lambda x: 1 / 0,
                      cases=[Case("c", (1.0,), hint="h")])
    r = checker.check(broken, lambda x: x)
    assert r.status == checker.WRONG and "itself failed" in capsys.readouterr().out


def test_evaluate_by_key_is_the_registry_s_job(toy):
    with pytest.raises(TypeError, match="lmcourse.exercises.evaluate"):
        checker.evaluate("toy_double", _ref)


@pytest.mark.parametrize("got, want, ok", [
    (torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0 + 1e-7]), True),
    (torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.1]), False),
    (torch.tensor([float("nan")]), torch.tensor([1.0]), False),
    (torch.tensor([1.0]), torch.tensor([[1.0]]), False),
    (1.0, torch.tensor(1.0), True),                 # a Python float for a 0-d tensor
    (2, torch.tensor(2.0), True),                   # a Python int for a 0-d float tensor
    (torch.tensor(3.0), 3.0, True),                 # a 0-d tensor for a Python number
    (np.float64(3.0), 3.0, True),                   # a numpy number for a Python number
    (torch.tensor([1.0], dtype=torch.float64), torch.tensor([1.0]), True),  # any float precision
    ((torch.ones(2), 2.0), (torch.ones(2), 2.0), True),
    ([torch.ones(2), 2.0], (torch.ones(2), 2.0), True),  # a list where a tuple is expected
    ((torch.ones(2),), (torch.ones(2), 2.0), False),
    ({"a": torch.ones(1)}, {"a": torch.zeros(1)}, False),
    ("x", 1.0, False),
    # types that must never pass
    (torch.ones(3, dtype=torch.bool), torch.ones(3), False),      # bool for floats
    (torch.ones(3), torch.ones(3, dtype=torch.bool), False),      # floats for a mask
    (torch.ones(3, dtype=torch.long), torch.ones(3), False),      # integers for floats
    (torch.ones(3), torch.ones(3, dtype=torch.long), False),      # floats for integer ids
    ([1.0, 1.0, 1.0], torch.ones(3), False),                      # a list for a tensor
    (np.ones(3), torch.ones(3), False),                           # a numpy array for a tensor
    (1.0, torch.ones(1), False),                                  # a number for a (1,) tensor
    (True, 1.0, False),                                           # a bool for a number
    (torch.tensor(True), 1.0, False),
    (torch.ones(1), 1.0, False),                                  # a (1,) tensor for a number
    (torch.ones(2, 3), (torch.ones(3), torch.ones(3)), False),    # stacked for a tuple
])
def test_compare(got, want, ok):
    assert (checker.compare(got, want, 1e-5, 1e-4) is None) == ok


def test_compare_never_raises_on_strange_outputs():
    strange = [None, "text", object(), np.array([object(), 1], dtype=object), np.ones((2, 2)),
               [np.ones(2)], {"a": 1}, (x for x in range(2)), torch.ones(2, dtype=torch.complex64)]
    for want in (torch.ones(2), 1.0, (torch.ones(2), torch.ones(2)), {"a": torch.ones(1)}, True):
        for got in strange:
            assert checker.compare(got, want, 1e-5, 1e-4) is not None
