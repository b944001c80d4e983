"""Tests for lmcourse.subword: the course's BPE learns the same merges as `tokenizers`' BpeTrainer
(ties included) and encodes the same tokens; WordPiece's greedy longest match equals `tokenizers`'
WordPiece model; SentencePiece training is deterministic and quiet, and the course's Viterbi
segmentation equals SentencePiece's Unigram encoding."""

import os
import subprocess
import sys

import pytest

from lmcourse import subword as sw
from lmcourse import tokenization as tk
from lmcourse.data import load_corpus


@pytest.fixture(scope="module")
def text() -> str:
    """The lesson's corpus (real Tiny Shakespeare with $LMCOURSE_DATA_DIR, else its stand-in)."""
    return load_corpus("tinyshakespeare", quiet=True).text


def _alphabet(counts) -> set[str]:
    return {c for w in counts for c in w}


def _replay(word, merges):
    """BPE encoding the slow, obvious way: every merge in order, over the whole word."""
    symbols = list(word)
    for pair in merges:
        symbols = sw.merge_pair(symbols, pair)
    return symbols


# ------------------------------------------------------------------ BPE learning = tokenizers


@pytest.mark.parametrize("corpus", [
    "low " * 5 + "lower " * 2 + "newest " * 6 + "widest " * 3,  # Sennrich's toy corpus
    "zy zy ab ab",            # a tie between characters: the smaller code points win, not the first seen
    "aba aba xy xy",          # then ('ab', 'a') ties ('x', 'y'): characters are older than merged symbols
    "aaa aaa bc bc bc",       # 'aaa' holds ('a', 'a') twice: 4 beats 3
    "aaaa abab abab ba",      # overlaps and repeats inside words
    "Zebra zebra ZEBRA zero Zero",  # upper case sorts before lower case
])
def test_merges_equal_tokenizers_on_toy_corpora(corpus):
    counts = sw.word_counts(corpus)
    ours = sw.bpe_learn(counts, 50)
    tok = sw.train_bpe_tokenizer(counts, 50)
    assert ours == sw.bpe_merges_of(tok)
    assert sw.bpe_vocab(ours, _alphabet(counts)) == tok.get_vocab()


def test_the_toy_corpus_shows_each_tie_rule():
    """The lesson's toy corpus: the first merge is a tie that code-point order decides, and a later
    tie goes to a character pair although the merged symbol sorts first alphabetically."""
    merges = sw.bpe_learn(sw.TOY_WORD_COUNTS, 10)
    assert merges[:4] == [("e", "s"), ("es", "t"), ("l", "o"), ("lo", "w")]
    assert merges[5] == ("n", "ew")  # tied with ('ew', 'est'), and 'ew' < 'n' as strings
    assert merges == sw.bpe_merges_of(sw.train_bpe_tokenizer(sw.TOY_WORD_COUNTS, 10))


def test_ties_follow_symbol_age_not_string_order_or_first_seen():
    assert sw.bpe_learn({"zy": 2, "ab": 2}, 1) == [("a", "b")]
    assert sw.bpe_learn({"aba": 2, "xy": 2}, 3) == [("a", "b"), ("x", "y"), ("ab", "a")]
    assert sw.bpe_learn({"aaa": 2, "bc": 3}, 1) == [("a", "a")]


def test_bpe_ties_lists_each_tie_and_the_rule_picks_its_first(text):
    ties = sw.bpe_ties(sw.TOY_WORD_COUNTS, sw.bpe_learn(sw.TOY_WORD_COUNTS, 10))
    assert ties[0] == [("e", "s"), ("s", "t")]
    assert ties[5] == [("n", "ew"), ("ew", "est")]
    assert 1 not in ties  # ('es', 't') was the only pair seen 9 times
    counts = sw.word_counts(text[:5_000])
    merges = sw.bpe_learn(counts, 200)
    ties = sw.bpe_ties(counts, merges)
    assert ties and all(merges[i] == tied[0] and len(tied) > 1 for i, tied in ties.items())


