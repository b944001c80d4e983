"""The `lmcourse` command: `lmcourse doctor` checks the environment, `lmcourse sync` regenerates
learner notebooks from solutions, `lmcourse build` executes notebooks into a folder with a time
table, `lmcourse grade NOTEBOOKS` grades learners' notebooks, `lmcourse progress` lists the exercises
passed, `lmcourse serve FOLDER` serves a NER model over HTTP."""

from __future__ import annotations

import argparse
import sys
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
    sy.add_argument("--force", action="store_true", help="also overwrite learner notebooks edited "
                    "by hand (default: keep them and write NN_name.new.ipynb beside)")
    sy.add_argument("--root", type=Path, default=None, help="the course folder (default: found upward)")
    _add_serve(sub)
    from lmcourse.build import add_parser as _add_build

    _add_build(sub)
    from lmcourse.grading import add_parser as _add_grade

    _add_grade(sub)
    sub.add_parser("progress", help="show which exercises you have passed (from lm.check)")
    args = parser.parse_args(argv)

    if args.command == "grade":
        from lmcourse.grading import main as grade_main

        return grade_main(args)
    if args.command == "progress":
        from lmcourse.learner_progress import progress

        progress()
        return 0

    if args.command == "build":
        from lmcourse.build import main as build_main

        return build_main(args)

    if args.command == "serve":
        return _serve(args)
    if args.command == "doctor":
        from lmcourse.doctor import doctor

        report = doctor(timeout=args.timeout)
        return 0 if report.ok else 1

    from lmcourse.notebooks import sync_command

    return sync_command(args.root or _find_root(Path.cwd()), check=args.check, force=args.force)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    """The `serve` subcommand's options (lmcourse.serve has the why of each)."""
    from lmcourse.serve import ENV_TOKEN

    sv = sub.add_parser(
        "serve", help="serve a saved NER model over HTTP (POST /entities, /redact; /metrics)",
        description="Serve a token classifier saved by lm.predict.save_ner_model: POST /entities "
                    "and /redact, GET /health, /ready, /model and /metrics (Prometheus). "
                    f"Access control: set ${ENV_TOKEN} (or --token-env/--token-file) and callers "
                    "must send 'Authorization: Bearer <token>'. The token is never a command-line "
                    "value: every user of the machine can read command lines with `ps`.")
    sv.add_argument("model_dir", type=Path, help="the model folder (config.json, model.safetensors, "
                    "tokenizer)")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: "
                    "this machine only; 0.0.0.0 opens it to the network, so set a token)")
    sv.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    sv.add_argument("--port-file", type=Path, default=None, help="write the port listened on to "
                    "this file once bound (for scripts that use --port 0)")
    sv.add_argument("--workers", type=int, default=1, help="worker processes, each with its own "
                    "copy of the model (default 1)")
    token = sv.add_mutually_exclusive_group()
    token.add_argument("--token-env", metavar="NAME", default=None, help="environment variable "
                       f"holding the token (default: {ENV_TOKEN}; no token if it is unset)")
    token.add_argument("--token-file", type=Path, default=None, help="file whose first line is "
                       "the token")
    sv.add_argument("--max-chars", type=int, default=10_000, help="longest text in characters "
                    "(default 10000; longer: 413)")
    sv.add_argument("--max-batch", type=int, default=32, help="most texts per request (default 32)")
    sv.add_argument("--max-body-bytes", type=int, default=None, help="largest request body "
                    "(default: what the two limits above need)")
    sv.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: "
                    "the cores shared out among the workers)")
    sv.add_argument("--log-texts", action="store_true", help="log the texts of requests (off by "
                    "default: they may hold personal data)")


def _serve(args: argparse.Namespace) -> int:
    """Run `lmcourse serve`: a setting or model that cannot work stops it with one message (exit 1)."""
    from lmcourse import serve

    try:
        settings = serve.Settings(
            args.model_dir, token=serve.read_token(args.token_env, args.token_file),
            max_chars=args.max_chars, max_batch=args.max_batch,
            max_body_bytes=args.max_body_bytes, log_texts=args.log_texts, threads=args.threads)
        return serve.serve_forever(settings, host=args.host, port=args.port,
                                   workers=args.workers, port_file=args.port_file)
    except serve.ServeError as e:
        print(f"lmcourse serve: error: {e}", file=sys.stderr)
        return 1
