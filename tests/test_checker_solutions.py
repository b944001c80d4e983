"""The exercise functions of the solution notebooks pass their checks (without running the notebooks)."""

import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lmcourse as lm
from lmcourse import exercises as registry

from .conftest import ROOT

CHECK = re.compile(r'^lm\.check\("(\w+)",\s*(\w+)\)\s*$', re.MULTILINE)


def _solution_cells() -> list[tuple[str, str, str, str]]:
    """(notebook, key, function name, cell source) for every cell that checks an exercise."""
    found = []
    for nb in sorted((ROOT / "solutions").glob("*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            src = "".join(cell["source"])
            if cell["cell_type"] == "code":
                for key, name in CHECK.findall(src):
                    found.append((nb.stem, key, name, src))
    return found


CELLS = _solution_cells()


def test_every_solution_exercise_is_found():
    from tests.test_exercises import LESSONS_WITHOUT_NOTEBOOK

    expected = [k for k, e in registry.exercises().items() if e.lesson not in LESSONS_WITHOUT_NOTEBOOK]
    assert sorted(key for _, key, _, _ in CELLS) == sorted(expected)


@pytest.mark.parametrize("notebook, key, name, src", CELLS, ids=[c[1] for c in CELLS])
def test_the_solution_passes(notebook, key, name, src):
    code = CHECK.sub("", src)  # define the function only; the test checks it
    namespace = {"lm": lm, "torch": torch, "math": math, "np": np, "F": F, "tr": lm.transformer,
                 "s2s": lm.seq2seq}  # the module aliases the lessons define in their import cell
    exec(compile(code, f"{notebook}:{key}", "exec"), namespace)
    result = registry.evaluate(key, namespace[name])
    assert result.passed, result.message
