"""Learner notebooks from solution notebooks: `solutions/` is the single source.

`lmcourse sync` (or `python -m lmcourse sync`) does, for every `solutions/NN_name.ipynb`:

1. stamps the header every notebook shares: the "Open in Colab" badge on the first line of the
   first cell and the guarded Colab setup cell (tag `colab-setup`), both built from `REPO_URL`;
2. strips outputs and execution counts from the solution;
3. writes `notebooks/NN_name.ipynb`, where each region between `### BEGIN SOLUTION` and
   `### END SOLUTION` becomes a stub that raises `NotImplementedError`.

`lmcourse sync --check` changes nothing and fails when any file is out of date.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path

import nbformat

from lmcourse._project import REPO_URL, colab_url

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUB = '{indent}# YOUR CODE HERE\n{indent}raise NotImplementedError("exercise not done yet")'
BADGE_PREFIX = "[![Open In Colab]"
COLAB_TAG = "colab-setup"
SOLUTIONS, NOTEBOOKS = "solutions", "notebooks"

COLAB_CELL = '''\
# Colab only: install the course, then check for a GPU. Outside Colab this cell does nothing.
import sys

if "google.colab" in sys.modules:
    import subprocess

    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "lmcourse @ git+{repo}"], check=True
    )
    import torch

    if not torch.cuda.is_available():
        print("No GPU in this runtime: choose Runtime > Change runtime type > GPU for full mode.")'''


class NotebookError(ValueError):
    """A solution notebook breaks a convention; the message names the notebook, cell and fix."""


@dataclass
class SyncReport:
    """What `sync` wrote (or, with check=True, would write)."""

    changed: list[Path]   # files that differ from what the solutions generate
    orphans: list[Path]   # learner notebooks with no solution

    @property
    def ok(self) -> bool:
        return not self.changed and not self.orphans


def _source(cell) -> str:
    return cell.source if isinstance(cell.source, str) else "".join(cell.source)


def stub_solutions(source: str, where: str = "") -> str:
    """Replace every BEGIN/END SOLUTION region of a code cell's source with a stub."""
    lines = source.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip() == END:
            raise NotebookError(f"{where}: '{END}' without a '{BEGIN}' above it.")
        if line.strip() != BEGIN:
            out.append(line)
            i += 1
            continue
        indent = line[: len(line) - len(line.lstrip())]
        if not indent:
            raise NotebookError(
                f"{where}: '{BEGIN}' at column 0. Solution code must sit inside a function body "
                "so the learner's stub (raise NotImplementedError) does not stop the notebook; "
                "wrap the exercise in a function and check it with lm.check."
            )
        j = i + 1
        while j < len(lines) and lines[j].strip() not in (BEGIN, END):
            j += 1
        if j == len(lines) or lines[j].strip() != END:
            raise NotebookError(f"{where}: '{BEGIN}' has no matching '{END}'.")
        out.append(STUB.format(indent=indent))
        i = j + 1
    return "\n".join(out)


def _clean(cell) -> None:
    if cell.cell_type == "code":
        cell.outputs = []
        cell.execution_count = None
    for key in ("execution", "collapsed", "scrolled", "ExecuteTime"):
        cell.metadata.pop(key, None)


def stamp(nb, rel_path: str) -> nbformat.NotebookNode:
    """The solution notebook with the shared header (badge, Colab cell) and no outputs."""
    nb = copy.deepcopy(nb)
    if not nb.cells or nb.cells[0].cell_type != "markdown":
        raise NotebookError(f"{rel_path}: the first cell must be markdown with the lesson's title.")
    first = nb.cells[0]
    body = _source(first).split("\n")
    badge = f"{BADGE_PREFIX}(https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(rel_path)})"
    if body and body[0].startswith(BADGE_PREFIX):
        body[0] = badge
    else:
        body.insert(0, badge)
        body.insert(1, "")
    first.source = "\n".join(body)
    colab_cells = [c for c in nb.cells if COLAB_TAG in c.metadata.get("tags", [])]
    if colab_cells:
        cell = colab_cells[0]
    elif len(nb.cells) > 1 and nb.cells[1].cell_type == "code" and not _source(nb.cells[1]).strip():
        cell = nb.cells[1]  # the empty placeholder a new lesson leaves for this cell
        cell.metadata["tags"] = [COLAB_TAG]
    else:
        cell = nbformat.v4.new_code_cell(metadata={"tags": [COLAB_TAG]})
        nb.cells.insert(1, cell)
    cell.source = COLAB_CELL.format(repo=REPO_URL)
    for c in nb.cells:
        _clean(c)
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    return nb


def to_learner(solution, rel_path: str) -> nbformat.NotebookNode:
    """The learner notebook generated from a (stamped) solution notebook."""
    nb = copy.deepcopy(solution)
    name = Path(rel_path).name
    learner_path = f"{NOTEBOOKS}/{name}"
    first = nb.cells[0]
    first.source = _source(first).replace(colab_url(rel_path), colab_url(learner_path))
    for idx, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            cell.source = stub_solutions(_source(cell), f"{rel_path}, cell {idx}")
        elif BEGIN in _source(cell):
            raise NotebookError(f"{rel_path}, cell {idx}: solution markers belong in code cells.")
    nb.metadata["lmcourse"] = {
        "generated_from": rel_path,
        "note": "Generated by `lmcourse sync`: edit the solution notebook, not this file.",
    }
    return nb


def _text(nb) -> str:
    return nbformat.writes(nb, version=4) + "\n"


def expected_files(root: Path) -> dict[Path, str]:
    """Every file `sync` owns, with the text it should have."""
    out: dict[Path, str] = {}
    for sol in sorted((root / SOLUTIONS).glob("*.ipynb")):
        rel = f"{SOLUTIONS}/{sol.name}"
        stamped = stamp(nbformat.read(sol, as_version=4), rel)
        out[sol] = _text(stamped)
        out[root / NOTEBOOKS / sol.name] = _text(to_learner(stamped, rel))
    return out


def sync(root: str | Path, check: bool = False) -> SyncReport:
    """Regenerate learner notebooks (and normalise solutions); with check=True only report."""
    root = Path(root)
    expected = expected_files(root)
    changed = []
    for path, text in expected.items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current != text:
            changed.append(path)
            if not check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
    orphans = [p for p in sorted((root / NOTEBOOKS).glob("*.ipynb")) if p not in expected]
    return SyncReport(changed=changed, orphans=orphans)


def lesson_notebooks(root: str | Path) -> list[Path]:
    """All notebooks of the course, learner versions then solutions."""
    root = Path(root)
    return sorted((root / NOTEBOOKS).glob("*.ipynb")) + sorted((root / SOLUTIONS).glob("*.ipynb"))


def exercise_keys(nb_path: str | Path) -> list[str]:
    """The exercise keys a notebook checks with lm.check("key", ...), in order."""
    nb = nbformat.read(nb_path, as_version=4)
    keys: list[str] = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            keys += re.findall(r"""lm\.check\(\s*["']([\w.]+)["']""", _source(cell))
    return keys
