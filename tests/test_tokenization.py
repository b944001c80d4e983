"""Tests for lmcourse.tokenization: WordPiece and byte-level BPE training, analyses, saving for
transformers, and the CoNLL sentence reader. Tokenizers are trained on ~100k characters."""

import json

import pytest

from lmcourse import tokenization as tk
from lmcourse.data import pydoc_corpus

# Real English (Python's help texts, on every install) plus lines where "Paris" and "paris" are
# both frequent, so that a cased vocabulary must hold both.
CITY = ("Paris is the capital of France. In Paris people say paris in lower case too.\n"
        "We wrote paris and Paris, then PARIS, in a caf\u00e9 on the Champs-\u00c9lys\u00e9es.\n") * 40


@pytest.fixture(scope="module")
def corpus() -> str:
    text, _ = pydoc_corpus()
    return text[:100_000] + CITY


@pytest.fixture(scope="module")
def lines(corpus) -> list[str]:
    return [line for line in corpus.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def wordpiece(corpus):
    return tk.train_wordpiece(corpus, vocab_size=1000, min_frequency=2)


@pytest.fixture(scope="module")
def bpe(corpus):
    return tk.train_bpe(corpus, vocab_size=1000, min_frequency=2)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, wordpiece, bpe):
    root = tmp_path_factory.mktemp("tokenizers")
    return {
        "wordpiece": tk.save_for_transformers(wordpiece, root / "wp", kind="wordpiece",
                                              model_max_length=128),
        "bpe": tk.save_for_transformers(bpe, root / "bpe", kind="bpe", model_max_length=256),
    }


HARD_TEXTS = [
    "Hello, world!",
    "  leading spaces, trailing spaces  ",
    "tabs\tand\nnew lines\n\n and   runs of spaces",
    "Unicode: Caf\u00e9, na\u00efve, \u00fcber, Stra\u00dfe, \u6771\u4eac, \U0001f600 \u2603",
    "decomposed: Cafe\u0301",
    "digits 3.14159 and symbols @#$%^&*()[]{}<>",
]


# ------------------------------------------------------------------ round trips


def test_bpe_round_trip_is_exact(bpe, lines):
    for text in HARD_TEXTS + lines[:200]:
        assert bpe.decode(bpe.encode(text).ids) == text


def test_wordpiece_round_trip_up_to_whitespace(wordpiece, lines):
    def squash(s: str) -> str:
        return "".join(s.split())

    checked = 0
    for text in lines[:300] + ["Hello, world!", "a  b\tc\nd"]:
        ids = wordpiece.encode(text, add_special_tokens=False).ids
        if tk.unk_id(wordpiece) in ids:
            continue  # an unknown word cannot come back
        assert squash(wordpiece.decode(ids)) == squash(text)
        checked += 1
    assert checked > 250


def test_wordpiece_normalizes_to_nfc_and_keeps_accents(corpus):
    tok = tk.train_wordpiece(corpus + "caf\u00e9 " * 50, vocab_size=1000)
    composed = tok.encode("caf\u00e9", add_special_tokens=False)
    decomposed = tok.encode("cafe\u0301", add_special_tokens=False)
    assert composed.ids == decomposed.ids
    assert composed.tokens == ["caf\u00e9"]  # the accent is kept, not stripped


# ------------------------------------------------------------------ case, unknowns, specials


def test_cased_wordpiece_keeps_case(wordpiece, corpus):
    upper, lower = wordpiece.token_to_id("Paris"), wordpiece.token_to_id("paris")
    assert upper is not None and lower is not None and upper != lower
    assert wordpiece.encode("Paris paris", add_special_tokens=False).ids == [upper, lower]
    uncased = tk.train_wordpiece(corpus, vocab_size=1000, cased=False)
    a = uncased.encode("Paris", add_special_tokens=False).ids
    assert a == uncased.encode("paris", add_special_tokens=False).ids
    assert uncased.encode("Caf\u00e9", add_special_tokens=False).ids == \
        uncased.encode("cafe", add_special_tokens=False).ids  # uncased also strips accents


def test_wordpiece_special_tokens_have_bert_ids(wordpiece):
    names = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert [wordpiece.token_to_id(t) for t in names] == [0, 1, 2, 3, 4]
    enc = wordpiece.encode("Paris is here.")
    assert enc.tokens[0] == "[CLS]" and enc.tokens[-1] == "[SEP]"
    assert enc.tokens[1:-1] == wordpiece.encode("Paris is here.", add_special_tokens=False).tokens


