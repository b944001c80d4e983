"""Advice that fits the actual mistake: the generic diagnosers, how one is chosen, and properties."""

import math

import pytest
import torch

from lmcourse import checker
from lmcourse.checker import Case, Diagnosis, Exercise, Property

G = torch.Generator().manual_seed(0)
ROWS = torch.rand(3, 4, generator=G) + 0.1


def _normalise(x):
    return x / x.sum(-1, keepdim=True)


NORMALISE = Exercise(key="toy_normalise", lesson="99", reference=_normalise, cases=[
    Case("a batch", (ROWS,), hint="the case hint"),
    Case("a square batch", (torch.rand(4, 4, generator=G) + 0.1,), hint="the case hint"),
])


def _keep_positive(x):
    return x.masked_fill(x <= 0, -math.inf)


FILTER = Exercise(key="toy_filter", lesson="99", reference=_keep_positive, cases=[
    Case("mixed", (torch.tensor([[1.0, -2.0, 3.0, -4.0], [-1.0, 2.0, 0.5, -0.5]]),), hint="the case hint"),
])


@pytest.mark.parametrize("fn, name, words", [
    (lambda x: x / x.sum(0, keepdim=True), "normalised along the wrong dimension", "dimension 0"),
    (lambda x: x / x.sum(), "normalised over everything", "each row"),
    (lambda x: x / x.amax(-1, keepdim=True), "rows do not sum to 1", "sum to"),
    (lambda x: -_normalise(x), "sign flipped", "minus"),
    (lambda x: _normalise(x).log(), "log of the result", "logarithm"),
    (lambda x: _normalise(x) + 0.5, "constant offset", "+0.5"),
    (lambda x: _normalise(x).tolist(), "list result", "list"),
    (lambda x: _normalise(x).numpy(), "numpy result", "numpy"),
    (lambda x: _normalise(x) > 0.2, "bool result", "bool"),
    (lambda x: _normalise(x).sum(-1), "dimension lost", "keepdim"),
    (lambda x: _normalise(x)[None], "extra dimension", "too many"),
])
def test_generic_diagnoses_of_a_normalisation(fn, name, words):
    r = checker.evaluate(NORMALISE, fn)
    assert r.status == checker.WRONG and r.diagnosis == name, r.message
    assert words in r.hint


def test_a_row_divided_by_another_row_s_total():
    square = Exercise(**{**NORMALISE.__dict__, "cases": NORMALISE.get_cases()[1:]})
    r = checker.evaluate(square, lambda x: x / x.sum(-1))
    assert r.diagnosis == "total of the wrong row" and "keepdim=True" in r.hint
    r = checker.evaluate(NORMALISE, lambda x: x / x.sum(-1))  # on (3, 4) the shapes don't line up
    assert "keepdim=True" in r.hint


def test_transposed_and_factor():
    r = checker.evaluate(NORMALISE, lambda x: _normalise(x).T if x.shape[0] == x.shape[1] else _normalise(x))
    assert r.diagnosis == "transposed"
    double = Exercise(key="toy_double", lesson="99", reference=lambda x: 2 * x,
                      cases=[Case("v", (torch.tensor([1.0, -2.0, 3.0]),), hint="h")])
    r = checker.evaluate(double, lambda x: 200 * x)
    assert r.diagnosis == "constant factor" and "100 times" in r.hint and "percentage" in r.hint


@pytest.mark.parametrize("fn, name", [
    (lambda x: x.masked_fill(x <= 0, -1e9), "finite instead of -inf"),
    (lambda x: x.masked_fill(x < -1, -math.inf), "too few -inf"),
    (lambda x: x.masked_fill(x <= 1, -math.inf), "too many -inf"),
    (lambda x: _keep_positive(x) - 1.0, "constant offset"),
    (lambda x: torch.softmax(_keep_positive(x), -1), "softmax of the result"),
])
def test_generic_diagnoses_of_a_filter(fn, name):
    r = checker.evaluate(FILTER, fn)
    assert r.status == checker.WRONG and r.diagnosis == name, r.message


def test_nan_is_diagnosed_with_the_case_s_hint():
    r = checker.evaluate(NORMALISE, lambda x: _normalise(x) * (x - x))  # 0 * ... fine, then 0/0:
    assert r.status == checker.WRONG
    r = checker.evaluate(NORMALISE, lambda x: _normalise(x) * torch.nan)
    assert r.diagnosis == "nan or inf" and "the case hint" in r.hint


def test_bool_masks_inverted_and_diagonal():
    ex = Exercise(key="toy_mask", lesson="99", reference=lambda n: torch.ones(n, n, dtype=torch.bool).tril(),
                  cases=[Case("4", (4,), hint="h"), Case("3", (3,), hint="h")])
    assert checker.evaluate(ex, lambda n: ~torch.ones(n, n, dtype=torch.bool).tril()).diagnosis == "inverted"
    assert checker.evaluate(ex, lambda n: torch.ones(n, n, dtype=torch.bool).tril(-1)).diagnosis == "diagonal"
    assert checker.evaluate(ex, lambda n: torch.ones(n, n, dtype=torch.bool).triu()).diagnosis == "transposed"


