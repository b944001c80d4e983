"""Checkpoint folders on disk: written atomically (a temp folder, fsynced, then renamed), listed and
found again. The training loop saves its `step-N/` folders with these, lesson 05b its pretrained
BERT, and any later lesson its models: a crash mid-save never leaves half a folder under the name.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

STEP_PREFIX = "step-"
_STEP_RE = re.compile(rf"^{STEP_PREFIX}(\d+)$")


def step_folder(directory: str | Path, step: int) -> Path:
    """`directory/step-00000100`: the training loop's name for the checkpoint of a step."""
    return Path(directory) / f"{STEP_PREFIX}{step:08d}"


def is_step_folder(path: str | Path) -> bool:
    """Whether `path`'s name is a step checkpoint's (`step-N`)."""
    return _STEP_RE.match(Path(path).name) is not None


def _fsync(path: Path) -> None:
    # a directory's entry (a rename) is durable only once the directory itself is fsynced
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:  # Windows cannot open a directory; NTFS renames are journaled anyway
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_checkpoints(directory: str | Path) -> list[Path]:
    """The complete step checkpoints in `directory`, oldest first (temp folders are never listed)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir()
             if p.is_dir() and (m := _STEP_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete checkpoint in `directory`, or None."""
    ckpts = list_checkpoints(directory)
    return ckpts[-1] if ckpts else None


def remove_stale_temps(directory: str | Path, name: str = "*") -> None:
    """Remove the hidden temp folders that killed saves of `directory/<name>` left there
    (`name` may be a glob: "step-*" for every step checkpoint)."""
    for pattern in (f".tmp-{name}-*", f".old-{name}-*"):
        for stale in Path(directory).glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)


def atomic_save_dir(final: str | Path, write: Callable[[Path], None]) -> Path:
    """Let `write(tmp)` fill a temp folder beside `final`, fsync it, then rename it to `final`.

    The rename is atomic, so `final` either holds the complete new contents or does not exist
    (or, when it existed, still holds the old ones): a crash mid-save never leaves half a folder
    under a checkpoint's name, only a hidden `.tmp-*` folder that the next save removes. (When
    `final` already exists it is first moved aside into `.old-*`; a hard crash between the two
    renames leaves it there.)
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    old: Path | None = None
    try:
        write(tmp)
        for f in tmp.rglob("*"):
            _fsync(f)
        _fsync(tmp)
        if final.exists():  # os.replace cannot replace a non-empty folder: move the old aside
            old = Path(tempfile.mkdtemp(prefix=f".old-{final.name}-", dir=final.parent))
            os.replace(final, old / final.name)
        os.replace(tmp, final)
        _fsync(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not final.exists() and (old / final.name).exists():
            os.replace(old / final.name, final)  # put the previous contents back
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return final