def test_unknown_characters_map_to_unk_in_wordpiece(wordpiece):
    enc = wordpiece.encode("Paris \u2603 \U0001f600", add_special_tokens=False)
    assert enc.tokens == ["Paris", "[UNK]", "[UNK]"]
    assert tk.unk_id(wordpiece) == wordpiece.token_to_id("[UNK]") == 1
    # one unseen character makes the whole word unknown
    assert wordpiece.encode("Par\u2603is", add_special_tokens=False).tokens == ["[UNK]"]
    assert wordpiece.encode("Paris \u2603 is", add_special_tokens=False).tokens == ["Paris", "[UNK]", "is"]
    assert tk.unk_rate(wordpiece, ["Paris \u2603 is"]) == pytest.approx(1 / 3)
    assert tk.unk_rate(wordpiece, ["Paris is here"]) == 0.0
    texts = ["Paris \u2603 is \u2603", "x Par\u2603is", "Paris"]
    assert tk.unk_examples(wordpiece, texts) == [("\u2603", 2), ("Par\u2603is", 1)]
    assert tk.unk_examples(wordpiece, texts, n=1) == [("\u2603", 2)]


def test_byte_level_bpe_never_produces_unk(bpe):
    assert tk.unk_id(bpe) is None
    assert bpe.token_to_id(tk.EOT) == 0
    for text in HARD_TEXTS:
        enc = bpe.encode(text)
        assert len(enc.ids) >= 1 and None not in enc.ids
        assert tk.EOT not in enc.tokens
    assert tk.unk_rate(bpe, HARD_TEXTS) == 0.0 and tk.unk_examples(bpe, HARD_TEXTS) == []
    # every byte is a token of its own: 256 single-character tokens besides <|endoftext|>
    assert tk.vocab_summary(bpe)["single_characters"] == 256


def test_bpe_vocab_size_below_byte_alphabet_is_refused():
    with pytest.raises(ValueError, match="at least 257"):
        tk.train_bpe("some text", vocab_size=200)


def test_empty_training_text_is_refused():
    with pytest.raises(ValueError, match="empty"):
        tk.train_wordpiece([], vocab_size=100)
    with pytest.raises(ValueError, match="empty"):
        tk.train_bpe(iter(["", "  "]), vocab_size=300)


def test_training_accepts_a_list_or_an_iterator(lines):
    a = tk.train_bpe(lines, vocab_size=400)
    b = tk.train_bpe(iter(lines), vocab_size=400)
    assert a.get_vocab() == b.get_vocab() and a.get_vocab_size() == 400


# ------------------------------------------------------------------ saving for transformers


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_autotokenizer_loads_saved_folder_with_same_ids(kind, saved, wordpiece, bpe, lines):
    raw = {"wordpiece": wordpiece, "bpe": bpe}[kind]
    loaded = tk.load_tokenizer(saved[kind])
    assert loaded.is_fast
    # "é" is in the vocabulary, so a decomposed "e + accent" only encodes alike if NFC survived
    assert 1 not in raw.encode("decomposed: Cafe\u0301").ids
    for text in HARD_TEXTS + lines[:100]:
        assert loaded(text)["input_ids"] == raw.encode(text).ids
        assert loaded.decode(raw.encode(text).ids, skip_special_tokens=True) == \
            raw.decode(raw.encode(text).ids)
    batch = loaded(lines[:8])["input_ids"]
    assert batch == [e.ids for e in raw.encode_batch(lines[:8])]
    assert loaded.model_max_length == {"wordpiece": 128, "bpe": 256}[kind]
    assert tk.tokenizer_kind(loaded) == kind
    assert tk.fertility(loaded, lines[:50]) == tk.fertility(raw, lines[:50])


def test_saved_wordpiece_special_tokens(saved, wordpiece):
    loaded = tk.load_tokenizer(saved["wordpiece"])
    for name, token in [("pad", "[PAD]"), ("unk", "[UNK]"), ("cls", "[CLS]"), ("sep", "[SEP]"),
                        ("mask", "[MASK]")]:
        assert getattr(loaded, f"{name}_token") == token
        assert getattr(loaded, f"{name}_token_id") == wordpiece.token_to_id(token)
    assert (loaded.pad_token_id, loaded.unk_token_id, loaded.cls_token_id, loaded.sep_token_id,
            loaded.mask_token_id) == (0, 1, 2, 3, 4)
    ids = loaded("Paris [MASK] here")["input_ids"]
    assert ids[0] == 2 and ids[-1] == 3 and 4 in ids  # [MASK] in text stays one token
    padded = loaded(["Paris", "Paris is here"], padding=True)
    assert padded["input_ids"][0][-1] == 0 and padded["attention_mask"][0][-1] == 0


