"""Wrong types are wrong answers on every exercise, and the verdicts say clearly what is wrong."""

import numpy as np
import pytest
import torch

from lmcourse import checker
from lmcourse import exercises as registry

EXERCISES = registry.exercises()


def _mangle(out, how):
    """The reference's output with every tensor turned into something of the wrong type."""
    if isinstance(out, torch.Tensor):
        if how == "bool":
            return out != 0
        if how == "float" and not out.is_floating_point():
            return out.float()
        if how == "int" and out.is_floating_point():
            return out.round().long()
        if how == "list":
            return out.tolist() if out.dim() else [out.item()]  # a 0-d tensor's tolist() is a number
        if how == "numpy":
            return out.detach().numpy()
        return out
    if isinstance(out, tuple):
        return tuple(_mangle(o, how) for o in out)
    if isinstance(out, dict):
        return {k: _mangle(v, how) for k, v in out.items()}
    if isinstance(out, float) and how == "bool":
        return bool(out)
    return out


def _raw_output(ex):
    """What the reference function itself returns on the first case (before any `call` work)."""
    captured = []

    def capture(*args, **kwargs):
        captured.append(ex.reference(*args, **kwargs))
        return captured[-1]

    ex.run(capture, ex.get_cases()[0])
    return captured[0]


def _kinds(out):
    """The type of every leaf of an output, and for tensors their kind of dtype."""
    if isinstance(out, torch.Tensor):
        return [("tensor", "bool" if out.dtype == torch.bool else
                 "float" if out.is_floating_point() else "int")]
    if isinstance(out, (tuple, list)):
        return [type(out).__name__] + [k for o in out for k in _kinds(o)]
    if isinstance(out, dict):
        return ["dict"] + [k for v in out.values() for k in _kinds(v)]
    return [type(out).__name__]


def _changes_type(ex, how) -> bool:
    raw = _raw_output(ex)
    return _kinds(_mangle(raw, how)) != _kinds(raw)


CASES = [(k, how) for k in sorted(EXERCISES) for how in ("bool", "float", "int", "list", "numpy")
         if _changes_type(EXERCISES[k], how)]


@pytest.mark.parametrize("key, how", CASES, ids=[f"{k}-{h}" for k, h in CASES])
def test_the_reference_with_the_wrong_type_is_rejected(key, how):
    ex = EXERCISES[key]
    ref = ex.reference

    def mangled(*args, **kwargs):
        return _mangle(ref(*args, **kwargs), how)

    r = checker.evaluate(ex, mangled)
    assert r.status == checker.WRONG, f"{key}: the reference as {how} passed: {r.message}"


def test_an_all_true_tensor_is_not_a_softmax():
    r = registry.evaluate("softmax", lambda x: torch.ones_like(x, dtype=torch.bool))
    assert r.status == checker.WRONG and "bool" in r.message and "float" in r.message


def test_a_python_float_for_a_0d_tensor_is_accepted():
    r = registry.evaluate("cross_entropy", lambda lg, t: float(torch.nn.functional.cross_entropy(lg, t)))
    assert r.passed, r.message


def test_a_stacked_tensor_where_a_tuple_is_expected_says_so():
    r = registry.evaluate("causal_lm_targets", lambda ids: torch.stack([ids[..., :-1], ids[..., 1:]]))
    assert r.status == checker.WRONG
    assert "stacked" in r.message and "tuple of 2" in r.message and "(inputs, targets)" in r.message
    assert "torch.stack" in r.hint and "return a, b" in r.hint


def test_finite_values_where_minus_inf_is_expected_say_where_and_how_many():
    def zero_fill(logits, k):
        kth = torch.topk(logits, min(k, logits.shape[-1])).values[..., -1:]
        return logits.masked_fill(logits < kth, 0.0)

    ex = EXERCISES["top_k_filter"]
    ex = checker.Exercise(**{**ex.__dict__, "mistakes": ()})  # without the catalog: the generic words
    r = checker.evaluate(ex, zero_fill)
    assert "3 entries should be -inf but are not at [0], [2], [4]" in r.message
    assert "are 0 in yours" in r.hint and "-inf" in r.hint


def test_a_numpy_object_array_is_the_learner_s_type_not_a_checker_bug():
    def objects(x):
        return np.array([object()] * x.shape[-1], dtype=object)

    r = registry.evaluate("softmax", objects)
    assert r.status == checker.WRONG
    assert "numpy array of Python objects" in r.message and "dtype=object" in r.hint
    assert "itself failed" not in r.message and "could not check" not in r.message


def test_not_implemented_for_some_cases_is_partly_done_not_not_done(monkeypatch):
    def only_2d(x):
        if x.dim() > 2:
            raise NotImplementedError
        return torch.softmax(x, -1)

    r = registry.evaluate("softmax", only_2d)
    assert r.status == checker.WRONG
    assert "partly done" in r.message and "not done yet" not in r.message and "'3-D input'" in r.message
    monkeypatch.setenv("LMCOURSE_STRICT_CHECKS", "1")
    with pytest.raises(AssertionError):
        registry.check("softmax", only_2d)


def test_not_implemented_everywhere_is_not_done_yet():
    def stub(x):
        raise NotImplementedError

    assert registry.evaluate("softmax", stub).status == checker.TODO


def test_passed_lists_its_checks_separated_so_commas_in_names_do_not_mislead():
    ex = checker.Exercise(key="toy_names", lesson="99", reference=lambda x: x,
                          cases=[checker.Case("a, b", (1.0,), hint="h"),
                                 checker.Case("c", (2.0,), hint="h")])
    r = checker.evaluate(ex, lambda x: x)
    assert r.passed and "passed all 2 checks: a, b; c." in r.message
    assert len(r.message.split(": ", 2)[2].rstrip(".").split("; ")) == 2


@pytest.mark.parametrize("key", sorted(EXERCISES))
def test_case_names_are_unique_and_free_of_the_separator(key):
    names = [c.name for c in EXERCISES[key].get_cases()]
    assert len(set(names)) == len(names), f"{key}: two cases share a name"
    assert not any(";" in n or "," in n for n in names), f"{key}: a case name holds ';' or ','"
