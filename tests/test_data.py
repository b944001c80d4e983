"""Tests for lmcourse.data: source order, offline behaviour, clear errors on bad input."""

import re
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


# ------------------------------------------------------------------ SST-2

SST2_TRAIN = "label\tsentence\r\n0\thide new secretions from the parental units\r\n1\tthe greatest musicians\r\n"
SST2_DEV = "label\tcontent\n1\tit 's a charming and often affecting journey .\n0\tunflinchingly bleak .\n"


def _sst2_folder(tmp_path):
    folder = tmp_path / "sst2data"
    (folder / "sst2").mkdir(parents=True)
    (folder / "sst2" / "train.tsv").write_bytes(SST2_TRAIN.encode())  # CRLF, as the real train.tsv
    (folder / "sst2" / "dev.tsv").write_text(SST2_DEV)
    (folder / "sst2" / "test.tsv").write_text(SST2_DEV)
    return folder


def _hub_split(labels=(0, 1)):
    """A small dataset shaped as the Hub's stanfordnlp/sst2: idx first, sentences ending in a space."""
    import datasets

    features = datasets.Features({
        "idx": datasets.Value("int32"),
        "sentence": datasets.Value("string"),
        "label": datasets.ClassLabel(names=["negative", "positive"]),
    })
    return datasets.Dataset.from_dict(
        {"idx": list(range(len(labels))),
         "sentence": ["hide new secretions from the parental units ", "the greatest musicians "][: len(labels)],
         "label": list(labels)},
        features=features,
    )


def test_sst2_three_sources_give_the_same_columns(clean_env, monkeypatch, capsys):
    calls = []

    def fake_hub(path, split, revision=None):
        calls.append((path, split, revision))
        return _hub_split()

    monkeypatch.setattr(data, "load_hub_dataset", fake_hub)
    monkeypatch.setenv("LMCOURSE_DATA_DIR", str(_sst2_folder(clean_env)))
    local = data.load_sst2("train")
    assert "from local source" in capsys.readouterr().out
    monkeypatch.delenv("LMCOURSE_DATA_DIR")
    online = data.load_sst2("dev")  # the alias reaches the Hub as "validation"
    out = capsys.readouterr().out
    assert "from online source: Hugging Face Hub stanfordnlp/sst2" in out and "LMCOURSE_DATA_DIR unset" in out
    assert calls == [("stanfordnlp/sst2", "validation", data.SST2_HUB_REVISION)]
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    offline = data.load_sst2("train")
    out = capsys.readouterr().out
    assert "from offline source: synthetic sample, not SST-2" in out and "skipped (HF_DATASETS_OFFLINE=1)" in out
    assert len(calls) == 1  # offline: the Hub is not asked

    features = data.sst2_features()
    for ds in (local, online, offline):
        assert ds.features == features and ds.column_names == ["idx", "sentence", "label"]
        assert ds.features["label"].names == ["negative", "positive"]
        first = ds[0]
        assert [type(v) for v in first.values()] == [int, str, int] and first["idx"] == 0
        assert first["sentence"] == first["sentence"].strip() and first["label"] in (0, 1)
    assert local[0] == online[0] == {"idx": 0, "sentence": "hide new secretions from the parental units",
                                     "label": 0}
    assert local.split == "train" and online.split == "validation"
    assert "synthetic sample, not SST-2" in offline.info.description
    assert "local source" in local.info.description and "online source" in online.info.description


def test_hub_call_pins_the_revision_and_uses_the_course_cache(clean_env, monkeypatch):
    import datasets

    seen = {}
    monkeypatch.setattr(datasets, "load_dataset", lambda path, **kw: seen.update(path=path, **kw) or "ds")
    assert data.load_hub_dataset("stanfordnlp/sst2", split="train", revision="abc") == "ds"
    assert seen == {"path": "stanfordnlp/sst2", "split": "train", "revision": "abc",
                    "cache_dir": str(clean_env / "cache" / "datasets")}


def test_sst2_hub_test_split_is_refused(clean_env, monkeypatch):
    monkeypatch.setattr(data, "load_hub_dataset", lambda *a, **k: pytest.fail("must not download"))
    with pytest.raises(DataError, match=r"no labels.*-1.*Evaluate on 'validation'.*model_selection_split") as err:
        data.load_sst2("test")
    assert "sst2/test.tsv" in str(err.value)