def test_saved_bpe_special_tokens(saved, bpe):
    loaded = tk.load_tokenizer(saved["bpe"])
    eot = bpe.token_to_id(tk.EOT)
    assert loaded.eos_token == loaded.bos_token == loaded.pad_token == tk.EOT
    assert loaded.eos_token_id == loaded.bos_token_id == loaded.pad_token_id == eot
    assert loaded("one" + tk.EOT + "two")["input_ids"].count(eot) == 1
    assert "token_type_ids" not in loaded("one")


def test_pair_encoding_gives_token_type_ids(saved, wordpiece):
    loaded = tk.load_tokenizer(saved["wordpiece"])
    out = loaded("Paris is here.", "It is the capital.")
    raw = wordpiece.encode("Paris is here.", "It is the capital.")
    assert out["input_ids"] == raw.ids
    assert out["token_type_ids"] == raw.type_ids
    n_a = len(wordpiece.encode("Paris is here.", add_special_tokens=False).ids)
    n_b = len(wordpiece.encode("It is the capital.", add_special_tokens=False).ids)
    # [CLS] A [SEP] -> type 0; B [SEP] -> type 1
    assert out["token_type_ids"] == [0] * (n_a + 2) + [1] * (n_b + 1)
    assert [out["input_ids"][i] for i in (0, n_a + 1, n_a + n_b + 2)] == [2, 3, 3]
    assert "token_type_ids" in loaded("single sentence")


def test_save_refuses_wrong_kind_and_missing_folder(tmp_path, bpe):
    with pytest.raises(ValueError, match="kind='wordpiece'"):
        tk.save_for_transformers(bpe, tmp_path / "x", kind="wordpiece")
    with pytest.raises(FileNotFoundError, match="No tokenizer in"):
        tk.load_tokenizer(tmp_path / "nothing")


def test_saved_config_names_class_and_length(saved):
    cfg = json.loads((saved["wordpiece"] / "tokenizer_config.json").read_text())
    assert cfg["model_max_length"] == 128 and cfg["mask_token"] == "[MASK]"
    assert "token_type_ids" in cfg["model_input_names"]
    assert tk.saved_config(saved["bpe"])["eos_token"] == tk.EOT


# ------------------------------------------------------------------ analyses


def test_fertility_counts_tokens_per_whitespace_word(wordpiece, bpe):
    texts = ["Paris is here.", "unbelievably  long words\tappear"]
    for tok in (wordpiece, bpe):
        n_tokens = sum(len(tok.encode(t, add_special_tokens=False).ids) for t in texts)
        assert tk.fertility(tok, texts) == pytest.approx(n_tokens / 7)  # 3 + 4 words
    # a whole text as one string is measured line by line
    assert tk.fertility(wordpiece, "\n".join(texts)) == pytest.approx(tk.fertility(wordpiece, texts))
    with pytest.raises(ValueError, match="empty"):
        tk.fertility(wordpiece, ["   "])


@pytest.mark.parametrize("train", [tk.train_wordpiece, tk.train_bpe])
def test_fertility_at_least_one_and_decreasing_with_vocab(train, corpus, lines):
    values = [tk.fertility(train(corpus, vocab_size=v), lines) for v in (300, 600, 1200)]
    assert all(f >= 1.0 for f in values)
    assert values[0] > values[1] > values[2]


def test_show_splits(wordpiece, bpe):
    splits = tk.show_splits(wordpiece, ["Paris", "unbelievably"])
    assert splits[0] == ("Paris", ["Paris"])
    word, pieces = splits[1]
    assert word == "unbelievably" and len(pieces) > 1
    assert pieces[0][:2] != "##" and all(p.startswith("##") for p in pieces[1:])
    assert "".join(p.removeprefix("##") for p in pieces) == "unbelievably"
    # byte-level BPE shows words as they appear after a space: "ĠParis"
    (w, bpieces), = tk.show_splits(bpe, ["unbelievably"])
    assert bpieces[0].startswith(tk.SPACE_MARK)
    assert bpe.decoder.decode(bpieces) == " unbelievably"
    assert tk.show_splits(bpe, ["Paris"], leading_space=False)[0][1] == \
        bpe.encode("Paris", add_special_tokens=False).tokens
    assert "Paris" in tk.format_splits(splits) and "(1)" in tk.format_splits(splits)


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_vocab_summary(kind, wordpiece, bpe):
    tok = {"wordpiece": wordpiece, "bpe": bpe}[kind]
    s = tk.vocab_summary(tok, n_examples=5)
    assert s["kind"] == kind and s["vocab_size"] == tok.get_vocab_size() == 1000
    n_special = len(s["special_tokens"])
    assert n_special == (5 if kind == "wordpiece" else 1)
    assert s["word_initial"] + s["continuation"] + n_special == s["vocab_size"]
    assert len(s["longest"]) == 5 and s["mean_chars"] > 1
    vocab = tok.get_vocab()
    assert all(t in vocab for t in s["longest"] + s["last_learned"])
    if kind == "wordpiece":
        assert s["continuation"] == sum(t.startswith("##") for t in vocab)
    else:
        assert s["word_initial"] == sum(t.startswith(tk.SPACE_MARK) for t in vocab)