def test_real_text_merges_and_encodings_equal_tokenizers(text):
    train, held_out = text[:20_000], text[-20_000:]
    counts = sw.word_counts(train)
    ours = sw.bpe_learn(counts, 1000)
    tok = sw.train_bpe_tokenizer(train, 1000)
    theirs = sw.bpe_merges_of(tok)
    assert len(ours) == 1000
    assert ours == theirs  # the same merges, in the same order
    assert sw.bpe_vocab(ours, _alphabet(counts)) == tok.get_vocab()
    # Encoding: our tokens; tokenizers' BPE trained on the text; tokenizers' BPE given our merges.
    alphabet = _alphabet(counts)
    mine = [t if set(t) <= alphabet else sw.UNK for t in sw.bpe_tokenize(held_out, ours)]
    assert mine == tok.encode(held_out).tokens
    assert sw.bpe_tokenizer(ours, alphabet).encode(held_out).tokens == mine
    assert len(mine) > 4000


def test_learning_runs_until_no_pair_is_left(text):
    counts = sw.word_counts(text[:5_000])
    ours = sw.bpe_learn(counts, 100_000)
    assert ours == sw.bpe_merges_of(sw.train_bpe_tokenizer(counts, 100_000))
    assert all(len(sw.bpe_encode(w, ours)) == 1 for w in counts)  # every word is one token


def test_min_frequency_equals_tokenizers(text):
    counts = sw.word_counts(text[:10_000])
    ours = sw.bpe_learn(counts, 5000, min_frequency=3)
    assert ours == sw.bpe_merges_of(sw.train_bpe_tokenizer(counts, 5000, min_frequency=3))
    assert 0 < len(ours) < len(sw.bpe_learn(counts, 5000))


def test_bpe_encode_equals_replaying_every_merge_in_order(text):
    counts = sw.word_counts(text[:20_000])
    merges = sw.bpe_learn(counts, 500)
    words = list(sw.word_counts(text[-30_000:])) + ["", "a", "aaaa", "xyzzy", "\u00e9t\u00e9"]
    for word in words:
        assert sw.bpe_encode(word, merges) == _replay(word, merges), word


def test_merge_pair_scans_left_to_right():
    assert sw.merge_pair(list("aaa"), ("a", "a")) == ["aa", "a"]
    assert sw.merge_pair(list("aaaa"), ("a", "a")) == ["aa", "aa"]
    assert sw.merge_pair(["ca", "b"], ("a", "b")) == ["ca", "b"]
    assert sw.pair_counts({("a", "a", "a"): 2}) == {("a", "a"): 4}


def test_bpe_learn_refuses_bad_input():
    with pytest.raises(ValueError, match="num_merges"):
        sw.bpe_learn({"ab": 1}, -1)
    with pytest.raises(ValueError, match="Word counts"):
        sw.bpe_learn({"ab": "3"}, 1)


# ------------------------------------------------------------------ WordPiece


def test_wordpiece_encode_equals_tokenizers_wordpiece(text):
    vocab = tk.train_wordpiece(text[:100_000], vocab_size=1000).get_vocab()
    ref = sw.wordpiece_tokenizer(vocab)
    words = list(sw.word_counts(text[-50_000:]))
    words += ["", "a", "\u6771\u4eac", "Romeo\u2603", "x" * 100, "x" * 101, "qqqq", "##"]
    assert len(words) > 1000
    differ = [w for w in words if sw.wordpiece_encode(w, vocab) != [t.value for t in ref.model.tokenize(w)]]
    assert not differ
    assert sw.wordpiece_encode("x" * 101, vocab) == [sw.UNK]
    assert sw.wordpiece_encode("Romeo\u2603", vocab) == [sw.UNK]  # one unknown character: the whole word


def test_wordpiece_options_equal_tokenizers():
    vocab = {"[UNK]", "<unk>", "un", "@@aff", "@@able", "a", "@@a"}
    ref = sw.wordpiece_tokenizer(vocab, unk="<unk>", prefix="@@", max_chars=6)
    for word in ["unaff", "unaffable", "aaaaaa", "aaaaaaa", "ua", ""]:
        want = [t.value for t in ref.model.tokenize(word)]
        assert sw.wordpiece_encode(word, vocab, unk="<unk>", prefix="@@", max_chars=6) == want, word


def test_wordpiece_scores_on_the_toy_corpus():
    splits = sw.wordpiece_splits(sw.TOY_WORD_COUNTS)
    assert splits[("l", "##o", "##w")] == 5
    rows = {r.pair: r for r in sw.wordpiece_scores(splits)}
    # ('##e', '##s'): 9 times; '##e' occurs 17 times (lower 2, newest 6 x 2, widest 3), '##s' 9 times
    assert rows["##e", "##s"].count == 9
    assert rows["##e", "##s"].score == pytest.approx(9 / (17 * 9))
    best_count = max(rows.values(), key=lambda r: r.count)
    best_score = sw.wordpiece_scores(splits)[0]
    assert best_score.score == max(r.score for r in rows.values())
    assert best_score.pair != best_count.pair  # the lesson's point: the two rules pick differently