def test_sst2_local_test_split_is_labelled(clean_env, monkeypatch):
    monkeypatch.setenv("LMCOURSE_DATA_DIR", str(_sst2_folder(clean_env)))
    monkeypatch.setattr(data, "load_hub_dataset", lambda *a, **k: pytest.fail("must not download"))
    test = data.load_sst2("test", quiet=True)
    assert list(test["label"]) == [1, 0] and test.split == "test"


def test_sst2_hub_with_hidden_labels_is_rejected(clean_env, monkeypatch):
    monkeypatch.setattr(data, "load_hub_dataset", lambda *a, **k: _hub_split(labels=(0, -1)))
    with pytest.raises(DataError, match=r"row 1: label -1 is not 0 or 1 \(-1: the label is hidden\)"):
        data.load_sst2("train")


def test_sst2_hub_unreachable_falls_back_to_the_sample(clean_env, monkeypatch, capsys):
    def down(*a, **k):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(data, "load_hub_dataset", down)
    ds = data.load_sst2("validation")
    out = capsys.readouterr().out
    assert "online: stanfordnlp/sst2 failed (ConnectionError: no route to host)" in out
    assert "synthetic sample, not SST-2" in out and len(ds) == data.SYNTHETIC_SST2_SIZES["validation"]


def test_sst2_real_files_when_present(monkeypatch, capsys):
    from lmcourse.config import data_dir_from_env

    folder = data_dir_from_env()
    if folder is None or not (folder / "sst2" / "train.tsv").is_file():
        pytest.skip("needs LMCOURSE_DATA_DIR with sst2/{train,dev,test}.tsv (the real SST-2 files)")
    train = data.load_sst2("train")
    assert "67,349 rows (29,780 negative / 37,569 positive)" in capsys.readouterr().out
    assert len(train) == 67_349 and list(train["label"]).count(0) == 29_780
    assert train[0] == {"idx": 0, "sentence": "hide new secretions from the parental units", "label": 0}
    dev, test = data.load_sst2("dev", quiet=True), data.load_sst2("test", quiet=True)
    assert (len(dev), len(test)) == (872, 1_821)
    assert dev[0]["sentence"] == "one long string of cliches ." and set(test["label"]) == {0, 1}
    assert all(s and s == s.strip() for s in train["sentence"])


@pytest.mark.parametrize("line, msg", [
    ("\tgood fun .", r"line 3: missing label"),
    ("2\tgood fun .", r"line 3: label '2' is not 0 \(negative\) or 1 \(positive\)"),
    ("-1\tgood fun .", r"line 3: label '-1' .*hidden label"),
    ("1\t   ", r"line 3: empty text"),
    ("1 good fun .", r"line 3: expected 2 tab-separated columns \(label sentence\), found 1"),
    ("1\tgood\tfun .", r"line 3: expected 2 tab-separated columns .*found 3"),
])
def test_sst2_bad_row_names_file_and_line(tmp_path, line, msg):
    path = tmp_path / "bad.tsv"
    path.write_text(f"label\tsentence\n0\tdull .\n{line}\n1\tfine .\n")
    with pytest.raises(DataError, match=msg) as err:
        data.read_sst2_tsv(path)
    assert str(path) in str(err.value)