def test_analyses_accept_transformers_tokenizers_only_when_fast():
    with pytest.raises(TypeError, match="tokenizers.Tokenizer"):
        tk.fertility(object(), ["a b"])


# A child process trains both kinds on the same text and prints the vocabularies and encodings.
_TRAIN_AND_DUMP = """
import json, sys
from lmcourse import tokenization as tk
from lmcourse.data import pydoc_corpus
text = pydoc_corpus()[0][:60_000]
probe = ["Paris is the capital of France.", "unbelievably long words appear", text[5000:5400]]
out = {}
for kind in ("wordpiece", "bpe"):
    tok = tk.train_timed(kind, text, vocab_size=800)[0]
    out[kind] = [sorted(tok.get_vocab().items()), [tok.encode(t).ids for t in probe]]
json.dump(out, sys.stdout)
"""


def _train_in_process(hash_seed: int) -> dict:
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONHASHSEED": str(hash_seed)}
    done = subprocess.run([sys.executable, "-c", _TRAIN_AND_DUMP], env=env, capture_output=True,
                          text=True, timeout=300, check=True)
    return json.loads(done.stdout)


def test_training_is_deterministic_across_processes_and_hash_seeds():
    """Same corpus and settings: the same vocabulary, the same ids, the same encodings, even in
    processes with different hash seeds (tokenizers' own WordPiece trainer fails this)."""
    a, b = _train_in_process(1), _train_in_process(2)
    for kind in ("wordpiece", "bpe"):
        assert a[kind][0] == b[kind][0], f"{kind}: vocabularies or ids differ between processes"
        assert a[kind][1] == b[kind][1], f"{kind}: encodings differ between processes"
    vocab = dict(a["wordpiece"][0])
    assert [vocab[t] for t in tk.WORDPIECE_SPECIALS] == [0, 1, 2, 3, 4]
    assert any(t.startswith(tk.CONTINUATION) for t in vocab) and len(vocab) == 800


def test_wordpiece_matches_what_tokenizers_trainer_learns(corpus):
    """The deterministic trainer learns a vocabulary as good as tokenizers' WordPieceTrainer:
    the same alphabet and specials, nearly the same pieces, the same fertility to 1%."""
    from tokenizers import Tokenizer, models, trainers

    ours = tk.train_wordpiece(corpus, vocab_size=1000)
    ref = Tokenizer(models.WordPiece(unk_token=tk.UNK, continuing_subword_prefix=tk.CONTINUATION))
    ref.normalizer, ref.pre_tokenizer = ours.normalizer, ours.pre_tokenizer
    ref.train_from_iterator(corpus.splitlines(), trainer=trainers.WordPieceTrainer(
        vocab_size=1000, special_tokens=list(tk.WORDPIECE_SPECIALS),
        continuing_subword_prefix=tk.CONTINUATION))
    a, b = set(ours.get_vocab()), set(ref.get_vocab())
    assert len(a) == len(b) == 1000
    assert len(a & b) >= 0.97 * len(b)  # ties at the last merges may go either way
    assert {t for t in b if len(t.removeprefix("##")) == 1} <= a  # the whole alphabet, both forms
    lines = corpus.splitlines()
    assert tk.fertility(ours, lines) == pytest.approx(tk.fertility(ref, lines), rel=0.01)


def test_wordpiece_limit_alphabet_keeps_the_most_frequent_characters():
    text = "aaaa bbbb cccc dd e " * 20 + "zq"
    tok = tk.train_wordpiece(text, vocab_size=60, limit_alphabet=3)
    vocab = tok.get_vocab()
    assert {"a", "b", "c"} <= set(vocab) and not {"d", "e", "z", "q"} & set(vocab)
    assert tok.encode("dd", add_special_tokens=False).tokens == [tk.UNK]
