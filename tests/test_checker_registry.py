"""The registry lives in lmcourse.exercises; lmcourse.checker is mechanism only; lm.check works by key."""

import ast
import subprocess
import sys

import pytest
import torch

import lmcourse as lm
from lmcourse import checker, lm_math
from lmcourse import exercises as registry
from lmcourse.checker import Case, Exercise

from .conftest import ROOT


def _python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_checker_does_not_import_the_exercises():
    tree = ast.parse((ROOT / "lmcourse" / "checker.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {f"lmcourse.{a.name}" for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom) and n.module == "lmcourse" for a in n.names}
    assert not any(m and m.startswith("lmcourse.exercises") for m in imported), imported
    assert "exercises" not in {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    # importing the course loads no lesson module until an exercise is looked up
    assert _python("import sys, lmcourse; print(any('lmcourse.exercises.lesson' in m for m in sys.modules))") == "False"


def test_lesson_modules_load_on_first_use():
    code = "import lmcourse as lm; print(lm.exercises.lesson04.make_block('post_ln').__class__.__name__)"
    assert _python(code) == "EncoderBlock"


def test_lm_check_is_the_registry_s_check(capsys):
    assert lm.check is registry.check
    r = lm.check("normalize", lambda c: c.double() / c.sum(-1, keepdim=True))
    assert r.passed and "✅" in capsys.readouterr().out


def test_unknown_key_lists_the_known_ones(capsys, monkeypatch):
    with pytest.raises(KeyError, match="softmax"):
        registry.get("no_such_exercise")
    monkeypatch.delenv("LMCOURSE_STRICT_CHECKS", raising=False)
    r = lm.check("no_such_exercise", lambda x: x)
    assert r.status == checker.WRONG and "softmax" in capsys.readouterr().out
    monkeypatch.setenv("LMCOURSE_STRICT_CHECKS", "1")
    with pytest.raises(AssertionError, match="no_such_exercise"):
        lm.check("no_such_exercise", lambda x: x)


def test_duplicate_keys_are_refused():
    ex = registry.get("softmax")
    assert registry.register(ex) is ex  # the same exercise again is fine
    with pytest.raises(ValueError, match="unique"):
        registry.register(Exercise(key="softmax", lesson="x", reference=abs, cases=[Case("c")]))


def test_bigram_sequence_log_prob_is_the_chain_rule():
    probs = torch.tensor([[0.5, 0.5], [0.1, 0.9]], dtype=torch.float64)
    ids = torch.tensor([0, 1, 1, 0])
    expected = torch.log(torch.tensor(0.5 * 0.9 * 0.1, dtype=torch.float64))
    assert torch.allclose(lm_math.bigram_sequence_log_prob(probs, ids), expected)
    assert lm_math.bigram_sequence_log_prob(probs, ids[:1]) == 0  # one token: no transition
    assert lm_math.sequence_log_prob([-0.5, -1.25]) == pytest.approx(-1.75)  # unchanged
    ex = registry.get("bigram_sequence_log_prob")
    assert ex.reference is lm_math.bigram_sequence_log_prob
    assert ex.library_name == "lm.lm_math.bigram_sequence_log_prob"
    assert "sequence_log_prob" not in registry.exercises()
