"""Tests for lmcourse.data: source order, offline behaviour, clear errors on bad input."""

import urllib.request

import pytest

from lmcourse import data
from lmcourse.data import DataError, load_corpus

TEXT = "To be, or not to be, that is the question.\n" * 50


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "LMCOURSE_OFFLINE",
              "LMCOURSE_DATA_DIR"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("LMCOURSE_CACHE", str(tmp_path / "cache"))
    return tmp_path


def _local(tmp_path, text=TEXT, raw=None):
    folder = tmp_path / "data" / "tinyshakespeare"
    folder.mkdir(parents=True)
    f = folder / "input.txt"
    if raw is not None:
        f.write_bytes(raw)
    else:
        f.write_text(text)
    return tmp_path / "data"


def test_local_folder_comes_first(clean_env, monkeypatch, capsys):
    monkeypatch.setenv("LMCOURSE_DATA_DIR", str(_local(clean_env)))
    monkeypatch.setattr(data, "download", lambda *a, **k: pytest.fail("must not download"))
    c = load_corpus("tinyshakespeare")
    assert c.source == "local" and c.text == TEXT
    assert "from local source" in capsys.readouterr().out


def test_offline_skips_network_and_falls_back(clean_env, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("network used"))
    c = load_corpus("tinyshakespeare")
    assert c.source == "offline" and "pydoc_data" in c.location
    assert len(c.text.split()) > 50_000
    out = capsys.readouterr().out
    assert "skipped (HF_HUB_OFFLINE=1)" in out and "offline stand-in" in out


def test_online_download_is_cached(clean_env, monkeypatch):
    calls = []

    def fake_download(url, dest, timeout=20.0):
        calls.append(url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(TEXT)
        return dest

    monkeypatch.setattr(data, "download", fake_download)
    c = load_corpus("tinyshakespeare", quiet=True)
    assert c.source == "online" and c.text == TEXT and calls == [data.CORPORA["tinyshakespeare"].url]
    c2 = load_corpus("tinyshakespeare", quiet=True)  # second time: from the cache
    assert c2.text == TEXT and len(calls) == 1 and "cached" in c2.location


def test_failed_download_falls_back_and_leaves_no_partial_file(clean_env, monkeypatch):
    def broken(url, timeout):
        raise OSError("no route to host")

    monkeypatch.setattr(urllib.request, "urlopen", broken)
    c = load_corpus("tinyshakespeare", quiet=True)
    assert c.source == "offline"
    assert not list((clean_env / "cache").rglob("*.txt"))


def test_nothing_works_names_what_was_tried(clean_env, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="LMCOURSE_DATA_DIR unset.*skipped.*Fix: set LMCOURSE_DATA_DIR"):
        load_corpus("tinyshakespeare", sources=("local", "online"))


@pytest.mark.parametrize("raw, msg", [
    (b"\x00\x01binary" * 200, "looks binary"),
    ("caf\u00e9 ".encode("latin-1") * 400, "not UTF-8"),
    (b"too short", "only 9 characters"),
])
def test_bad_local_file_names_the_file_and_fix(clean_env, monkeypatch, raw, msg):
    folder = _local(clean_env, raw=raw)
    monkeypatch.setenv("LMCOURSE_DATA_DIR", str(folder))
    with pytest.raises(DataError, match=msg) as err:
        load_corpus("tinyshakespeare")
    assert "input.txt" in str(err.value)


def test_unknown_corpus_and_source():
    with pytest.raises(DataError, match="choose one of"):
        load_corpus("wikipedia")
    with pytest.raises(DataError, match="Unknown source"):
        load_corpus("pydoc", sources=("ftp",))


def test_real_shared_data_when_present(monkeypatch):
    from lmcourse.config import data_dir_from_env

    folder = data_dir_from_env()
    if folder is None or not (folder / "tinyshakespeare/input.txt").is_file():
        pytest.skip("LMCOURSE_DATA_DIR with tinyshakespeare/input.txt not set")
    c = load_corpus("tinyshakespeare", quiet=True)
    assert c.source == "local" and len(c.text) == 1_115_394 and c.text.startswith("First Citizen")


class _Response:
    def __init__(self, payload: bytes, fail_after: int | None = None):
        self.chunks = [payload[i:i + 1000] for i in range(0, len(payload), 1000)]
        self.fail_after = fail_after

    def read(self, n):
        if self.fail_after is not None and self.fail_after <= 0:
            raise ConnectionResetError("connection reset mid-download")
        if self.fail_after is not None:
            self.fail_after -= 1
        return self.chunks.pop(0) if self.chunks else b""

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_download_writes_the_whole_file(tmp_path, monkeypatch):
    payload = TEXT.encode() * 3
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: _Response(payload))
    dest = data.download("https://example.org/x.txt", tmp_path / "sub" / "x.txt")
    assert dest.read_bytes() == payload and not list(tmp_path.rglob("*.part"))


def test_interrupted_download_leaves_no_file_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen",
                        lambda url, timeout: _Response(TEXT.encode() * 3, fail_after=2))
    dest = tmp_path / "x.txt"
    with pytest.raises(ConnectionResetError):
        data.download("https://example.org/x.txt", dest)
    assert not dest.exists() and not list(tmp_path.iterdir())


# ------------------------------------------------------------------ CoNLL reader

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O
. . O O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER


-DOCSTART- -X- -X- O

BRUSSELS NNP B-NP B-LOC
1996-08-22 CD I-NP O"""  # no blank line at the end, and two blank lines in a row above


def test_read_conll_sentences(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text(CONLL + "\n")
    sentences = data.read_conll_sentences(path)
    assert sentences == [["EU", "rejects", "German", "call", "."], ["Peter", "Blackburn"],
                         ["BRUSSELS", "1996-08-22"]]
    path.write_text(CONLL)  # ends without a newline
    assert data.read_conll_sentences(path)[-1] == ["BRUSSELS", "1996-08-22"]
    assert data.conll_texts(path)[0] == "EU rejects German call ."


def test_read_conll_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    lines = CONLL.splitlines()
    lines[3] = "rejects VBZ B-VP"  # 3 columns on line 4
    path.write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"bad\.txt, line 4: expected 4 columns.*found 3"):
        data.read_conll_sentences(path)
    lines[3] = "rejects VBZ O B-VP_wrong extra"
    path.write_text("\n".join(lines))
    with pytest.raises(DataError, match="line 4"):
        data.read_conll_sentences(path)
    lines[3] = "rejects VBZ O B-VP_wrong".replace("B-VP_wrong", "VBZ")  # columns shifted
    path.write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"line 4: the NER column holds 'VBZ'"):
        data.read_conll_sentences(path)


def test_read_conll_missing_or_empty_file(tmp_path):
    with pytest.raises(DataError, match="No CoNLL file at .*nope.txt"):
        data.read_conll_sentences(tmp_path / "nope.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("-DOCSTART- -X- -X- O\n\n\n")
    with pytest.raises(DataError, match="no sentences"):
        data.read_conll_sentences(empty)


def test_conll_path_uses_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("LMCOURSE_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="LMCOURSE_DATA_DIR is unset"):
        data.conll_path("train")
    monkeypatch.setenv("LMCOURSE_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match="No .*conll2003.*train.txt"):
        data.conll_path("train")
    (tmp_path / "conll2003").mkdir()
    (tmp_path / "conll2003" / "train.txt").write_text(CONLL)
    assert data.conll_path("train") == (tmp_path / "conll2003" / "train.txt").resolve()
    with pytest.raises(DataError, match="Unknown CoNLL split"):
        data.conll_path("dev")
