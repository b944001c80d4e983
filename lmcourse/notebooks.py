"""Learner notebooks from solution notebooks: `solutions/` is the single source.

`lmcourse sync` (or `python -m lmcourse sync`) does, for every `solutions/NN_name.ipynb`:

1. stamps the header every notebook shares: the "Open in Colab" badge on the first line of the
   first cell and the guarded Colab setup cell (tag `colab-setup`), both built from `REPO_URL`;
2. strips outputs and execution counts from the solution;
3. writes `notebooks/NN_name.ipynb`, where each region between `### BEGIN SOLUTION` and
   `### END SOLUTION` becomes a stub that raises `NotImplementedError`.

`lmcourse sync --check` changes nothing and fails when any file is out of date.

Learners' work is never overwritten. Each generated learner notebook records a fingerprint of its
cells (types and sources) in `metadata.lmcourse.source_hash`. When a learner notebook on disk no
longer matches its own fingerprint, someone edited its cells: `sync` leaves it as it is and, when
its lesson changed, writes the new version beside it as `NN_name.new.ipynb` (`--force` overwrites
instead). Outputs and
execution counts are not part of the fingerprint: a notebook that was only run is regenerated, and
`sync` says that its outputs were cleared.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from lmcourse._project import REPO_URL, colab_url

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUB = '{indent}# YOUR CODE HERE\n{indent}raise NotImplementedError("exercise not done yet")'
BADGE_PREFIX = "[![Open In Colab]"
COLAB_TAG = "colab-setup"
SOLUTIONS, NOTEBOOKS = "solutions", "notebooks"
FINGERPRINT = "source_hash"  # key in a learner notebook's metadata.lmcourse
BESIDE = ".new"              # NN_name.new.ipynb: the new version of a notebook edited by hand

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

    changed: list[Path]   # files written (check=True: files that differ from what sync writes)
    orphans: list[Path]   # learner notebooks with no solution
    # learner notebooks edited by hand and left alone -> where their new version went (None: not
    # written, because that file was edited too); with check=True, what sync would keep
    kept: dict[Path, Path | None] = field(default_factory=dict)
    same_lesson: list[Path] = field(default_factory=list)  # kept, but the lesson has not changed
    cleared: list[Path] = field(default_factory=list)  # regenerated notebooks that had outputs
    forced: list[Path] = field(default_factory=list)   # edited notebooks overwritten (force=True)

    @property
    def ok(self) -> bool:
        return not self.changed and not self.orphans and not self.kept


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
        FINGERPRINT: source_hash(nb),
    }
    return nb


def source_hash(nb) -> str:
    """A fingerprint of a notebook's cells: their types and sources, not outputs or metadata."""
    cells = [[c.cell_type, _source(c)] for c in nb.cells]
    return hashlib.sha256(json.dumps(cells).encode("utf-8")).hexdigest()[:16]


def edited_by_hand(path: str | Path, new_hash: str | None = None) -> bool:
    """True when the cells of the learner notebook at `path` differ from what `sync` wrote there.

    Running a notebook (outputs, execution counts) is not editing it. A notebook whose cells equal
    the new version (`new_hash`) has nothing to lose. One that cannot be read, or that carries no
    fingerprint and differs from the new version, counts as edited: it is kept, to be safe.
    """
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception:  # half-saved or not a notebook: it may still be someone's work
        return True
    current = source_hash(nb)
    if current == new_hash:
        return False
    return current != nb.metadata.get("lmcourse", {}).get(FINGERPRINT)


def has_outputs(path: str | Path) -> bool:
    """True when a code cell of the notebook at `path` has outputs or an execution count."""
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception:
        return False
    return any(c.cell_type == "code" and (c.get("outputs") or c.get("execution_count"))
               for c in nb.cells)


def beside(path: str | Path) -> Path:
    """Where the new version of an edited learner notebook goes: NN_name.new.ipynb next to it."""
    path = Path(path)
    return path.with_name(f"{path.stem}{BESIDE}.ipynb")


def is_copy(path: str | Path) -> bool:
    """True for a copy of a lesson such as NN_name.new.ipynb or NN_name.mine.ipynb (a dot in the stem)."""
    return "." in Path(path).stem


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


