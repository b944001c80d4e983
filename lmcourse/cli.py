"""The `lmcourse` command: `lmcourse doctor` checks the environment, `lmcourse sync` regenerates
learner notebooks from solutions."""

from __future__ import annotations

import argparse
from pathlib import Path


def _find_root(start: Path) -> Path:
    for p in [start, *start.parents]:
        if (p / "solutions").is_dir() and (p / "pyproject.toml").is_file():
            return p
    raise SystemExit(
        f"No course folder (with solutions/ and pyproject.toml) at or above {start}; "
        "run this inside the course repository or pass --root."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lmcourse", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    doc = sub.add_parser("doctor", help="report versions, device, Hub access, data and the mode to use")
    doc.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the Hub probe")
    sy = sub.add_parser("sync", help="generate notebooks/ from solutions/")
    sy.add_argument("--check", action="store_true", help="change nothing; exit 1 if out of date")
    sy.add_argument("--root", type=Path, default=None, help="the course folder (default: found upward)")
    args = parser.parse_args(argv)

    if args.command == "doctor":
        from lmcourse.doctor import doctor

        report = doctor(timeout=args.timeout)
        return 0 if report.ok else 1

    from lmcourse.notebooks import sync

    root = args.root or _find_root(Path.cwd())
    report = sync(root, check=args.check)
    for path in report.changed:
        verb = "out of date" if args.check else "wrote"
        print(f"{verb}: {path.relative_to(root)}")
    for path in report.orphans:
        print(f"no solution for: {path.relative_to(root)} (delete it or add solutions/{path.name})")
    if args.check and not report.ok:
        print("Run `lmcourse sync` to regenerate notebooks/ from solutions/.")
        return 1
    if not report.changed:
        print("notebooks/ is up to date with solutions/.")
    return 0 if not report.orphans else 1
