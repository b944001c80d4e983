"""The NER model as an HTTP service (lesson 08): `lmcourse serve FOLDER`.

A model in a notebook answers one person; a service answers anyone who can reach its port, at any
rate, with any bytes they like. Everything in this module beyond "call the predictor" exists
because of that:

- **The model is loaded once per worker process**, at start-up (the app's lifespan), never per
  request: loading takes seconds, a prediction milliseconds. `lmcourse serve` first loads the
  model once in the supervisor (`load_predictor`), so a missing, empty or corrupt folder stops the
  command with one clear message instead of N workers failing at once.
- **Several workers** (`--workers N`): Python runs one thread of Python code at a time per
  process, so N processes answer about N times as many requests on N cores. Each worker is a fresh
  process (uvicorn starts them with `spawn`), so they cannot share Python objects: the settings
  travel in environment variables (`Settings.to_env` / `Settings.from_env`) and the app is built
  by a factory (`app_from_env`) inside each worker. Within a worker, one prediction runs at a time
  (`anyio.CapacityLimiter(1)`): torch already uses several cores for one prediction, and two at
  once would only fight over them.
- **Binds to 127.0.0.1 by default**: only programs on this machine can call it. Serving on a
  network (`--host 0.0.0.0`) is a decision, and then a token is the minimum.
- **A bearer token** (from an environment variable or a file, never a command-line value, since
  every user of the machine can read a command line with `ps`): every endpoint except the health
  probes needs `Authorization: Bearer <token>`, compared in constant time (`hmac.compare_digest`
  on hashes), so the time an answer takes says nothing about how much of a guess was right.
  /metrics needs it too: request counts, error rates and the model's version tell an attacker
  what runs and when it struggles (Prometheus sends the token: `authorization: credentials_file`).
- **Limits** (`--max-chars`, `--max-batch`, `--max-body-bytes`): a model's cost grows with the
  text, so one caller with a 100 MB text could hold a worker for minutes. The body size is checked
  before the body is even read (413), the text sizes before the model runs (413: split it).
- **Validation with clear 4xx answers**: a caller's mistake (not JSON, wrong content type, a
  number where a string goes, an empty text, an unknown field) gets a message that says what to
  send, never a 500. A 500 means the *service* is broken; the alert rules page someone for it, so
  it must never be the answer to a bad request.
- **No request text in the logs** unless `--log-texts`: texts sent for NER are exactly the ones
  holding names and places; logs are kept longer and read by more people than the service's
  memory. Error bodies never echo the input either (FastAPI's default 422 would).
- **Metrics** (`GET /metrics`, Prometheus text format): requests by endpoint and status, errors,
  a latency histogram, texts processed, and the model's version (a hash of its weights and
  config), so a dashboard can say which model answered. With several workers each process counts
  in files of its own in a fresh temporary folder (prometheus_client's multiprocess mode,
  PROMETHEUS_MULTIPROC_DIR) and /metrics adds them up, whichever worker answers the scrape.
  `alert_rules` writes the alerts (slow p95, too many errors) in Prometheus's format.
- **Redaction** (`POST /redact`, `redact`): the masking of sensitive data the model finds,
  e.g. every person's name replaced by `[PER]`.

`running` / `start` start the real service in a background process on a free loopback port and
wait until it is ready (tests, benchmarks/serve.py and lesson 08 use them); `create_app` builds the
app in-process (FastAPI's TestClient, or your own server).

torch and transformers load only when a model does (`load_predictor`), prometheus_client only in
`create_app` (it must see PROMETHEUS_MULTIPROC_DIR before its first import). FastAPI is imported
at the top: it reads the endpoints' type hints (`request: Request`) from this module's names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware

from lmcourse import ner
from lmcourse.predict import Entity

if TYPE_CHECKING:
    from lmcourse.predict import NerPredictor

LOGGER = "lmcourse.serve"
log = logging.getLogger(LOGGER)

# Environment variables: how the command hands its settings to worker processes (and how a
# container or a process manager can set them). `Settings.from_env` reads them.
ENV_TOKEN = "LMCOURSE_SERVE_TOKEN"              # the bearer token callers must send (unset: open)
ENV_MODEL_DIR = "LMCOURSE_SERVE_MODEL_DIR"      # the model folder
ENV_MAX_CHARS = "LMCOURSE_SERVE_MAX_CHARS"      # longest text, in characters
ENV_MAX_BATCH = "LMCOURSE_SERVE_MAX_BATCH"      # most texts in one request
ENV_MAX_BODY = "LMCOURSE_SERVE_MAX_BODY_BYTES"  # largest request body, in bytes
ENV_LOG_TEXTS = "LMCOURSE_SERVE_LOG_TEXTS"      # 1: log the texts of requests
ENV_THREADS = "LMCOURSE_SERVE_THREADS"          # torch threads per worker
ENV_MULTIPROC = "PROMETHEUS_MULTIPROC_DIR"      # prometheus_client's folder for per-process counts

OPEN_PATHS = frozenset({"/health", "/ready"})   # answered without a token (probes carry none)
ENDPOINTS = ("/entities", "/redact", "/model", "/health", "/ready", "/metrics")
PREDICTING = ("/entities", "/redact")           # the endpoints that run the model
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_TOKEN_RE = re.compile(r"[A-Za-z0-9\-._~+/]+=*")  # RFC 6750's b64token: what a header can carry


class ServeError(ValueError):
    """The service cannot start with these settings or this model; the message says how to fix it."""


# --------------------------------------------------------------------------- settings


@dataclasses.dataclass
class Settings:
    """What one running service is configured with (every worker gets the same, via `to_env`)."""

    model_dir: Path                  # the token classifier's folder (lm.predict.save_ner_model's)
    token: str | None = dataclasses.field(default=None, repr=False)  # None: no access control
    max_chars: int = 10_000          # longest text accepted, in characters (len(text))
    max_batch: int = 32              # most texts in one request
    max_body_bytes: int | None = None  # largest request body; None: what the two limits above need
    log_texts: bool = False          # log request texts (off: texts may hold personal data)
    threads: int | None = None       # torch threads per worker; None: torch's default

    def __post_init__(self) -> None:
        self.model_dir = Path(self.model_dir).expanduser()
        for name in ("max_chars", "max_batch", "max_body_bytes", "threads"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ServeError(f"{name}={value!r}: it must be a whole number of at least 1.")
        if self.token is not None:
            check_token(self.token)

    @property
    def body_limit(self) -> int:
        """The largest request body accepted, in bytes: `max_body_bytes`, or by default the largest
        body a valid request can need, so the cheap byte check never refuses a request the text
        limits accept: `max_batch` texts of `max_chars` characters, each JSON-escaped as
        "\\ud83d\\ude00" (12 bytes, the worst case), plus 64 KiB for the rest of the JSON."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        return self.max_batch * (12 * self.max_chars + 16) + 64 * 1024

    def to_env(self) -> dict[str, str]:
        """These settings as environment variables, for worker processes (`from_env` reads them).
        The token goes into the environment, which only its owner (and root) can read
        (/proc/PID/environ), unlike a command line, which `ps` shows every user."""
        env = {ENV_MODEL_DIR: str(self.model_dir), ENV_MAX_CHARS: str(self.max_chars),
               ENV_MAX_BATCH: str(self.max_batch), ENV_LOG_TEXTS: "1" if self.log_texts else "0"}
        if self.max_body_bytes is not None:
            env[ENV_MAX_BODY] = str(self.max_body_bytes)
        if self.threads is not None:
            env[ENV_THREADS] = str(self.threads)
        if self.token is not None:
            env[ENV_TOKEN] = self.token
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from environment variables (`to_env`'s; unset ones take their defaults)."""
        environ = os.environ if environ is None else environ
        folder = environ.get(ENV_MODEL_DIR, "").strip()
        if not folder:
            raise ServeError(f"${ENV_MODEL_DIR} is not set: it names the model folder to serve "
                             "(`lmcourse serve FOLDER` sets it for its workers).")

        def number(name: str) -> int | None:
            raw = environ.get(name, "").strip()
            if not raw:
                return None
            try:
                return int(raw)
            except ValueError:
                raise ServeError(f"${name}={raw!r} is not a whole number.") from None

        given = {k: v for k, v in (("max_chars", number(ENV_MAX_CHARS)),
                                   ("max_batch", number(ENV_MAX_BATCH)),
                                   ("max_body_bytes", number(ENV_MAX_BODY)),
                                   ("threads", number(ENV_THREADS))) if v is not None}
        token = environ.get(ENV_TOKEN) or None
        log_texts = environ.get(ENV_LOG_TEXTS, "").strip().lower() in {"1", "true", "yes", "on"}
        return cls(Path(folder), token=token, log_texts=log_texts, **given)


def check_token(token: str) -> str:
    """`token` if a header can carry it (RFC 6750's characters: letters, digits, -._~+/ and
    trailing =); a ServeError saying how to make one otherwise."""
    if not _TOKEN_RE.fullmatch(token):
        raise ServeError("The token is empty or holds characters an Authorization header cannot "
                         "carry (spaces, quotes, newlines...). Make one with `python -c \"import "
                         "secrets; print(secrets.token_urlsafe(32))\"`.")
    return token


def read_token(token_env: str | None = None, token_file: str | Path | None = None) -> str | None:
    """The token the service requires: the first line of `token_file`, else the value of the
    environment variable `token_env` (default $LMCOURSE_SERVE_TOKEN), else None (no token: the
    service is open to anyone who can reach its port). A variable or file that was named but is
    missing or empty is an error: a typo must not switch access control off."""
    if token_file is not None:
        path = Path(token_file).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise ServeError(f"Cannot read the token file {path} ({e.strerror or e}): create it "
                             "with the token on its first line, readable by you only "
                             "(chmod 600).") from None
        if not lines or not lines[0].strip():
            raise ServeError(f"The token file {path} is empty: put the token on its first line.")
        return check_token(lines[0].strip())
    name = token_env or ENV_TOKEN
    value = os.environ.get(name)
    if value is None or not value.strip():
        if token_env is not None:
            raise ServeError(f"--token-env {token_env}: the environment variable ${token_env} is "
                             "not set (or empty). Export it (`export {0}=$(python -c \"import "
                             "secrets; print(secrets.token_urlsafe(32))\")`), or leave out "
                             "--token-env to serve without a token.".format(token_env))
        return None
    return check_token(value.strip())


# --------------------------------------------------------------------------- the model


def model_version(folder: str | Path) -> str:
    """A short version id of a saved model: the first 12 hex digits of the SHA-256 of its weights
    (*.safetensors) and config.json. Retraining, re-quantizing or relabelling changes it; copying
    the folder does not. /metrics exports it, so a dashboard says which model gave which numbers."""
    folder = Path(folder)
    digest = hashlib.sha256()
    files = sorted(folder.glob("*.safetensors")) + [folder / "config.json"]
    for path in files:
        if path.is_file():
            digest.update(path.name.encode() + b"\0")
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()[:12]


def load_predictor(folder: str | Path, device: Any = None, **kwargs: Any) -> NerPredictor:
    """`NerPredictor.from_pretrained(folder)`, with the failures a service meets at start-up turned
    into ServeErrors that say what is wrong and how to fix it: the folder is missing, holds no
    .safetensors weights, or holds a model that does not load (a file cut short by an interrupted
    copy, a config without id2label, a missing tokenizer)."""
    from lmcourse.predict import NerPredictor

    path = Path(folder).expanduser()
    if not path.exists():
        raise ServeError(f"The model folder {path} does not exist. Pass the folder that "
                         "lm.predict.save_ner_model wrote (it holds config.json, "
                         "model.safetensors and the tokenizer files).")
    if not path.is_dir():
        raise ServeError(f"{path} is a file, not a model folder. Pass the folder that "
                         "lm.predict.save_ner_model wrote, not a file inside it.")
    if not any(path.glob("*.safetensors")):
        raise ServeError(f"The model folder {path} holds no .safetensors weights, and the service "
                         "never loads pickled ones (.bin, .pt: loading them can run code). Save "
                         "the model with lm.predict.save_ner_model(model, tokenizer, folder).")
    start = time.perf_counter()
    try:
        predictor = NerPredictor.from_pretrained(path, device=device, **kwargs)
    except Exception as e:  # any failure of loading: say which folder, what, and the fix
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ServeError(f"Cannot load the model in {path}: {type(e).__name__}: {first[:300]} | "
                         "The folder must hold a complete token classifier saved by "
                         "lm.predict.save_ner_model (config.json with id2label, model.safetensors, "
                         "the tokenizer files). A weights file cut short by an interrupted copy or "
                         "download is the usual cause: save or copy the folder again.") from None
    # every load is logged with its process id: a service's log shows one per worker process
    log.info("process %d: model %s loaded in %.1f s on %s", os.getpid(), path.name,
             time.perf_counter() - start, predictor.device)
    return predictor


def entity_types(labels: Iterable[str]) -> list[str]:
    """The entity types of a model's BIO labels, sorted: ["LOC", "MISC", "ORG", "PER"] for CoNLL."""
    return sorted(ner.entity_types(list(labels)))


# --------------------------------------------------------------------------- redaction


def redact(text: str, entities: Iterable[Entity], types: Iterable[str],
           template: str = "[{type}]") -> str:
    """`text` with every entity whose type is in `types` replaced by `template` ("[PER]"), and
    nothing else changed.

    Replacements run from the last entity to the first: replacing "Angela Merkel" (13 characters)
    by "[PER]" (5) shifts everything after it, so the offsets of the entities to its right would
    be wrong if they were replaced later; the ones to its left are untouched. Entities must belong
    to this text (`entity.text == text[start:end]`) and the replaced ones must not overlap;
    anything else is a ValueError.

    Redaction is only as good as the model's recall: a name the model misses stays in the text.
    Measure recall on your own data before trusting it, and add rules (e-mail addresses, phone
    numbers) for what a pattern finds better than a model.
    """
    chosen = set(types)
    picked = []
    for e in entities:
        if not (0 <= e.start < e.end <= len(text)) or text[e.start:e.end] != e.text:
            raise ValueError(f"Entity {e.type} at {e.start}:{e.end} does not belong to this text "
                             f"(of {len(text)} characters): pass the entities predicted for it.")
        if e.type in chosen:
            picked.append(e)
    limit = len(text)
    for e in sorted(picked, key=lambda e: e.start, reverse=True):  # right to left
        if e.end > limit:
            raise ValueError(f"Entities overlap at {e.start}:{e.end}: redact takes entities that "
                             "do not overlap, as one model predicts them.")
        text = text[:e.start] + template.format(type=e.type) + text[e.end:]
        limit = e.start
    return text


# --------------------------------------------------------------------------- requests and answers


class _Strict(BaseModel):
    # strict: a number is not a string, a string is not a list; forbid: a misspelt field ("txt")
    # is an error, not silently ignored
    model_config = ConfigDict(strict=True, extra="forbid")


class EntitiesRequest(_Strict):
    """POST /entities: one text, or a batch of texts."""

    text: str | None = None          # one text: the answer's "entities" is a list
    texts: list[str] | None = None   # a batch: the answer's "entities" is a list per text


class RedactRequest(_Strict):
    """POST /redact: the texts, and the entity types to replace (default: all the model's)."""

    text: str | None = None
    texts: list[str] | None = None
    types: list[str] | None = None   # e.g. ["PER", "LOC"]; None: every type the model predicts


class EntityOut(BaseModel):
    """One entity: text[start:end] (character offsets, end exclusive); score: the model's mean
    probability of the entity's word tags."""

    type: str
    start: int
    end: int
    text: str
    score: float


class EntitiesResponse(BaseModel):
    """The entities of the text (a list), or of each text of a batch (a list of lists)."""

    entities: list[EntityOut] | list[list[EntityOut]]
    model: str  # the model's version (model_version)


class RedactResponse(BaseModel):
    """The redacted text (or texts), and the entities that were replaced."""

    text: str | None = None
    texts: list[str] | None = None
    redacted: list[EntityOut] | list[list[EntityOut]]
    model: str


class HTTPError(Exception):
    """A caller's mistake: answered with `status` and {"detail": message}, never a traceback."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _where(loc: Sequence[Any]) -> str:
    """A pydantic error location as a JSON path: ("texts", 2) -> "texts[2]"."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def parse_body(body: bytes, content_type: str | None, model: type[_Strict], example: str) -> Any:
    """The request `body` checked and parsed into `model`, or an HTTPError with the fix:
    415 when the content type is not JSON, 400 when the bytes are not JSON, 422 when the JSON is
    not an object of the model's fields and types. Messages never repeat the caller's text."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if not (kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))):
        given = f"Content-Type is {content_type!r}" if content_type else "Content-Type is missing"
        raise HTTPError(415, f"{given}; send JSON with the "
                             f"header 'Content-Type: application/json' (curl: -H 'Content-Type: "
                             f"application/json'), e.g. {example}.")
    if not body.strip():
        raise HTTPError(400, f"The body is empty; send a JSON object, e.g. {example}.")
    try:
        data = json.loads(body)
    except RecursionError:
        raise HTTPError(400, "The body's JSON is nested too deeply to parse; send a flat object, "
                             f"e.g. {example}.") from None
    except ValueError as e:  # JSONDecodeError, bytes that are not UTF-8, 5000-digit numbers
        reason = e.msg if isinstance(e, json.JSONDecodeError) else type(e).__name__
        where = f" at line {e.lineno}, column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
        raise HTTPError(400, f"The body is not valid UTF-8 JSON ({reason}{where}); send a JSON "
                             f"object, e.g. {example}.") from None
    if not isinstance(data, dict):
        raise HTTPError(422, f"The body is a JSON {type(data).__name__}, not an object; send an "
                             f"object, e.g. {example}.")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{_where(err['loc'])}: {err['msg']}"
                             for err in e.errors(include_url=False, include_input=False)[:5])
        fields = ", ".join(f"{name!r}" for name in model.model_fields)
        raise HTTPError(422, f"Invalid request: {problems}. Fields: {fields} (texts are strings), "
                             f"e.g. {example}.") from None


def request_texts(request: EntitiesRequest | RedactRequest, settings: Settings,
                  ) -> tuple[list[str], bool]:
    """The texts of a request and whether it was a single text; an HTTPError when there is not
    exactly one of text/texts, a text is empty, not Unicode text, or over a limit (413: split)."""
    if (request.text is None) == (request.texts is None):
        both = "both" if request.text is not None else "neither"
        raise HTTPError(422, f"The request has {both} 'text' and 'texts': send one text as "
                             "{\"text\": \"...\"} or a batch as {\"texts\": [\"...\", ...]}.")
    single = request.text is not None
    texts = [request.text] if single else list(request.texts)  # type: ignore[list-item,arg-type]
    if not texts:
        raise HTTPError(422, "'texts' is an empty list: send at least one text.")
    if len(texts) > settings.max_batch:
        raise HTTPError(413, f"{len(texts)} texts in one request; the limit is "
                             f"{settings.max_batch}. Send them in several requests.")
    for i, text in enumerate(texts):
        name = "'text'" if single else f"texts[{i}]"
        if not text:
            raise HTTPError(422, f"{name} is empty: send text with at least one character.")
        if len(text) > settings.max_chars:
            raise HTTPError(413, f"{name} has {len(text)} characters; the limit is "
                                 f"{settings.max_chars}. Split it into parts (at sentence ends) "
                                 "and send them as a batch.")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise HTTPError(422, f"{name} holds a lone surrogate (an escape such as \\ud800 "
                                 "without its pair), which is not Unicode text: send the text "
                                 "UTF-8 encoded.") from None
    return texts, single


def _entity_json(e: Entity) -> dict[str, Any]:
    return dataclasses.asdict(e)


# --------------------------------------------------------------------------- ASGI middleware


async def _send_json(send: Any, status: int, payload: Any, headers: Sequence[tuple[bytes, bytes]] = ()
                     ) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Mapping[str, Any], name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value
    return None


def token_problem(authorization: bytes | None, token: str) -> str | None:
    """None when the Authorization header carries `token` as a bearer token, else why not.

    Both sides are hashed first, so `hmac.compare_digest` compares two strings of the same length
    in a time that depends on neither: a plain `==` stops at the first differing character, and
    timing many guesses would reveal the token character by character."""
    if not authorization:
        return "missing"
    scheme, _, credentials = authorization.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return "not a bearer token"
    given = hashlib.sha256(credentials.strip()).digest()
    if not hmac.compare_digest(given, hashlib.sha256(token.encode()).digest()):
        return "wrong token"
    return None


class GuardMiddleware:
    """Access control and the body limit, before anything reads the body.

    1. With a token, every path but OPEN_PATHS needs `Authorization: Bearer <token>` (401
       otherwise, with `WWW-Authenticate: Bearer` as HTTP asks). Checked first, so a caller
       without the token cannot even make the service read a body.
    2. A body whose Content-Length is over the limit is refused (413) without reading it; a body
       sent without a length (chunked) is read up to the limit and refused as soon as it passes
       it. The body is then handed to the app, which never sees more than the limit.
    """

    def __init__(self, app: Any, token: str | None, body_limit: int) -> None:
        self.app, self.token, self.body_limit = app, token, body_limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.token is not None and scope["path"] not in OPEN_PATHS:
            problem = token_problem(_header(scope, b"authorization"), self.token)
            if problem is not None:
                await _send_json(send, 401, {"detail": (
                    f"Unauthorized ({problem}): send the header 'Authorization: Bearer <token>' "
                    "with the token the service was started with (its $LMCOURSE_SERVE_TOKEN, "
                    "--token-env or --token-file).")},
                    headers=[(b"www-authenticate", b'Bearer realm="lmcourse"')])
                return
        too_big = {"detail": f"The request body is over the limit of {self.body_limit} bytes: "
                             "send fewer or shorter texts per request."}
        declared = _header(scope, b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _send_json(send, 400, {"detail": "Content-Length is not a number."})
                return
            if size > self.body_limit:
                await _send_json(send, 413, too_big)
                return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: nothing to answer
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.body_limit:
                await _send_json(send, 413, too_big)
                return
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the app expects

        await self.app(scope, replay, send)


class MetricsMiddleware:
    """Counts, times and logs every request (outermost, so refusals by the guard count too).

    The endpoint label is the path only for the service's own endpoints and "other" for any
    other path: labels from caller-chosen strings would let anyone create unlimited time series
    (and memory) in the service and in Prometheus. The log line names the endpoint, status and
    time, and the number and size of the texts; the texts themselves only with --log-texts.
    """

    def __init__(self, app: Any, metrics: _Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        scope["lmcourse"] = info = {}  # the endpoint writes what the log line should say
        status = 500  # if the app raises before answering, the caller gets a 500
        start = time.perf_counter()

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except Exception:
            status = 500
            raise
        finally:
            seconds = time.perf_counter() - start
            self.metrics.observe(endpoint, status, seconds, info.get("texts", 0))
            extra = "".join(f" {k}={info[k]}" for k in ("texts", "chars", "entities") if k in info)
            if endpoint != "/metrics" or status >= 400:  # scrapes every few seconds: not logged
                log.info("%s %s %d %.1f ms%s", scope.get("method", "-"), endpoint, status,
                         seconds * 1000, extra)


# --------------------------------------------------------------------------- metrics


class _Metrics:
    """The service's Prometheus metrics.

    In multiprocess mode (PROMETHEUS_MULTIPROC_DIR set before prometheus_client was imported:
    `serve_forever` does it) every worker writes its counts into files of its own in that folder,
    and `render` adds up all the files, so any worker answers /metrics for all of them. Otherwise
    (one process, e.g. FastAPI's TestClient) the metrics live in a registry of this app's own, so
    two apps in one process never collide.
    """

    def __init__(self) -> None:
        import prometheus_client as pc

        self.multiprocess_dir = os.environ.get(ENV_MULTIPROC) or None
        # multiprocess: metrics are not registered anywhere (the files are the registry)
        self.registry = None if self.multiprocess_dir else pc.CollectorRegistry()
        r = self.registry
        self.requests = pc.Counter("lmcourse_http_requests", "HTTP requests answered, by "
                                   "endpoint and status code", ["endpoint", "status"], registry=r)
        self.errors = pc.Counter("lmcourse_http_errors", "Requests answered with a 5xx status "
                                 "(the service's failures, not the callers' mistakes)",
                                 ["endpoint"], registry=r)
        self.latency = pc.Histogram("lmcourse_http_request_duration_seconds", "Time from a "
                                    "request's arrival to its answer, by endpoint", ["endpoint"],
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.texts = pc.Counter("lmcourse_texts_processed", "Texts run through the model",
                                ["endpoint"], registry=r)
        self.model = pc.Gauge("lmcourse_model_info", "The served model (always 1): its version "
                              "(a hash of weights and config), folder name and entity types",
                              ["version", "name", "types"], registry=r, multiprocess_mode="max")
        self.started = pc.Gauge("lmcourse_worker_start_time_seconds", "When each worker process "
                                "started (Unix time; one series per worker process: label pid)",
                                registry=r, multiprocess_mode="all")
        self.ready = pc.Gauge("lmcourse_worker_ready", "1 once a worker process has loaded the "
                              "model (one series per worker process: label pid)",
                              registry=r, multiprocess_mode="all")
        self.started.set(time.time())
        # Create every series at 0 now: a rate() over a series that does not exist yet is empty,
        # not 0, and an alert on it could never fire (nor resolve) until the first error.
        for endpoint in ENDPOINTS:
            self.errors.labels(endpoint=endpoint)
            self.latency.labels(endpoint=endpoint)
        for endpoint in PREDICTING:
            self.texts.labels(endpoint=endpoint)

    def set_model(self, version: str, name: str, types: Sequence[str]) -> None:
        """Export the loaded model's version (once it is loaded, at start-up)."""
        self.model.labels(version=version, name=name, types=",".join(types)).set(1)

    def observe(self, endpoint: str, status: int, seconds: float, texts: int) -> None:
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()
        self.latency.labels(endpoint=endpoint).observe(seconds)
        if status >= 500:
            self.errors.labels(endpoint=endpoint).inc()
        if texts and status < 400:
            self.texts.labels(endpoint=endpoint).inc(texts)

    def render(self) -> tuple[bytes, str]:
        """The exposition text of all workers' metrics and its content type."""
        import prometheus_client as pc
        from prometheus_client import multiprocess

        if self.multiprocess_dir:
            registry = pc.CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)
        else:
            registry = self.registry
        return pc.generate_latest(registry), pc.CONTENT_TYPE_LATEST


# --------------------------------------------------------------------------- the app


_ENTITIES_EXAMPLE = '{"text": "Angela Merkel visited Paris."}'
_REDACT_EXAMPLE = '{"text": "Angela Merkel visited Paris.", "types": ["PER"]}'


def _openapi_body(model: type[BaseModel]) -> dict[str, Any]:
    # the endpoints parse the body themselves (parse_body); this documents it in /docs
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": model.model_json_schema()}}}}


def _limit_threads(settings: Settings) -> None:
    if settings.threads is not None:
        import torch

        torch.set_num_threads(settings.threads)


def create_app(settings: Settings, predictor: NerPredictor | None = None,
               version: str | None = None) -> FastAPI:
    """The service as a FastAPI app (ASGI): run it with uvicorn, or call it with TestClient.

    The model is loaded when the app starts (its lifespan: once per worker process, before the
    worker accepts a connection), unless `predictor` is given (then it is used as it is, and
    `version` names it; default: the hash of `settings.model_dir`). Middleware, outermost first:
    `MetricsMiddleware` (counts and times everything), `GuardMiddleware` (token, body size).
    """
    if version is None:
        version = model_version(settings.model_dir) if settings.model_dir.is_dir() else "unknown"
    metrics = _Metrics()
    state: dict[str, Any] = {"predictor": None, "types": [], "labels": []}

    def adopt(p: Any) -> None:
        state["predictor"], state["labels"] = p, list(p.labels)
        state["types"] = entity_types(p.labels)
        metrics.set_model(version, settings.model_dir.name, state["types"])

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        if predictor is not None:
            adopt(predictor)
        else:
            _limit_threads(settings)
            try:
                adopt(load_predictor(settings.model_dir))
            except ServeError as e:
                log.error("%s", e)  # one clear line; uvicorn then reports the failed start-up
                raise
        log.info("process %d: serving model version %s", os.getpid(), version)
        state["limiter"] = anyio.CapacityLimiter(1)  # one prediction at a time per worker
        metrics.ready.set(1)
        yield
        metrics.ready.set(0)
        state["predictor"] = None

    app = FastAPI(
        title="lmcourse NER service", version=version, lifespan=lifespan,
        description="Named entities of raw texts, and their redaction (lmcourse lesson 08).",
        middleware=[Middleware(MetricsMiddleware, metrics=metrics),
                    Middleware(GuardMiddleware, token=settings.token,
                               body_limit=settings.body_limit)])

    @app.exception_handler(HTTPError)
    async def _caller_mistake(request: Request, e: HTTPError) -> JSONResponse:
        return JSONResponse({"detail": e.message}, status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        # FastAPI's default 422 echoes the input back ("input": ...); this one never does
        problems = "; ".join(f"{_where(err.get('loc', ()))}: {err.get('msg', '')}"
                             for err in e.errors()[:5])
        return JSONResponse({"detail": f"Invalid request: {problems}."}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        detail = e.detail
        if e.status_code == 404:
            detail = f"No endpoint {request.url.path!r}; the service has {', '.join(ENDPOINTS)}."
        elif e.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}; see /docs."
        return JSONResponse({"detail": detail}, status_code=e.status_code, headers=e.headers)

    @app.exception_handler(Exception)
    async def _failure(request: Request, e: Exception) -> JSONResponse:
        # the service's own failure: logged with its traceback (never the texts), and a 500
        # that says where to look; the alert on lmcourse_http_errors_total fires on these
        log.error("%s %s failed: %s", request.method, request.url.path, type(e).__name__,
                  exc_info=(type(e), e, e.__traceback__))
        return JSONResponse({"detail": "Internal error of the service (not of your request); "
                                       "its log has the details."}, status_code=500)

    def _predictor() -> Any:
        if state["predictor"] is None:
            raise HTTPError(503, "The model is not loaded (yet): retry when /ready answers 200.")
        return state["predictor"]

    async def _read(request: Request, model: type[_Strict], example: str) -> Any:
        return parse_body(await request.body(), request.headers.get("content-type"), model, example)

    async def _predict(request: Request, texts: list[str]) -> list[list[Entity]]:
        predictor = _predictor()
        info = request.scope.setdefault("lmcourse", {})
        info["texts"], info["chars"] = len(texts), sum(len(t) for t in texts)
        if settings.log_texts:
            log.info("texts: %s", json.dumps(texts, ensure_ascii=False))
        found = await anyio.to_thread.run_sync(predictor.predict, texts, limiter=state["limiter"])
        info["entities"] = sum(len(f) for f in found)
        return found

    @app.post("/entities", response_model=EntitiesResponse,
              openapi_extra=_openapi_body(EntitiesRequest))
    async def entities(request: Request) -> dict[str, Any]:
        """The named entities of a text ({"text": ...}) or of each text of a batch ({"texts": [...]})."""
        body = await _read(request, EntitiesRequest, _ENTITIES_EXAMPLE)
        texts, single = request_texts(body, settings)
        found = await _predict(request, texts)
        out = [[_entity_json(e) for e in f] for f in found]
        return {"entities": out[0] if single else out, "model": version}

    @app.post("/redact", response_model=RedactResponse, response_model_exclude_none=True,
              openapi_extra=_openapi_body(RedactRequest))
    async def redact_endpoint(request: Request) -> dict[str, Any]:
        """The text(s) with the entities of the chosen types replaced by [TYPE]."""
        body = await _read(request, RedactRequest, _REDACT_EXAMPLE)
        texts, single = request_texts(body, settings)
        _predictor()
        known = state["types"]
        types = known if body.types is None else body.types
        unknown = sorted(set(types) - set(known))
        if unknown or not types:
            what = f"unknown entity types {unknown}" if unknown else "'types' is an empty list"
            raise HTTPError(422, f"{what}: this model predicts {', '.join(known)}. Leave 'types' "
                                 "out to redact all of them.")
        found = await _predict(request, texts)
        chosen = set(types)
        red = [redact(t, f, chosen) for t, f in zip(texts, found)]
        gone = [[_entity_json(e) for e in f if e.type in chosen] for f in found]
        if single:
            return {"text": red[0], "redacted": gone[0], "model": version}
        return {"texts": red, "redacted": gone, "model": version}

    @app.get("/model")
    async def model_info() -> dict[str, Any]:
        """What is served: version, labels, entity types (for /redact), and the limits."""
        _predictor()
        return {"version": version, "name": settings.model_dir.name, "labels": state["labels"],
                "types": state["types"], "max_chars": settings.max_chars,
                "max_batch": settings.max_batch, "max_body_bytes": settings.body_limit}

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Liveness: the process answers (a supervisor restarts a worker that stops answering)."""
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """Readiness: the model is loaded, so requests can be sent here (a load balancer sends
        traffic only to ready workers; a loading one is alive but not ready)."""
        if state["predictor"] is None:
            return JSONResponse({"ready": False, "detail": "the model is not loaded"}, 503)
        return JSONResponse({"ready": True})

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        """Prometheus metrics of all the workers (text format)."""
        data, content_type = metrics.render()
        return Response(data, media_type=content_type)

    return app


def _no_progress_bars() -> None:
    """No progress bars in a service's log (transformers draws one while loading weights)."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()


def app_from_env() -> FastAPI:
    """The app of one worker process, configured by environment variables (`Settings.from_env`):
    what uvicorn calls in each worker (`lmcourse.serve:app_from_env`, factory=True)."""
    _no_progress_bars()
    return create_app(Settings.from_env())


# --------------------------------------------------------------------------- alerts


def alert_rules(p95_seconds: float = 0.5, error_ratio: float = 0.05, window: str = "5m",
                for_: str = "10m", job: str | None = None) -> str:
    """Prometheus alerting rules for the service (a rules file, YAML), on the metrics it exports:

    - `NerServiceSlow`: the 95th-percentile latency of /entities and /redact over `window`
      (from the histogram's buckets, `histogram_quantile`) is above `p95_seconds`;
    - `NerServiceErrors`: more than `error_ratio` of those requests over `window` got a 5xx.

    Each must hold for `for_` before it fires, so one slow minute does not page anyone. Caller
    mistakes (4xx) are not errors here: a broken client must not page the service's owner.
    `job` restricts the rules to one scrape job. Save the text as `ner-alerts.yml`, list it under
    `rule_files:` in prometheus.yml, and scrape the service with its token:

        scrape_configs:
          - job_name: lmcourse-ner
            authorization: {credentials_file: /etc/prometheus/ner-token}
            static_configs: [{targets: ["127.0.0.1:8000"]}]
    """
    if not (p95_seconds > 0 and 0 < error_ratio < 1):
        raise ValueError(f"p95_seconds={p95_seconds}, error_ratio={error_ratio}: pass a latency "
                         "above 0 seconds and a ratio between 0 and 1.")
    for name, value in (("window", window), ("for_", for_)):
        if not re.fullmatch(r"\d+[smhd]", value):
            raise ValueError(f"{name}={value!r}: pass a Prometheus duration such as '5m' or '1h'.")
    sel = 'endpoint=~"/entities|/redact"' + (f',job="{job}"' if job else "")
    return f"""\
groups:
  - name: lmcourse-ner-service
    rules:
      - alert: NerServiceSlow
        expr: >-
          histogram_quantile(0.95, sum by (le)
          (rate(lmcourse_http_request_duration_seconds_bucket{{{sel}}}[{window}])))
          > {p95_seconds}
        for: {for_}
        labels:
          severity: warning
        annotations:
          summary: "NER service p95 latency above {p95_seconds} s"
          description: >-
            95% of /entities and /redact requests took up to {{{{ $value | humanize }}}}s over
            the last {window}. Check the texts' sizes, the number of workers and the load.
      - alert: NerServiceErrors
        expr: >-
          sum(rate(lmcourse_http_errors_total{{{sel}}}[{window}]))
          / sum(rate(lmcourse_http_requests_total{{{sel}}}[{window}]))
          > {error_ratio}
        for: {for_}
        labels:
          severity: critical
        annotations:
          summary: "NER service answers more than {error_ratio:.0%} of requests with 5xx"
          description: >-
            {{{{ $value | humanizePercentage }}}} of /entities and /redact requests failed over
            the last {window}. The service's log has the tracebacks.
"""


# --------------------------------------------------------------------------- running it


def _log_config(level: str = "INFO") -> dict[str, Any]:
    """Logging for uvicorn and this module: one line per event, with the worker's process id."""
    handler = {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}
    quiet = {"handlers": ["stderr"], "level": level, "propagate": False}
    return {"version": 1, "disable_existing_loggers": False,
            "formatters": {"plain": {"format": "%(asctime)s [%(process)d] %(levelname)s "
                                               "%(name)s: %(message)s"}},
            "handlers": {"stderr": handler},
            "loggers": {"uvicorn": quiet, "uvicorn.access": quiet, LOGGER: dict(quiet)}}


def _bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port); port 0: a free port the system picks (no race with
    another program between choosing the port and binding it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ServeError(f"Cannot listen on {host}:{port} ({e.strerror or e}): another program "
                         "uses the port, or the address is not this machine's. Pick another "
                         "--port (0: any free one) or --host.") from None
    if family in (socket.AF_INET, socket.AF_INET6):
        # Answer without waiting: with Nagle's algorithm on, a small response written in two
        # parts (headers, then body) waits for the client's delayed ACK, 40 ms on Linux. asyncio
        # turns it off for the connections it accepts, but not on a socket handed over by its
        # file descriptor (uvicorn's fd= path); connections inherit it from the listening socket.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.set_inheritable(True)
    return sock


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(0)  # a requested stop: unwind (finally blocks run) and exit 0


def serve_forever(settings: Settings, host: str = "127.0.0.1", port: int = 8000,
                  workers: int = 1, port_file: str | Path | None = None) -> int:
    """Run the service until it is stopped (Ctrl-C, SIGTERM); what `lmcourse serve` does.

    1. A fresh, private PROMETHEUS_MULTIPROC_DIR for this run (a fixed or shared folder would add
       an earlier run's, or another server's, counts to this one's); removed at the end.
    2. The model is loaded once here (`load_predictor`): a broken folder stops everything now with
       one message. With one worker this process serves with that model; with several, it is
       dropped and each worker loads its own (on its device; here it is loaded on the CPU so the
       supervisor holds no GPU memory).
    3. The socket is bound here (port 0: a free port), its port written to `port_file`, and
       uvicorn serves on it, with `workers` processes sharing it.
    """
    import uvicorn

    if workers < 1:
        raise ServeError(f"--workers {workers}: pass at least 1.")
    metrics_dir = tempfile.mkdtemp(prefix="lmcourse-serve-metrics-")
    saved = dict(os.environ)  # put back at the end: a caller's process is left as it was
    os.environ[ENV_MULTIPROC] = metrics_dir  # before prometheus_client is imported anywhere here
    # uvicorn stops gracefully on SIGTERM, then raises the signal again with the handler it found;
    # Python's default one would end the process at once, skipping the clean-up below
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if in_main else None
    try:
        if workers > 1 and settings.threads is None and "OMP_NUM_THREADS" not in os.environ:
            # N workers each using every core would fight over them: share the cores out
            settings = dataclasses.replace(settings, threads=max(1, (os.cpu_count() or 1) // workers))
        _no_progress_bars()
        start = time.perf_counter()
        predictor = load_predictor(settings.model_dir, device="cpu" if workers > 1 else None)
        version = model_version(settings.model_dir)
        types = entity_types(predictor.labels)
        print(f"lmcourse serve: model {settings.model_dir} (version {version}, types "
              f"{', '.join(types)}) checked in {time.perf_counter() - start:.1f} s",
              file=sys.stderr, flush=True)
        sock = _bind(host, port)
        bound = sock.getsockname()[1]
        access = ("a token is required" if settings.token else
                  f"OPEN: no token (set ${ENV_TOKEN} to require one)")
        print(f"lmcourse serve: {_url(host, bound)} with {workers} worker(s); {access}; at most "
              f"{settings.max_chars} characters per text, {settings.max_batch} texts and "
              f"{settings.body_limit} bytes per request; texts "
              f"{'ARE logged (--log-texts)' if settings.log_texts else 'are not logged'}; "
              f"metrics of the workers in {metrics_dir}", file=sys.stderr, flush=True)
        if settings.token is None and host not in ("127.0.0.1", "::1", "localhost"):
            print(f"lmcourse serve: WARNING: {host} may be reachable from other machines and no "
                  "token is set: anyone who reaches it can use the model.", file=sys.stderr)
        if port_file is not None:
            tmp = Path(f"{port_file}.tmp")
            tmp.write_text(str(bound))
            os.replace(tmp, port_file)  # a reader never sees a half-written file
        common = dict(log_config=_log_config(), access_log=False, timeout_graceful_shutdown=10,
                      server_header=False)
        if os.name == "nt":  # no socket hand-over on Windows: uvicorn binds the port itself
            sock.close()
            where: dict[str, Any] = {"host": host, "port": bound}
        else:
            where = {"fd": sock.fileno()}
        if workers == 1:
            _limit_threads(settings)
            app = create_app(settings, predictor=predictor, version=version)
            uvicorn.run(app, **where, **common)
        else:
            del predictor
            os.environ.update(settings.to_env())  # what the workers' app_from_env reads
            uvicorn.run("lmcourse.serve:app_from_env", factory=True, workers=workers,
                        **where, **common)
        return 0
    finally:
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(metrics_dir, ignore_errors=True)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class RunningService:
    """A service started by `start` in a background process: `url`, `log_text()`, `stop()`.
    Also a context manager that stops it on exit."""

    def __init__(self, process: subprocess.Popen, url: str, log_path: Path, tmp: Path | None) -> None:
        self.process, self.url, self.log_path, self._tmp = process, url, log_path, tmp
        self._final_log: str | None = None

    def log_text(self) -> str:
        """Everything the service wrote to stdout and stderr so far."""
        if self._final_log is not None:
            return self._final_log
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> int | None:
        """Stop the service (SIGTERM: finish the requests in flight, stop the workers; after
        `timeout` seconds, kill its whole process group) and return its exit code."""
        _stop(self.process, timeout)
        if self._tmp is not None:
            self._final_log = self.log_text()  # the temporary log goes; its text stays
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        return self.process.returncode

    def __enter__(self) -> RunningService:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        alive = "running" if self.process.poll() is None else f"exited {self.process.returncode}"
        return f"RunningService({self.url}, pid {self.process.pid}, {alive})"


def _stop(process: subprocess.Popen, timeout: float) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        if os.name == "posix":
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # its own group: the workers too
        else:
            process.kill()
        process.wait(timeout)


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _all_ready(url: str, workers: int, token: str | None) -> bool:
    """Whether /ready answers 200 and, with several workers, /metrics shows all of them ready
    (a worker that answers /ready says nothing about the others, still loading the model)."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        if httpx.get(f"{url}/ready", timeout=2.0).status_code != 200:
            return False
        if workers == 1:
            return True
        text = httpx.get(f"{url}/metrics", headers=headers, timeout=2.0).text
    except httpx.HTTPError:
        return False
    ready = re.findall(r"^lmcourse_worker_ready\{[^}]*\} 1(?:\.0)?$", text, flags=re.M)
    return len(ready) >= workers


def start(model_dir: str | Path, *, workers: int = 1, token: str | None = None,
          host: str = "127.0.0.1", max_chars: int | None = None, max_batch: int | None = None,
          max_body_bytes: int | None = None, log_texts: bool = False,
          log_path: str | Path | None = None, timeout: float = 180.0,
          env: Mapping[str, str] | None = None) -> RunningService:
    """Start `lmcourse serve model_dir` in a background process on a free port of `host` and
    return once it is ready: /ready answers 200 and, with several workers, every worker has
    loaded the model (/metrics' lmcourse_worker_ready). A RunningService: `stop()` it, or use
    `running`.

    The port is chosen by the system when the server binds it (`--port 0`) and read back from a
    file the server writes, so two services started at once never pick the same one. The token
    goes to the server in $LMCOURSE_SERVE_TOKEN, not on its command line. The server's output
    goes to `log_path` (default: a temporary file); if it exits or is not ready within `timeout`
    seconds, a ServeError carries the end of that output.
    """
    tmp = Path(tempfile.mkdtemp(prefix="lmcourse-serve-"))
    port_file = tmp / "port"
    log_file = Path(log_path) if log_path is not None else tmp / "server.log"
    cmd = [sys.executable, "-m", "lmcourse", "serve", str(model_dir), "--host", host,
           "--port", "0", "--port-file", str(port_file), "--workers", str(workers)]
    for flag, value in (("--max-chars", max_chars), ("--max-batch", max_batch),
                        ("--max-body-bytes", max_body_bytes)):
        if value is not None:
            cmd += [flag, str(value)]
    if log_texts:
        cmd.append("--log-texts")
    child_env = dict(os.environ)
    child_env.pop(ENV_TOKEN, None)  # token=None means no token, whatever this process has set
    if token is not None:
        child_env[ENV_TOKEN] = check_token(token)
    child_env["PYTHONUNBUFFERED"] = "1"
    child_env.update(env or {})
    with open(log_file, "wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=child_env,
                                   start_new_session=os.name == "posix")
    service = RunningService(process, "", log_file, tmp)
    deadline = time.monotonic() + timeout
    try:
        while True:
            code = process.poll()
            if code is not None:
                raise ServeError(f"The service exited with code {code} before it was ready. "
                                 f"Its output:\n{_tail(service.log_text())}")
            if time.monotonic() > deadline:
                raise ServeError(f"The service was not ready after {timeout:.0f} s. Its output:\n"
                                 f"{_tail(service.log_text())}")
            if not service.url and port_file.exists():
                service.url = _url(host, int(port_file.read_text()))
            if service.url and _all_ready(service.url, workers, token):
                return service
            time.sleep(0.1)
    except BaseException:
        service.stop()
        raise


@contextlib.contextmanager
def running(model_dir: str | Path, *, workers: int = 1, token: str | None = None,
            **kwargs: Any) -> Iterator[str]:
    """`with running(model_dir, workers=1, token=None) as url:` the real service, started in a
    background process on a free loopback port and ready (`start`, which takes the same
    keywords), is at `url` (e.g. "http://127.0.0.1:43817") until the block ends; then it is
    stopped."""
    service = start(model_dir, workers=workers, token=token, **kwargs)
    try:
        yield service.url
    finally:
        service.stop()
