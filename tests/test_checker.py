"""Tests for lmcourse.checker: verdicts, hints, comparison, strictness, never raising."""

import pytest
import torch

from lmcourse import checker
from lmcourse.checker import Case, Exercise, Mistake


def _ref(x):
    return x * 2


@pytest.fixture
def toy(monkeypatch):
    ex = Exercise(
        key="toy_double", lesson="99", reference=_ref, library_name="lm.toy",
        cases=[Case("vector", (torch.tensor([1.0, 2.0]),), hint="multiply by two"),
               Case("negative", (torch.tensor([-3.0]),), hint="signs matter")],
        mistakes=[Mistake("added", lambda x: x + 2, "double, don't add"),
                  Mistake("abs", lambda x: x.abs() * 2, "keep the sign")],
    )
    monkeypatch.setitem(checker._REGISTRY, ex.key, ex)
    return ex


def test_passed(toy, capsys):
    r = checker.check("toy_double", lambda x: x + x)
    assert r.passed and "✅" in capsys.readouterr().out


def test_not_done_yet_does_not_raise(toy, capsys, monkeypatch):
    monkeypatch.setenv("LMCOURSE_STRICT_CHECKS", "1")

    def stub(x):
        raise NotImplementedError

    r = checker.check("toy_double", stub)
    assert r.status == checker.TODO
    out = capsys.readouterr().out
    assert "not done yet" in out and "lm.toy" in out


def test_known_mistake_gets_its_hint(toy):
    r = checker.evaluate("toy_double", lambda x: x.abs() * 2)
    assert r.status == checker.WRONG and r.mistake == "abs" and r.hint == "keep the sign"
    assert r.failed_case == "negative"


def test_unknown_mistake_gets_the_case_hint(toy):
    r = checker.evaluate("toy_double", lambda x: x * 3)
    assert r.status == checker.WRONG and r.mistake == "" and r.hint == "multiply by two"
    assert "max abs difference" in r.message


def test_exceptions_and_shapes_are_reported_not_raised(toy, monkeypatch):
    monkeypatch.delenv("LMCOURSE_STRICT_CHECKS", raising=False)
    r = checker.check("toy_double", lambda x: 1 / 0)
    assert r.status == checker.WRONG and "ZeroDivisionError" in r.message
    r = checker.check("toy_double", lambda x: (x * 2).unsqueeze(0))
    assert r.status == checker.WRONG and "shape" in r.message


def test_strict_mode_raises_on_wrong(toy, monkeypatch):
    monkeypatch.setenv("LMCOURSE_STRICT_CHECKS", "1")
    with pytest.raises(AssertionError, match="toy_double"):
        checker.check("toy_double", lambda x: x + 2)


def test_in_place_change_of_inputs_is_caught(toy):
    def sneaky(x):
        x.mul_(2)
        return x.clone()

    r = checker.evaluate("toy_double", sneaky)
    assert r.status == checker.WRONG and "in place" in r.message


def test_unknown_key_lists_the_known_ones():
    with pytest.raises(KeyError, match="softmax"):
        checker.get("no_such_exercise")


def test_duplicate_keys_are_refused(toy):
    with pytest.raises(ValueError, match="unique"):
        checker.register(Exercise(key="toy_double", lesson="x", reference=_ref, cases=[]))


@pytest.mark.parametrize("got, want, ok", [
    (torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0 + 1e-7]), True),
    (torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.1]), False),
    (torch.tensor([float("nan")]), torch.tensor([1.0]), False),
    (torch.tensor([1.0]), torch.tensor([[1.0]]), False),
    (1.0, torch.tensor(1.0), True),
    (torch.tensor(3.0), 3.0, True),
    ((torch.ones(2), 2.0), (torch.ones(2), 2.0), True),
    ((torch.ones(2),), (torch.ones(2), 2.0), False),
    ({"a": torch.ones(1)}, {"a": torch.zeros(1)}, False),
    ("x", 1.0, False),
])
def test_compare(got, want, ok):
    assert (checker.compare(got, want, 1e-5, 1e-4) is None) == ok
