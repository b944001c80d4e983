"""Every registered exercise: the reference passes, every catalogued mistake fails with its hint."""

import pytest

from lmcourse import checker
from lmcourse import exercises as registry
from lmcourse.notebooks import exercise_keys, lesson_notebooks

from .conftest import ROOT

EXERCISES = registry.exercises()
MISTAKES = [(k, m) for k, ex in EXERCISES.items() for m in ex.mistakes]


@pytest.mark.parametrize("key", sorted(EXERCISES))
def test_reference_passes(key):
    result = checker.evaluate(EXERCISES[key], EXERCISES[key].reference)
    assert result.passed, result.message


@pytest.mark.parametrize("key", sorted(EXERCISES))
def test_catalog_has_three_mistakes_and_hinted_cases(key):
    ex = EXERCISES[key]
    assert len(ex.mistakes) >= 3, f"{key}: catalog has {len(ex.mistakes)} mistakes, needs >= 3"
    assert all(c.hint for c in ex.get_cases()), f"{key}: every case needs a hint"
    assert len({m.hint for m in ex.mistakes}) == len(ex.mistakes), f"{key}: hints must differ"


@pytest.mark.parametrize("key, mistake", MISTAKES, ids=[f"{k}-{m.name}" for k, m in MISTAKES])
def test_each_mistake_is_rejected_with_its_hint(key, mistake):
    result = checker.evaluate(EXERCISES[key], mistake.fn)
    assert result.status == checker.WRONG, f"{key}: mistake {mistake.name!r} passed the check"
    assert result.mistake == mistake.name, (
        f"{key}: {mistake.name!r} was recognised as {result.mistake!r}; the cases cannot tell them apart")
    assert result.hint == mistake.hint


# Lessons whose exercises are registered before their notebook is written (a typo in an exercise's
# lesson name would otherwise go unnoticed until the notebook exists).
LESSONS_WITHOUT_NOTEBOOK: set[str] = set()


def test_every_notebook_exercise_is_registered_and_checked_once():
    seen = {}
    for nb in lesson_notebooks(ROOT):
        if nb.parent.name != "solutions":
            continue
        for key in exercise_keys(nb):
            assert key in EXERCISES, f"{nb.name} checks unknown exercise {key!r}"
            assert key not in seen, f"{key!r} is checked in both {seen.get(key)} and {nb.name}"
            seen[key] = nb.name
            assert EXERCISES[key].lesson == nb.stem, f"{key!r} belongs to {EXERCISES[key].lesson}"
    # A lesson's library and exercises may land before its notebook (lesson 07's did); once the
    # solution notebook exists, it must check every exercise of its lesson.
    written = {nb.stem for nb in lesson_notebooks(ROOT) if nb.parent.name == "solutions"}
    unused = sorted(k for k in set(EXERCISES) - set(seen) if EXERCISES[k].lesson in written)
    unknown = {EXERCISES[k].lesson for k in EXERCISES} - written - LESSONS_WITHOUT_NOTEBOOK
    assert not unknown, f"exercises name lessons with no solution notebook: {sorted(unknown)}"
    assert not unused, f"exercises registered but checked in no solution notebook: {unused}"
