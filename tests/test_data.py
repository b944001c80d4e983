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


# ------------------------------------------------------------------ CoNLL named entities

CONLL_TAGGED = [  # (tokens, POS, chunk, NER) of the CONLL text above, for the mocked Hub
    (["EU", "rejects", "German", "call", "."], ["NNP", "VBZ", "JJ", "NN", "."],
     ["B-NP", "B-VP", "B-NP", "I-NP", "O"], ["B-ORG", "O", "B-MISC", "O", "O"]),
    (["Peter", "Blackburn"], ["NNP", "NNP"], ["B-NP", "I-NP"], ["B-PER", "I-PER"]),
    (["BRUSSELS", "1996-08-22"], ["NNP", "CD"], ["B-NP", "I-NP"], ["B-LOC", "O"]),
]
HUB_POS = ['"', "NNP", "VBZ", "JJ", "NN", ".", "CD"]  # a few of the Hub's 47 POS names
HUB_CHUNK = ["O", "B-NP", "I-NP", "B-VP"]
TNER_ORDER = ["O", "B-ORG", "B-MISC", "B-PER", "I-PER", "B-LOC", "I-ORG", "I-MISC", "I-LOC"]


def _conll_hub_split(ner_names=data.CONLL2003_LABELS, as_strings=False):
    """A small dataset shaped as the Hub's eriktks/conll2003: id (string), tokens, pos_tags,
    chunk_tags, ner_tags, each tag column a list of ClassLabel (`ner_names=None`: bare ints)."""
    import datasets

    if as_strings:
        ner_feature, encode = datasets.Value("string"), (lambda t: t)
    elif ner_names is None:
        ner_feature, encode = datasets.Value("int64"), data.CONLL2003_LABELS.index
    else:
        ner_feature, encode = datasets.ClassLabel(names=list(ner_names)), list(ner_names).index
    features = datasets.Features({
        "id": datasets.Value("string"),
        "tokens": datasets.List(datasets.Value("string")),
        "pos_tags": datasets.List(datasets.ClassLabel(names=HUB_POS)),
        "chunk_tags": datasets.List(datasets.ClassLabel(names=HUB_CHUNK)),
        "ner_tags": datasets.List(ner_feature),
    })
    return datasets.Dataset.from_dict({
        "id": [str(i) for i in range(len(CONLL_TAGGED))],
        "tokens": [s[0] for s in CONLL_TAGGED],
        "pos_tags": [[HUB_POS.index(p) for p in s[1]] for s in CONLL_TAGGED],
        "chunk_tags": [[HUB_CHUNK.index(c) for c in s[2]] for s in CONLL_TAGGED],
        "ner_tags": [[encode(t) for t in s[3]] for s in CONLL_TAGGED],
    }, features=features)


def _conll_folder(tmp_path, text=CONLL):
    folder = tmp_path / "nerdata"
    (folder / "conll2003").mkdir(parents=True)
    for name in ("train.txt", "valid.txt", "test.txt"):
        (folder / "conll2003" / name).write_text(text)
    return folder


def _as_names(ds):
    """Each row's tags as label names (through the dataset's own ClassLabel)."""
    names = ds.features["ner_tags"].feature.names
    return [[names[i] for i in row] for row in ds["ner_tags"]]