# ------------------------------------------------------------------ SentencePiece / Unigram


_TRAIN_SP = """
import hashlib, sys
from lmcourse import subword as sw
from lmcourse.data import load_corpus
sp = sw.train_sentencepiece(load_corpus("tinyshakespeare", quiet=True).text[:50_000], 500)
print(hashlib.sha256(sp.serialized_model_proto()).hexdigest())
"""


def _sp_in_process(hash_seed: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONHASHSEED": str(hash_seed)}
    return subprocess.run([sys.executable, "-c", _TRAIN_SP], env=env, capture_output=True,
                          text=True, timeout=300, check=True)


def test_sentencepiece_training_is_deterministic_and_quiet(text):
    a, b = _sp_in_process(1), _sp_in_process(2)
    assert a.stdout == b.stdout and len(a.stdout.strip()) == 64
    assert a.stderr == "" and b.stderr == ""  # nothing but the hash: the trainer's log is off
    one = sw.train_sentencepiece(text[:50_000], 500)
    two = sw.train_sentencepiece(text[:50_000], 500)
    assert one.serialized_model_proto() == two.serialized_model_proto()
    assert one.get_piece_size() == 500


def test_unigram_segment_equals_sentencepiece(text):
    sp = sw.train_sentencepiece(text[:100_000], 1000)
    log_probs = sw.sentencepiece_log_probs(sp)
    lines = [line for line in text[-20_000:].splitlines() if line.strip()]
    lines += ["Zounds, ZZZ!", "O Romeo, Romeo! wherefore art thou Romeo?"]
    for line in lines:
        assert sw.unigram_segment(sw.sentencepiece_view(line), log_probs) == sp.encode(line, out_type=str), line


def test_japanese_needs_no_spaces_and_sentencepiece_is_lossless():
    sp = sw.train_sentencepiece(sw.JAPANESE_SAMPLE, 150)
    bpe = sw.train_bpe_tokenizer(sw.JAPANESE_SAMPLE, 60)
    sentence = "\u660e\u65e5\u306f\u53cb\u3060\u3061\u3068\u56f3\u66f8\u9928\u3078\u884c\u304d\u307e\u3059\u3002"
    assert len(sw.pretokenize(sentence)) == 2  # the whole sentence is one "word", and the "。"
    assert sw.round_trip(sp, sentence) == sentence
    assert sw.round_trip(bpe, sentence) == " ".join(bpe.encode(sentence).tokens) != sentence
    assert any(len(p.lstrip(sw.SP_SPACE)) > 1 for p in sw.sentencepiece_log_probs(sp))


def test_train_sentencepiece_refuses_what_it_cannot_train():
    with pytest.raises(ValueError, match="distinct characters"):
        sw.train_sentencepiece("abcdef abcdef", vocab_size=5)
    with pytest.raises(ValueError, match="empty"):
        sw.train_sentencepiece(["", "  "], vocab_size=100)


# ------------------------------------------------------------------ comparing segmentations


def test_compare_segmentations(text):
    counts = sw.word_counts(text[:20_000])
    bpe = sw.train_bpe_tokenizer(counts, 200)
    sp = sw.train_sentencepiece(text[:20_000], 300)
    sentences = ["O Romeo, Romeo!", "Good night."]
    rows = sw.compare_segmentations({"BPE": bpe, "Unigram": sp, "chars": list}, sentences)
    assert [(r.sentence, r.tokenizer) for r in rows] == [
        (s, n) for s in sentences for n in ("BPE", "Unigram", "chars")]
    assert rows[0].tokens == bpe.encode(sentences[0]).tokens
    assert rows[1].tokens == sp.encode(sentences[0], out_type=str)
    assert rows[2].tokens == list(sentences[0])
    shown = sw.format_segmentations(rows)
    assert shown.count("'O Romeo, Romeo!'") == 1 and " | ".join(rows[0].tokens) in shown
    assert sw.tokens_per_sentence(rows)["chars"] == (15 + 11) / 2
    with pytest.raises(TypeError, match="Cannot segment"):
        sw.compare_segmentations({"x": 3}, sentences)
