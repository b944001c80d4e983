"""Learner progress: lm.check records passes in $LMCOURSE_CACHE/progress.json, lm.progress() shows
every exercise with the passed ones marked, and the file is never required."""

import json
import os

import pytest

import lmcourse as lm
from lmcourse import exercises as registry
from lmcourse import learner_progress as lp
from lmcourse.cli import main

M = lm.lm_math


def _stub(*args, **kwargs):
    raise NotImplementedError("exercise not done yet")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A course cache of this test's own, strict checks off, no note said yet."""
    monkeypatch.setenv("LMCOURSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LMCOURSE_STRICT_CHECKS", raising=False)
    monkeypatch.setattr(lp, "_said", set())
    return tmp_path / "cache"


def _recorded(cache):
    return json.loads((cache / lp.FILE_NAME).read_text(encoding="utf-8"))["passed"]


def test_a_pass_is_recorded_and_nothing_else(cache):
    assert lm.check("softmax", M.softmax).passed
    lm.check("perplexity", _stub)                                     # not done
    lm.check("cross_entropy", lambda z, y, ignore_index=-100: z.sum())  # wrong
    lm.check("no_such_exercise", M.softmax)                           # unknown key
    passed = _recorded(cache)
    assert set(passed) == {"softmax"}
    assert passed["softmax"]["lesson"] == "01_lm_math" and passed["softmax"]["first"]
    assert lp.read_passes()[0] == passed
    old = "2000-01-01T00:00:00+0000"
    (cache / lp.FILE_NAME).write_text(json.dumps(
        {"passed": {"softmax": {"lesson": "01_lm_math", "first": old, "last": old}}}))
    lm.check("softmax", M.softmax)  # passing again keeps the first time, updates the last
    again = _recorded(cache)["softmax"]
    assert again["first"] == old and again["last"] > old


def test_progress_lists_every_exercise_and_marks_the_passed_ones(cache, capsys):
    lm.check("softmax", M.softmax)
    lm.check("perplexity", M.perplexity)
    capsys.readouterr()
    report = lm.progress()
    out = capsys.readouterr().out
    everything = registry.exercises()
    assert report.n_exercises == len(everything) and report.n_passed == 2
    assert out.startswith(f"Exercises passed: 2 of {len(everything)} (recorded in {cache / lp.FILE_NAME})")
    for key in everything:
        mark = lp.PASS_MARK if key in ("softmax", "perplexity") else lp.TODO_MARK
        assert f"{mark} {key}" in out, key
    n_lesson01 = sum(ex.lesson == "01_lm_math" for ex in everything.values())
    line = next(x for x in out.splitlines() if x.startswith("01_lm_math"))
    assert f" 2/{n_lesson01} " in line
    assert " 0/1 " in next(x for x in out.splitlines() if x.startswith("00_welcome"))
    assert repr(report) == f"Progress(passed=2, exercises={len(everything)})"


def test_lm_progress_is_a_function_and_a_command(cache, capsys):
    assert lm.progress is lp.progress
    lm.check("normalize", lambda c: c.double() / c.sum(-1, keepdim=True))
    capsys.readouterr()
    assert main(["progress"]) == 0
    assert f"{lp.PASS_MARK} normalize" in capsys.readouterr().out


@pytest.mark.parametrize("text", ["{ half a file", "[1, 2]", '{"passed": 3}', "\udcff"])
def test_a_corrupt_file_never_stops_a_check_and_is_replaced(cache, capsys, text):
    cache.mkdir(parents=True)
    (cache / lp.FILE_NAME).write_text(text, encoding="utf-8", errors="surrogateescape")
    report = lm.progress()
    assert report.n_passed == 0 and report.problem
    assert "nothing shown as passed" in capsys.readouterr().out
    assert lm.check("softmax", M.softmax).passed
    assert set(_recorded(cache)) == {"softmax"}  # the next pass wrote a good file


def test_an_unwritable_cache_never_stops_a_check(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("LMCOURSE_CACHE", str(blocker / "cache"))  # below a file: cannot be made
    monkeypatch.delenv("LMCOURSE_STRICT_CHECKS", raising=False)
    monkeypatch.setattr(lp, "_said", set())
    assert lm.check("softmax", M.softmax).passed
    assert lm.check("perplexity", M.perplexity).passed
    out = capsys.readouterr().out
    assert out.count("progress not recorded") == 1  # said once, not at every check
    assert lm.progress(show=False).n_passed == 0


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root writes into read-only folders")
def test_a_read_only_cache_never_stops_a_check(cache, capsys):
    cache.mkdir(parents=True)
    cache.chmod(0o500)
    try:
        assert lm.check("softmax", M.softmax).passed
        assert "progress not recorded" in capsys.readouterr().out
        assert not (cache / lp.FILE_NAME).exists()
    finally:
        cache.chmod(0o700)


def test_a_failed_write_leaves_the_old_file_whole(cache, monkeypatch, capsys):
    lm.check("softmax", M.softmax)
    before = (cache / lp.FILE_NAME).read_text(encoding="utf-8")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lp.os, "replace", disk_full)
    assert lm.check("perplexity", M.perplexity).passed
    assert "No space left on device" in capsys.readouterr().out
    assert (cache / lp.FILE_NAME).read_text(encoding="utf-8") == before
    assert [p.name for p in cache.iterdir()] == [lp.FILE_NAME]  # no temporary file left behind