def test_conll_three_sources_give_the_same_features(clean_env, monkeypatch, capsys):
    calls = []

    def fake_hub(path, split, revision=None):
        calls.append((path, split, revision))
        return _conll_hub_split()

    monkeypatch.setattr(data, "load_hub_dataset", fake_hub)
    monkeypatch.setenv("LMCOURSE_DATA_DIR", str(_conll_folder(clean_env)))
    local = data.load_conll("valid")
    out = capsys.readouterr().out
    assert "conll2003 'validation' from local source" in out and "conll2003/valid.txt" in out
    assert "3 sentences, 9 tokens, 4 entities (PER 1 / ORG 1 / LOC 1 / MISC 1)" in out
    monkeypatch.delenv("LMCOURSE_DATA_DIR")
    online = data.load_conll("dev")  # the alias reaches the Hub as "validation"
    out = capsys.readouterr().out
    assert "from online source: Hugging Face Hub eriktks/conll2003@refs/convert/parquet" in out
    assert "LMCOURSE_DATA_DIR unset" in out
    assert calls == [("eriktks/conll2003", "validation", "refs/convert/parquet")]
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    offline = data.load_conll("validation")
    out = capsys.readouterr().out
    assert "from offline source: synthetic sample, not CoNLL-2003" in out
    assert "skipped (HF_DATASETS_OFFLINE=1)" in out and "note: this is a synthetic sample" in out
    assert len(calls) == 1  # offline: the Hub is not asked

    features = data.conll_features()
    assert list(features["ner_tags"].feature.names) == [
        "O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    for ds in (local, online, offline):
        assert ds.features == features and ds.column_names == ["id", "tokens", "ner_tags"]
        assert ds.split == "validation" and ds[0]["id"] == "0"
        assert [type(v) for v in ds[0].values()] == [str, list, list]
    assert local.to_dict() == online.to_dict()  # the same sentences give the same rows
    assert _as_names(local) == [s[3] for s in CONLL_TAGGED] and local[1]["tokens"] == ["Peter", "Blackburn"]
    assert local[0]["ner_tags"] == [3, 0, 7, 0, 0]  # B-ORG O B-MISC O O in the standard order
    assert "synthetic sample, not CoNLL-2003" in offline.info.description
    assert "local source" in local.info.description and "online source" in online.info.description


def test_conll_hub_labels_are_mapped_by_name(clean_env, monkeypatch):
    for shaped in (_conll_hub_split(TNER_ORDER), _conll_hub_split(as_strings=True)):
        monkeypatch.setattr(data, "load_hub_dataset", lambda *a, shaped=shaped, **k: shaped)
        ds = data.load_conll("train", quiet=True)
        assert _as_names(ds) == [s[3] for s in CONLL_TAGGED]
        assert ds["ner_tags"][1] == [1, 2] and ds.features == data.conll_features()


def test_conll_hub_falls_back_to_the_second_copy(clean_env, monkeypatch, capsys):
    answers = {"eriktks/conll2003": _conll_hub_split(ner_names=None),  # ids without names
               "lhoestq/conll2003": _conll_hub_split()}
    calls = []

    def fake_hub(path, split, revision=None):
        calls.append((path, revision))
        answer = answers[path]
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(data, "load_hub_dataset", fake_hub)
    ds = data.load_conll("test")
    out = capsys.readouterr().out
    assert calls == [("eriktks/conll2003", "refs/convert/parquet"), ("lhoestq/conll2003", None)]
    assert "online: eriktks/conll2003 failed (DataError:" in out and "no label names" in out
    assert "from online source: Hugging Face Hub lhoestq/conll2003," in out
    assert _as_names(ds) == [s[3] for s in CONLL_TAGGED]

    answers["eriktks/conll2003"] = ConnectionError("no route to host")
    assert len(data.load_conll("test", quiet=True)) == 3
    answers["lhoestq/conll2003"] = _conll_hub_split([*data.CONLL2003_LABELS, "B-GPE", "I-GPE"])
    ds = data.load_conll("test")  # both copies fail: the synthetic sample
    out = capsys.readouterr().out
    assert "eriktks/conll2003 failed (ConnectionError: no route to host)" in out
    assert "lhoestq/conll2003 failed (DataError:" in out and "['B-GPE', 'I-GPE'] are not CoNLL-2003's" in out
    assert "from offline source" in out and len(ds) == data.SYNTHETIC_CONLL_SIZES["test"]


def test_conll_nothing_works_names_what_was_tried(clean_env, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"Could not load CoNLL-2003 'test'.*LMCOURSE_DATA_DIR unset.*"
                                        r"skipped.*Fix: set LMCOURSE_DATA_DIR to a folder with conll2003/test\.txt"):
        data.load_conll("test", sources=("local", "online"))


def test_conll_split_names_and_sources():
    assert [data.conll_split_name(s) for s in ("train", "valid", "dev", "validation", "test")] == [
        "train", "validation", "validation", "validation", "test"]
    with pytest.raises(DataError, match=r"Unknown CoNLL split 'testb'.*'valid' and 'dev' are accepted"):
        data.load_conll("testb")
    with pytest.raises(DataError, match="Unknown source"):
        data.load_conll("train", sources=("hub",))


def test_conll_real_files_when_present(monkeypatch, capsys):
    from lmcourse.config import data_dir_from_env

    folder = data_dir_from_env()
    if folder is None or not (folder / "conll2003" / "train.txt").is_file():
        why = "LMCOURSE_DATA_DIR is unset" if folder is None else f"{folder} has no conll2003/train.txt"
        pytest.skip(f"needs the real CoNLL-2003 files in LMCOURSE_DATA_DIR/conll2003/; {why}")
    monkeypatch.setattr(data, "load_hub_dataset", lambda *a, **k: pytest.fail("must not download"))
    train = data.load_conll("train")
    assert ("14,041 sentences, 203,621 tokens, 23,499 entities "
            "(PER 6,600 / ORG 6,321 / LOC 7,140 / MISC 3,438)") in capsys.readouterr().out
    valid, test = data.load_conll("valid", quiet=True), data.load_conll("test", quiet=True)
    assert (len(train), len(valid), len(test)) == (14_041, 3_250, 3_453)
    assert train.features == valid.features == test.features == data.conll_features()
    assert train[0] == {"id": "0", "tokens": ["EU", "rejects", "German", "call", "to", "boycott",
                                              "British", "lamb", "."],
                        "ner_tags": [3, 0, 7, 0, 0, 0, 7, 0, 0]}
    assert test[0]["tokens"][:3] == ["SOCCER", "-", "JAPAN"] and _as_names(test)[0][2] == "B-LOC"
    assert valid["id"][-1] == "3249"
    # the same folder given as folder= gets the same labels (CoNLL-2003's types keep their order)
    again = data.load_conll("test", folder=folder / "conll2003", quiet=True)
    assert again.features == test.features and again["ner_tags"] == test["ner_tags"]


# A custom folder: other entity types, IOB1 tags (entities start with I-; B- only between two
# adjacent entities of one type), 2 columns in train, 3 in valid (token POS tag).
BIO_TRAIN = """-DOCSTART- O

Aspirin I-DRUG
eases I-SYMPTOM
headache I-SYMPTOM
. O

Mix I-DRUG
ibuprofen I-DRUG
with O
Aspirin B-DRUG
caution O
"""
BIO_VALID = """Paracetamol NN I-DRUG
lowers VB O
fever NN I-SYMPTOM
"""
BIO_TEST = """fever I-SYMPTOM
"""


def _bio_folder(tmp_path, train=BIO_TRAIN, valid=BIO_VALID, test=BIO_TEST, valid_name="dev.txt"):
    folder = tmp_path / "bio"
    folder.mkdir(exist_ok=True)
    for name, text in (("train.txt", train), (valid_name, valid), ("test.txt", test)):
        if text is not None:
            (folder / name).write_text(text)
    return folder


def test_conll_custom_folder_with_other_types_and_iob1(tmp_path, capsys):
    folder = _bio_folder(tmp_path)
    train = data.load_conll("train", folder=folder)
    out = capsys.readouterr().out
    assert "tags IOB1 converted to IOB2" in out and "2 sentences, 9 tokens, 4 entities (DRUG 3 / SYMPTOM 1)" in out
    labels = ["O", "B-DRUG", "I-DRUG", "B-SYMPTOM", "I-SYMPTOM"]  # types in alphabetical order
    assert train.features == data.conll_features(labels)
    assert _as_names(train) == [["B-DRUG", "B-SYMPTOM", "I-SYMPTOM", "O"],
                                ["B-DRUG", "I-DRUG", "O", "B-DRUG", "O"]]
    valid = data.load_conll("valid", folder=folder, quiet=True)  # dev.txt, 3 columns
    assert valid[0]["tokens"] == ["Paracetamol", "lowers", "fever"]
    assert _as_names(valid) == [["B-DRUG", "O", "B-SYMPTOM"]] and valid.features == train.features
    assert _as_names(data.load_conll("test", folder=folder, quiet=True)) == [["B-SYMPTOM"]]
    iob1 = data.read_conll(folder / "train.txt")
    assert iob1.scheme == "IOB1" and iob1.columns == 2 and iob1.lines[1] == [8, 9, 10, 11, 12]
    assert data.read_conll(folder / "train.txt", scheme="IOB1").tags == iob1.tags


def test_conll_iob2_scheme_refuses_iob1_tags(tmp_path):
    folder = _bio_folder(tmp_path)
    with pytest.raises(DataError, match=r"train\.txt, line 3: I-DRUG begins an entity \(at the "
                                        r"sentence's start\).*looks like IOB1"):
        data.load_conll("train", folder=folder, scheme="IOB2")
    with pytest.raises(DataError, match=r"dev\.txt, line 1: I-DRUG begins an entity \(at the sentence's start\)"):
        data.read_conll(folder / "dev.txt", scheme="IOB2")
    (folder / "dev.txt").write_text(BIO_VALID.replace("NN I-DRUG", "NN B-DRUG"))
    with pytest.raises(DataError, match=r"dev\.txt, line 3: I-SYMPTOM begins an entity \(after O\)"):
        data.read_conll(folder / "dev.txt", scheme="IOB2")
    with pytest.raises(DataError, match="Unknown tag scheme 'BIOES'"):
        data.read_conll(folder / "dev.txt", scheme="BIOES")


@pytest.mark.parametrize("split, files, msg", [
    ("train", dict(train=BIO_TRAIN.replace("eases I-SYMPTOM", "eases VB I-SYMPTOM")),
     r"train\.txt, line 4: expected 2 columns \(as on line 3, the first token line\), found 3"),
    ("train", dict(train="Aspirin\n"), r"train\.txt, line 1: found 1 column"),
    ("train", dict(train=BIO_TRAIN.replace("I-SYMPTOM", "SYMPTOM", 1)),
     r"train\.txt, line 4: the NER tag \(last column\) 'SYMPTOM' is not a BIO tag.*B-SYMPTOM or I-SYMPTOM"),
    ("train", dict(train=BIO_TRAIN.replace("I-SYMPTOM", "B_SYMPTOM", 1)),
     r"train\.txt, line 4: .*'B_SYMPTOM' is not a BIO tag.*hyphen"),
    ("test", dict(test="-DOCSTART- O\n\n\n"), r"test\.txt holds no sentences .*an empty split"),
    ("train", dict(train="\n\n"), r"train\.txt holds no sentences"),
    ("train", dict(train="Aspirin O\n. O\n"), r"train\.txt tags no entity at all"),
    ("validation", dict(valid=BIO_VALID.replace("fever NN I-SYMPTOM", "Paris NNP I-LOC")),
     r"dev\.txt, line 3: label 'B-LOC' \(entity type 'LOC'\) is not in the training file .*train\.txt"),
    ("test", dict(test="fever O\nin O\nParis I-LOC\n"), r"test\.txt, line 3: label 'B-LOC'"),
    ("test", dict(test=None), r"No test\.txt in .*bio"),
    ("validation", dict(valid=None), r"No valid\.txt or dev\.txt in"),
])
def test_conll_malformed_folder_names_file_and_line(tmp_path, split, files, msg):
    texts = dict(train=BIO_TRAIN, valid=BIO_VALID, test=BIO_TEST) | files
    folder = _bio_folder(tmp_path, **texts)
    with pytest.raises(DataError, match=msg) as err:
        data.load_conll(split, folder=folder, quiet=True)
    assert str(folder) in str(err.value)


def test_conll_folder_that_is_missing(tmp_path):
    with pytest.raises(DataError, match="is not a folder"):
        data.load_conll("train", folder=tmp_path / "nope")
    with pytest.raises(DataError, match=r"No CoNLL file at .*nope\.txt"):
        data.read_conll(tmp_path / "nope.txt")


def test_conll_local_file_with_a_label_conll2003_lacks(clean_env, monkeypatch):
    folder = _conll_folder(clean_env, CONLL.replace("BRUSSELS NNP B-NP B-LOC", "BRUSSELS NNP B-NP B-GPE"))
    monkeypatch.setenv("LMCOURSE_DATA_DIR", str(folder))
    with pytest.raises(DataError, match=r"conll2003/train\.txt, line 15: label 'B-GPE' \(entity type "
                                        r"'GPE'\) is not in CoNLL-2003's labels"):
        data.load_conll("train")
    (folder / "conll2003" / "test.txt").write_text(CONLL.replace("B-VP O", "B-VP PER"))
    with pytest.raises(DataError, match=r"test\.txt, line 4: the NER tag .*'PER' is not a BIO tag"):
        data.load_conll("test")


def test_synthetic_conll_file_is_what_the_generator_writes(tmp_path):
    written = data.write_synthetic_conll(tmp_path / "again")
    committed = data.project_data_dir() / data.SYNTHETIC_CONLL_DIR
    for name in ("train.txt", "valid.txt", "test.txt"):
        assert (written / name).read_bytes() == (committed / name).read_bytes(), (
            f"data/{data.SYNTHETIC_CONLL_DIR}/{name} differs from what write_synthetic_conll() "
            "writes; regenerate it with lm.data.write_synthetic_conll()")


def test_synthetic_conll_sample_covers_what_the_lesson_needs():
    from lmcourse import ner

    splits = data.synthetic_conll()
    assert {k: len(v) for k, v in splits.items()} == data.SYNTHETIC_CONLL_SIZES
    texts = [" ".join(tokens) for rows in splits.values() for tokens, _ in rows]
    assert len(set(texts)) == len(texts)  # no sentence in two splits, none twice
    for rows in splits.values():
        found = [e for tokens, tags in rows for e in ner.entities(tokens, tags)]
        assert {kind for kind, _ in found} == set(data.CONLL2003_TYPES)  # all four types
        multi = {kind for kind, text in found if " " in text}
        assert multi == set(data.CONLL2003_TYPES)  # a multi-token entity of every type
        types_of = {}
        for kind, text in found:
            types_of.setdefault(text, set()).add(kind)
        assert types_of["Washington"] == types_of["Jordan"] == {"PER", "LOC"}  # ambiguous words
        assert any(not ner.entity_spans(tags) for _, tags in rows)  # sentences without entities
        assert all(not ner.iob2_errors(tags) for _, tags in rows)
    found = {text for rows in splits.values() for t, g in rows for _, text in ner.entities(t, g)}
    assert {"New York Stock Exchange", "Hans-Peter Schmidt"} <= found
    assert data.synthetic_conll(seed=1) != splits and data.synthetic_conll() == splits


def test_synthetic_conll_without_data_folder_is_composed_in_memory(clean_env, monkeypatch, capsys):
    monkeypatch.setenv("LMCOURSE_OFFLINE", "1")
    from_file = data.load_conll("train", quiet=True)
    monkeypatch.setattr(data, "project_data_dir", lambda: clean_env / "no-such-folder")
    in_memory = data.load_conll("train")
    assert "composed in memory" in capsys.readouterr().out
    assert in_memory.to_dict() == from_file.to_dict() and len(in_memory) == 300


def test_write_conll_round_trips(tmp_path):
    rows = [(["Jordan", "beat", "Kenya"], ["B-LOC", "O", "B-LOC"]), (["Hi"], ["O"]), (["X"], ["B-PER"])]
    path = data.write_conll(tmp_path / "x.txt", rows, document_size=2)
    assert path.read_text().splitlines()[:3] == ["-DOCSTART- -X- -X- O", "", "Jordan -X- -X- B-LOC"]
    assert path.read_text().count("-DOCSTART-") == 2
    back = data.read_conll(path, scheme="IOB2")
    assert list(zip(back.tokens, back.tags)) == rows and back.columns == 4
    assert data.read_conll_sentences(path) == [r[0] for r in rows]  # lesson 05b's reader agrees
    with pytest.raises(DataError, match="holds a space"):
        data.write_conll(tmp_path / "y.txt", [(["New York"], ["B-LOC"])])
    with pytest.raises(DataError, match="1 tokens and 2 tags"):
        data.write_conll(tmp_path / "y.txt", [(["York"], ["B-LOC", "O"])])


def test_conll_hub_rows_are_checked(clean_env, monkeypatch):
    import datasets

    def hub_with(columns, features):
        ds = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
        monkeypatch.setattr(data, "load_hub_dataset", lambda *a, **k: ds)

    tag = datasets.List(datasets.ClassLabel(names=list(data.CONLL2003_LABELS)))
    words = datasets.List(datasets.Value("string"))
    hub_with({"tokens": [["EU", "rejects"], [], ["Peter"]], "ner_tags": [[3, 0], [], [1]]},
             {"tokens": words, "ner_tags": tag})
    ids, tokens, tags = data._hub_conll_rows("x/y", None, "train")  # no id column: positions
    assert (ids, tokens, tags) == (["0", "2"], [["EU", "rejects"], ["Peter"]], [["B-ORG", "O"], ["B-PER"]])
    hub_with({"tokens": [["EU", "rejects"]], "ner_tags": [[3]]}, {"tokens": words, "ner_tags": tag})
    with pytest.raises(DataError, match=r"x/y@main split 'train', row 0: 2 tokens but 1 tags"):
        data._hub_conll_rows("x/y", "main", "train")
    hub_with({"tokens": [["EU"]], "ner_tags": [["PER"]]},
             {"tokens": words, "ner_tags": datasets.List(datasets.Value("string"))})
    with pytest.raises(DataError, match=r"row 0: tag\(s\) \['PER'\] are not CoNLL-2003 labels"):
        data._hub_conll_rows("x/y", None, "train")
    hub_with({"tokens": [["EU"]], "labels": [[3]]}, {"tokens": words, "labels": tag})
    with pytest.raises(DataError, match=r"has no column\(s\) \['ner_tags'\]"):
        data._hub_conll_rows("x/y", None, "train")
    hub_with({"tokens": [[]], "ner_tags": [[]]}, {"tokens": words, "ner_tags": tag})
    with pytest.raises(DataError, match="holds no sentences"):
        data._hub_conll_rows("x/y", None, "train")


def test_read_conll_refuses_text_that_is_not_utf8(tmp_path):
    path = tmp_path / "train.txt"
    path.write_bytes("Caf\u00e9 B-LOC\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"train\.txt is not UTF-8 text"):
        data.read_conll(path)


def test_first_source_tries_in_order_and_explains_every_failure(monkeypatch):
    """The one source-order loop of every loader: skips with reasons, stops at the first that works,
    lets real errors (a malformed file) through, and names the fix when none works."""
    calls = []

    def unavailable(why):
        def reader():
            calls.append(why)
            raise data.SourceUnavailable(why)
        return reader

    def works():
        calls.append("offline")
        return "rows", "here"

    readers = {"local": unavailable("local: no file"), "online": unavailable("online: skipped"), "offline": works}
    assert data.first_source("X 'train'", "x/train.txt", data.SOURCES, readers) == \
        ("offline", "rows", "here", ["local: no file", "online: skipped"])
    assert calls == ["local: no file", "online: skipped", "offline"]
    calls.clear()
    assert data.first_source("X", "x", ("offline", "local"), readers)[0] == "offline" and calls == ["offline"]
    with pytest.raises(DataError, match=r"Could not load X 'train'\. Tried: local: no file; online: skipped\. "
                                        r"Fix: set LMCOURSE_DATA_DIR to a folder with x/train\.txt"):
        data.first_source("X 'train'", "x/train.txt", ("local", "online"), readers)
    with pytest.raises(DataError, match="Unknown source"):
        data.first_source("X", "x", ("local", "cloud"), readers)

    def malformed():
        raise DataError("x/train.txt, line 3: 2 columns")

    with pytest.raises(DataError, match="line 3"):
        data.first_source("X", "x", data.SOURCES, {**readers, "local": malformed})
    monkeypatch.setattr(data.config, "is_offline", lambda: True)
    with pytest.raises(data.SourceUnavailable, match="online: skipped"):
        data.require_network()