def test_one_number_alone_proves_no_relation_but_two_that_agree_do():
    mean = Exercise(key="toy_mean", lesson="99", reference=lambda x: x.mean(), cases=[
        Case("a", (torch.tensor([1.0, 2.0]),), hint="hint a"),
        Case("b", (torch.tensor([3.0, 5.0]),), hint="hint b")])
    r = checker.evaluate(mean, lambda x: x.mean() * 100 if x[0] == 1 else x.mean())
    assert r.diagnosis == "" and r.hint == "hint a"      # one failing case: no claim
    r = checker.evaluate(mean, lambda x: x.mean() * 100)
    assert r.diagnosis == "constant factor" and "100 times" in r.hint
    r = checker.evaluate(mean, lambda x: x.mean() * (2 if x[0] == 1 else 3))
    assert r.diagnosis != "constant factor"             # factors that disagree explain nothing


def test_a_diagnosis_that_explains_every_failing_case_beats_one_that_explains_the_first():
    only_first = Diagnosis("first only", "seen on the first case")

    def diagnoser(got, want, case):
        return only_first if case.name == "a batch" else None

    ex = Exercise(**{**NORMALISE.__dict__, "diagnosers": [diagnoser]})
    r = checker.evaluate(ex, lambda x: 3 * _normalise(x))
    assert r.diagnosis == "rows do not sum to 1"
    r = checker.evaluate(ex, lambda x: 3 * _normalise(x) if x.shape[0] == 3 else _normalise(x))
    assert r.diagnosis == "first only"                    # the exercise's own comes first


def test_a_property_gives_advice_when_no_diagnosis_fits_and_fails_a_passing_answer():
    def symmetric(fn):
        return None if fn(torch.tensor([1.0, -1.0])).tolist() == [2.0, -2.0] else "odd function!"

    ex = Exercise(key="toy_prop", lesson="99", reference=lambda x: 2 * x,
                  cases=[Case("positive", (torch.tensor([1.0, 2.0]),), hint="h")],
                  properties=[Property("odd", symmetric)])
    r = checker.evaluate(ex, lambda x: 2 * x.abs())
    assert r.passed is False and r.diagnosis == "odd" and r.hint == "odd function!"
    assert "right on all 1 checks" in r.message


def test_an_ignored_argument_is_named():
    ex = Exercise(key="toy_scale", lesson="99", reference=lambda x, a: x * a,
                  cases=[Case("a = 3", (torch.tensor([1.0, 2.0]), 3.0), hint="h"),
                         Case("a = 0.5", (torch.tensor([1.0, 4.0]), 0.5), hint="h")])

    def fixed(x, alpha):
        return x * 2.0

    r = checker.evaluate(ex, fixed)
    assert r.diagnosis == "ignores an argument" and "`alpha`" in r.hint

    def uses_it_but_wrongly(x, alpha):
        return x * alpha + 1

    assert checker.evaluate(ex, uses_it_but_wrongly).diagnosis != "ignores an argument"

    def barely_uses_it(x, alpha):  # uses alpha, if only a little: no claim that it ignores it
        return x * 2.0 + alpha * 1e-3

    assert checker.evaluate(ex, barely_uses_it).diagnosis != "ignores an argument"


def test_probe_arguments_limit_which_arguments_may_be_called_ignored():
    def make(probe):
        return Exercise(key="toy_scale_shift", lesson="99", reference=lambda x, a, b: x * a + b,
                        cases=[Case("a = 3", (torch.tensor([1.0, 2.0]), 3.0, 1.0), hint="h"),
                               Case("a = 0.5", (torch.tensor([1.0, 4.0]), 0.5, 2.0), hint="h")],
                        probe_arguments=probe)

    def fixed_scale(x, alpha, beta):
        return x * 2.0 + beta

    r = checker.evaluate(make(None), fixed_scale)
    assert r.diagnosis == "ignores an argument" and "`alpha`" in r.hint
    assert checker.evaluate(make(("alpha",)), fixed_scale).diagnosis == "ignores an argument"
    assert checker.evaluate(make(("beta",)), fixed_scale).diagnosis != "ignores an argument"


def test_inputs_changed_in_place_are_restored_before_a_call_computes_statistics():
    def call(fn, x):  # a statistic computed from the input AFTER fn ran, as lesson 05b does
        out = fn(x)
        return float((out - x).abs().sum())

    ex = Exercise(key="toy_stat", lesson="99", reference=lambda x: 2 * x, call=call,
                  cases=[Case("v", (torch.tensor([1.0, -2.0]),), hint="h")])

    def right_but_in_place(x):
        x.mul_(2)
        return x.clone()

    r = checker.evaluate(ex, right_but_in_place)
    assert r.status == checker.WRONG and "in place" in r.message
    assert "wrong on" not in r.message  # its output is right once the input is put back

    def in_place_and_wrong(x):
        x.mul_(2)
        return x * 3

    r = checker.evaluate(ex, in_place_and_wrong)
    assert "in place" in r.message and "also wrong on 1 of 1" in r.message