def sync(root: str | Path, check: bool = False, force: bool = False) -> SyncReport:
    """Regenerate learner notebooks (and normalise solutions); with check=True only report.

    A learner notebook edited by hand is kept and its new version written beside it
    (`NN_name.new.ipynb`), unless force=True.
    """
    root = Path(root)
    expected = expected_files(root)
    report = SyncReport(changed=[], orphans=[])
    for path, text in expected.items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        if current is not None and path.parent.name == NOTEBOOKS:
            new_hash = nbformat.reads(text, as_version=4).metadata["lmcourse"][FINGERPRINT]
            if edited_by_hand(path, new_hash):
                if not force:
                    if _recorded_hash(path) == new_hash:  # the lesson is the one it was made from
                        report.same_lesson.append(path)
                        report.kept[path] = None
                    else:
                        report.kept[path] = _write_beside(path, text, new_hash, check)
                    if check:
                        report.changed.append(path)
                    continue
                report.forced.append(path)
            elif has_outputs(path):
                report.cleared.append(path)
        report.changed.append(path)
        if not check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    report.orphans = [p for p in sorted((root / NOTEBOOKS).glob("*.ipynb"))
                      if p not in expected and not is_copy(p)]
    return report


def _recorded_hash(path: Path) -> str | None:
    try:
        return nbformat.read(path, as_version=4).metadata.get("lmcourse", {}).get(FINGERPRINT)
    except Exception:
        return None


def _write_beside(path: Path, text: str, new_hash: str, check: bool) -> Path | None:
    """Write the new version next to an edited notebook; None if that file was edited too."""
    new = beside(path)
    if new.exists() and new.read_text(encoding="utf-8") != text and edited_by_hand(new, new_hash):
        return None
    if not check:
        new.write_text(text, encoding="utf-8")
    return new


def sync_command(root: str | Path, check: bool = False, force: bool = False) -> int:
    """`lmcourse sync`: run `sync`, say what it wrote, kept and cleared; the exit status."""
    root = Path(root)
    report = sync(root, check=check, force=force)

    def rel(p: Path) -> str:
        return str(p.relative_to(root))

    for path in report.changed:
        if check:
            why = ""
            if path in report.same_lesson:
                why = (" (edited by hand, from the current lesson: `lmcourse sync` would keep it; "
                       "`lmcourse sync --force` would overwrite it)")
            elif path in report.kept:
                why = (f" (edited by hand: `lmcourse sync` would keep it and write the new version "
                       f"to {rel(beside(path))}; `lmcourse sync --force` would overwrite it)")
            print(f"out of date: {rel(path)}{why}")
        elif path in report.forced:
            print(f"overwrote: {rel(path)} (it was edited by hand; --force)")
        elif path in report.cleared:
            print(f"wrote: {rel(path)} (it had been run: its outputs are cleared, run it again)")
        else:
            print(f"wrote: {rel(path)}")
    if not check:
        for path, new in report.kept.items():
            if path in report.same_lesson:
                print(f"kept: {rel(path)} (edited by hand; its lesson has not changed, so there is "
                      "no new version to write)")
            elif new is None:
                print(f"kept: {rel(path)} and {rel(beside(path))}, both edited by hand; nothing "
                      f"written. Rename {rel(beside(path))} (e.g. to {path.stem}.mine.ipynb) and "
                      "run `lmcourse sync` again, or `lmcourse sync --force` to overwrite "
                      f"{rel(path)}.")
            else:
                print(f"kept: {rel(path)} (its cells were edited by hand); the new version is "
                      f"{rel(new)}. Compare the two and copy your work across, or run "
                      f"`lmcourse sync --force` to overwrite {rel(path)}.")
    for path in report.orphans:
        print(f"no solution for: {rel(path)} (delete it or add solutions/{path.name})")
    if check and not report.ok:
        print("Run `lmcourse sync` to regenerate notebooks/ from solutions/.")
        return 1
    if not report.changed and not report.kept:
        print("notebooks/ is up to date with solutions/.")
    needs_you = [p for p in report.kept if p not in report.same_lesson]
    return 0 if not report.orphans and not needs_you else 1


def lesson_notebooks(root: str | Path) -> list[Path]:
    """All notebooks of the course, learner versions then solutions."""
    root = Path(root)
    return sorted(p for p in (root / NOTEBOOKS).glob("*.ipynb") if not is_copy(p)) + \
        sorted((root / SOLUTIONS).glob("*.ipynb"))


def exercise_keys(nb_path: str | Path) -> list[str]:
    """The exercise keys a notebook checks with lm.check("key", ...), in order."""
    nb = nbformat.read(nb_path, as_version=4)
    keys: list[str] = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            keys += re.findall(r"""lm\.check\(\s*["']([\w.]+)["']""", _source(cell))
    return keys