def test_sst2_header_is_required_and_order_free(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_text("0\tdull .\n1\tfine .\n")
    with pytest.raises(DataError, match=r"x\.tsv, line 1: expected a header"):
        data.read_sst2_tsv(path)
    path.write_text("index\tsentence\n0\tdull .\n")
    with pytest.raises(DataError, match="has no labels"):
        data.read_sst2_tsv(path)
    path.write_text("sentence\tlabel\ndull .\t0\n  fine .  \t1\n\n")  # GLUE's order, spaces, a blank line
    assert data.read_sst2_tsv(path) == [(0, "dull ."), (1, "fine .")]
    path.write_text("label\tcontent\n")
    with pytest.raises(DataError, match="no rows"):
        data.read_sst2_tsv(path)


def test_sst2_missing_file_says_which_and_the_fix(clean_env, monkeypatch):
    with pytest.raises(DataError, match=r"No SST-2 file at .*nope\.tsv.*LMCOURSE_DATA_DIR"):
        data.read_sst2_tsv(clean_env / "nope.tsv")
    monkeypatch.setenv("LMCOURSE_DATA_DIR", str(clean_env))
    with pytest.raises(DataError, match=r"Could not load SST-2 'validation'.*no .*sst2/dev\.tsv.*"
                                        r"Fix: set LMCOURSE_DATA_DIR to a folder with sst2/dev\.tsv"):
        data.load_sst2("dev", sources=("local",))


def test_sst2_split_names():
    assert data.sst2_split_name("dev") == data.sst2_split_name("validation") == "validation"
    with pytest.raises(DataError, match="Unknown SST-2 split 'valid'"):
        data.load_sst2("valid")
    with pytest.raises(DataError, match="Unknown source"):
        data.load_sst2("train", sources=("hub",))


def test_synthetic_sst2_file_is_what_the_generator_writes(tmp_path):
    written = data.write_synthetic_sst2(tmp_path / "again")
    committed = data.project_data_dir() / data.SYNTHETIC_SST2_DIR
    for name in ("train.tsv", "dev.tsv", "test.tsv"):
        assert (written / name).read_bytes() == (committed / name).read_bytes(), (
            f"data/{data.SYNTHETIC_SST2_DIR}/{name} differs from what write_synthetic_sst2() "
            "writes; regenerate it with lm.data.write_synthetic_sst2()")


def test_synthetic_sst2_sample():
    splits = data.synthetic_sst2()
    assert {k: len(v) for k, v in splits.items()} == data.SYNTHETIC_SST2_SIZES
    texts = [t for rows in splits.values() for _, t in rows]
    assert len(set(texts)) == len(texts)  # no sentence in two splits, none twice
    for rows in splits.values():
        assert sum(label for label, _ in rows) == len(rows) // 2
    negated = [(label, m.group(1)) for label, t in splits["train"]
               if (m := re.search(r" (?:not|n't|never) (\w+) \.$", t))]
    assert len(negated) > 20  # "not good" is negative, "not bad" positive
    assert {label for label, word in negated if word in data._POSITIVE} == {0}
    assert {label for label, word in negated if word in data._NEGATIVE} == {1}
    assert data.synthetic_sst2(seed=1) != splits and data.synthetic_sst2() == splits


def test_synthetic_sst2_without_data_folder_is_composed_in_memory(clean_env, monkeypatch, capsys):
    monkeypatch.setenv("LMCOURSE_OFFLINE", "1")
    from_file = data.load_sst2("test", quiet=True)
    monkeypatch.setattr(data, "project_data_dir", lambda: clean_env / "no-such-folder")
    in_memory = data.load_sst2("test")
    assert "composed in memory" in capsys.readouterr().out
    assert in_memory.to_dict() == from_file.to_dict()


def _labelled(n_neg, n_pos):
    from lmcourse.data import _sst2_dataset

    rows = [(0, f"neg {i}") for i in range(n_neg)] + [(1, f"pos {i}") for i in range(n_pos)]
    return _sst2_dataset(rows, "train", "test rows")


def test_model_selection_split_is_stratified_and_deterministic():
    train = _labelled(40, 60)
    rest, held = data.model_selection_split(train, 0.2, seed=3)
    assert (len(rest), len(held)) == (80, 20)
    assert list(held["label"]).count(0) == 8 and list(held["label"]).count(1) == 12  # each label keeps its share
    held_idx, rest_idx = list(held["idx"]), list(rest["idx"])
    assert sorted(rest_idx + held_idx) == list(range(100))  # disjoint, nothing lost
    assert held_idx == sorted(held_idx) and rest_idx == sorted(rest_idx)  # train's order
    again_rest, again = data.model_selection_split(train, 0.2, seed=3)
    assert list(again["idx"]) == held_idx and list(again_rest["idx"]) == rest_idx
    assert list(data.model_selection_split(train, 0.2, seed=4)[1]["idx"]) != held_idx
    _, seven = data.model_selection_split(train, 7, seed=3)
    assert len(seven) == 7 and list(seven["label"]).count(1) == 4  # 4.2 positive, 2.8 negative: remainders
    _, plain = data.model_selection_split(train, 30, seed=3, stratify=False)
    assert len(plain) == 30


@pytest.mark.parametrize("size", [0, 10, -3, 0.0, 1.0, 1.5])
def test_model_selection_split_rejects_bad_sizes(size):
    with pytest.raises(DataError, match="Cannot hold out|between 0 and 1"):
        data.model_selection_split(_labelled(5, 5), size)
