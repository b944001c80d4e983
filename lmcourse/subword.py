"""Lesson 05, subword tokenization as algorithms: byte-pair encoding learned and replayed by hand,
WordPiece's greedy longest match and its likelihood score, and Unigram (SentencePiece)
segmentation, each checked against `tokenizers` or `sentencepiece` on the same text.

Words come from one pre-tokenizer, `tokenizers`' `Whitespace` (the regex ``\\w+|[^\\w\\s]+``: runs of
letters and digits, and runs of other non-space characters), so the course's BPE and the library's
see the same words. `bpe_learn` breaks ties between equally frequent pairs the way `tokenizers`'
BpeTrainer does, so the two learn the same merges in the same order (see `bpe_learn`).
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from lmcourse.config import DEFAULT_SEED
from lmcourse.tokenization import as_backend

UNK = "[UNK]"           # the unknown token of the course's WordPiece and of `bpe_tokenizer`
CONTINUATION = "##"     # WordPiece marks a piece that continues a word: "newest" -> "new", "##est"
MAX_WORD_CHARS = 100    # WordPiece turns a longer word into one [UNK] (BERT's and tokenizers' limit)
SP_SPACE = "\u2581"     # "▁": how SentencePiece writes a space, part of the piece that follows it

Pair = tuple[str, str]

# Sennrich et al. (2016)'s example: "low" 5 times, "lower" twice, "newest" 6 times, "widest" 3
# times. Its first merges tie (e+s and s+t both occur 9 times), so the tie-break rule shows at once.
TOY_WORD_COUNTS: dict[str, int] = {"low": 5, "lower": 2, "newest": 6, "widest": 3}

# Written for this lesson (not taken from any corpus): short everyday Japanese sentences. Japanese
# puts no spaces between words; "。" ends a sentence and "、" marks a pause.
JAPANESE_SAMPLE = """\
今日は天気がいいです。
今日は公園へ行きます。
公園で友だちと会います。
友だちは猫が好きです。
私も猫が好きです。
猫は毎日よく寝ます。
明日は雨が降るでしょう。
雨の日は家で本を読みます。
本を読むのが好きです。
友だちと本の話をします。
明日も公園へ行きたいです。
東京は人が多いです。
東京の公園は広いです。
私は東京で電車に乗ります。
電車の中で本を読みます。
昨日は雨が降りました。
昨日は家で猫と寝ました。
私の猫は白いです。
友だちの猫は黒いです。
白い猫も黒い猫も好きです。
毎朝、電車で学校へ行きます。
学校の友だちと話します。
学校の図書館で本を借ります。
図書館は静かです。
静かな公園で本を読みます。
週末は友だちと東京へ行きます。
東京の本屋で本を買います。
新しい本はおもしろいです。
雨の日は電車が混みます。
天気がいい日は公園を歩きます。
"""


# --------------------------------------------------------------------------------------------
# Words
# --------------------------------------------------------------------------------------------

_WHITESPACE = pre_tokenizers.Whitespace()


def pretokenize(text: str) -> list[str]:
    """The words of `text` as `tokenizers`' Whitespace pre-tokenizer cuts them: \\w+ or [^\\w\\s]+."""
    return [word for word, _ in _WHITESPACE.pre_tokenize_str(text)]


def word_counts(texts: str | Iterable[str]) -> Counter[str]:
    """How often each word occurs in a text (or in each of a list of texts)."""
    if isinstance(texts, str):
        texts = [texts]
    counts: Counter[str] = Counter()
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"texts must be strings, got a {type(text).__name__}: {text!r:.80}")
        counts.update(pretokenize(text))
    return counts


def corpus_from_counts(counts: Mapping[str, int]) -> str:
    """A text in which each word occurs as often as `counts` says (one line per word)."""
    return "".join(" ".join([w] * n) + "\n" for w, n in counts.items() if n > 0)


def _as_counts(corpus: Mapping[str, int] | str | Iterable[str]) -> dict[str, int]:
    """Word counts from counts, a text or a list of texts; refuse counts that are not positive."""
    if isinstance(corpus, Mapping):
        counts = dict(corpus)
    else:
        counts = dict(word_counts(corpus))
    for w, n in counts.items():
        if not isinstance(w, str) or not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"Word counts map words (str) to counts (int >= 0); got {w!r}: {n!r}.")
    return {w: n for w, n in counts.items() if w and n > 0}


# --------------------------------------------------------------------------------------------
# Byte-pair encoding by hand
# --------------------------------------------------------------------------------------------


def merge_pair(symbols: Sequence[str], pair: Pair) -> list[str]:
    """`symbols` with every occurrence of `pair` fused, scanning left to right ("a a a" -> "aa a")."""
    a, b = pair
    out: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == a and symbols[i + 1] == b:
            out.append(a + b)
            i += 2  # the pair is used up: its right symbol cannot start another pair
        else:
            out.append(symbols[i])
            i += 1
    return out


def pair_counts(splits: Mapping[tuple[str, ...], int] | Iterable[tuple[Sequence[str], int]]
                ) -> Counter[Pair]:
    """How often each pair of neighbouring symbols occurs, each word weighted by its count.

    Every position counts, so "a a a" holds the pair (a, a) twice although only one merge fits:
    `tokenizers` counts pairs this way, and so does the course. Pairs never span two words.
    """
    items = splits.items() if isinstance(splits, Mapping) else splits
    counts: Counter[Pair] = Counter()
    for symbols, n in items:
        for a, b in zip(symbols, symbols[1:]):
            counts[a, b] += n
    return counts


def initial_ranks(words: Iterable[str]) -> dict[str, int]:
    """Each character of the words numbered in code-point order: the order of `tokenizers`' ids."""
    return {c: i for i, c in enumerate(sorted({c for w in words for c in w}))}


def bpe_learn(
    word_counts: Mapping[str, int] | str | Iterable[str],
    num_merges: int,
    min_frequency: int = 0,
) -> list[Pair]:
    """Learn up to `num_merges` BPE merges from word counts (or a text), as `tokenizers` does.

    Each word starts as its characters; each step fuses the most frequent pair of neighbouring
    symbols (pairs counted inside words, each word weighted by its count) everywhere, and records
    it. It stops early when no pair is left, or when the best pair occurs fewer than
    `min_frequency` times.

    Ties: among equally frequent pairs, the one whose left symbol is older wins, then the one whose
    right symbol is older. Characters are the oldest symbols, in code-point order ("A" < "a" < "e");
    each merged symbol is younger than every character, numbered in the order it was first made.
    (`tokenizers`' BpeTrainer gives symbols ids in that order and pops the pair with the smallest
    ids first.) Only the words that hold the chosen pair are recounted, which keeps it fast.
    """
    counts = _as_counts(word_counts)
    if not isinstance(num_merges, int) or num_merges < 0:
        raise ValueError(f"num_merges must be an int >= 0, got {num_merges!r}.")
    words = [list(w) for w in counts]
    freq = list(counts.values())
    rank = initial_ranks(counts)
    pairs: Counter[Pair] = Counter()
    where: dict[Pair, set[int]] = defaultdict(set)  # pair -> the words that hold it
    for i, syms in enumerate(words):
        for p in zip(syms, syms[1:]):
            pairs[p] += freq[i]
            where[p].add(i)
    merges: list[Pair] = []
    while len(merges) < num_merges and pairs:
        best = min(pairs, key=lambda p: (-pairs[p], rank[p[0]], rank[p[1]]))
        if pairs[best] < max(min_frequency, 1):
            break
        merges.append(best)
        rank.setdefault(best[0] + best[1], len(rank))
        for i in where.pop(best):
            old, new = words[i], merge_pair(words[i], best)
            for p in zip(old, old[1:]):
                pairs[p] -= freq[i]
            for p in zip(new, new[1:]):
                pairs[p] += freq[i]
                where[p].add(i)
            words[i] = new
        for p in [p for p, n in pairs.items() if n <= 0]:
            del pairs[p]
    return merges


def bpe_ties(word_counts: Mapping[str, int] | str | Iterable[str], merges: Sequence[Pair]
             ) -> dict[int, list[Pair]]:
    """The merges that were ties: {index in `merges`: every pair that had the top count then,
    in the order the tie rule ranks them}. Recounts every word at every step (for small samples)."""
    counts = _as_counts(word_counts)
    splits = {tuple(w): n for w, n in counts.items()}
    rank = initial_ranks(counts)
    ties: dict[int, list[Pair]] = {}
    for i, pair in enumerate(merges):
        pairs = pair_counts(splits)
        top = max(pairs.values(), default=0)
        tied = sorted((p for p, n in pairs.items() if n == top), key=lambda p: (rank[p[0]], rank[p[1]]))
        if len(tied) > 1:
            ties[i] = tied
        rank.setdefault(pair[0] + pair[1], len(rank))
        merged: dict[tuple[str, ...], int] = {}
        for syms, n in splits.items():
            key = tuple(merge_pair(syms, pair))
            merged[key] = merged.get(key, 0) + n
        splits = merged
    return ties


def bpe_encode(word: str, merges: Sequence[Pair]) -> list[str]:
    """Split one word into BPE tokens: its characters, then every merge in the order learned.

    Characters that no merge involves stay single characters. This replays the merges by rank:
    it repeatedly fuses the leftmost occurrence of the earliest-learned pair present, which gives
    the same tokens as applying merge 1 everywhere, then merge 2, and so on, without looping over
    the thousands of merges that do not occur in the word.
    """
    ranks = {tuple(p): r for r, p in reversed(list(enumerate(merges)))}  # a repeated pair: its first rank
    symbols = list(word)
    while len(symbols) > 1:
        found = [(ranks[p], i) for i, p in enumerate(zip(symbols, symbols[1:])) if p in ranks]
        if not found:
            break
        r, i = min(found)
        symbols = symbols[:i] + [symbols[i] + symbols[i + 1]] + symbols[i + 2:]
    return symbols


def bpe_tokenize(text: str, merges: Sequence[Pair]) -> list[str]:
    """The BPE tokens of a text: its words (`pretokenize`), each split by `bpe_encode`."""
    cache: dict[str, list[str]] = {}
    out: list[str] = []
    for word in pretokenize(text):
        if word not in cache:
            cache[word] = bpe_encode(word, merges)
        out.extend(cache[word])
    return out


def bpe_vocab(merges: Sequence[Pair], alphabet: Iterable[str],
              special_tokens: Sequence[str] = (UNK,)) -> dict[str, int]:
    """Token ids as `tokenizers` numbers them: special tokens, characters in code-point order, then
    each merged token in the order it was first made."""
    vocab: dict[str, int] = {}
    for token in [*special_tokens, *sorted(set(alphabet)), *(a + b for a, b in merges)]:
        vocab.setdefault(token, len(vocab))
    return vocab


def train_bpe_tokenizer(
    corpus: Mapping[str, int] | str | Iterable[str],
    num_merges: int,
    min_frequency: int = 0,
) -> Tokenizer:
    """`tokenizers`' BpeTrainer on the same words as `bpe_learn`, asked for `num_merges` merges.

    Whitespace pre-tokenizer, no byte-level mapping, the unknown token [UNK] (id 0). The trainer
    stops at a vocabulary size, so it is asked for [UNK] + the alphabet + `num_merges`.
    """
    counts = _as_counts(corpus)
    if not counts:
        raise ValueError("The corpus has no words. Pass word counts, a text or a list of texts.")
    if not isinstance(num_merges, int) or num_merges < 0:
        raise ValueError(f"num_merges must be an int >= 0, got {num_merges!r}.")
    alphabet = {c for w in counts for c in w}
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=1 + len(alphabet) + num_merges,
                                  min_frequency=min_frequency, special_tokens=[UNK],
                                  show_progress=False)
    # Each word as often as it occurs, in a fixed order: the trainer counts exactly these words.
    tokenizer.train_from_iterator(corpus_from_counts(dict(sorted(counts.items()))).splitlines(),
                                  trainer=trainer)
    return tokenizer


def bpe_merges_of(tokenizer: Tokenizer) -> list[Pair]:
    """The merges of a `tokenizers` BPE model, in rank order."""
    model = json.loads(tokenizer.to_str())["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"Expected a BPE model, got {model.get('type')}.")
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in model["merges"]]


def bpe_tokenizer(merges: Sequence[Pair], alphabet: Iterable[str]) -> Tokenizer:
    """A `tokenizers` BPE tokenizer that encodes with the course's merges (Whitespace words,
    [UNK] for a character outside `alphabet`)."""
    merges = [tuple(m) for m in merges]
    tokenizer = Tokenizer(models.BPE(bpe_vocab(merges, alphabet), merges, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer


# --------------------------------------------------------------------------------------------
# WordPiece: greedy longest match, and the likelihood score
# --------------------------------------------------------------------------------------------


def wordpiece_encode(
    word: str,
    vocab: Collection[str],
    unk: str = UNK,
    prefix: str = CONTINUATION,
    max_chars: int = MAX_WORD_CHARS,
) -> list[str]:
    """Split one word into WordPiece tokens by greedy longest match, as BERT and `tokenizers` do.

    From the left, take the longest piece of the word that is in `vocab` (pieces after the first
    are looked up with `prefix`, "##"), then the longest piece after it, and so on. A word longer
    than `max_chars` characters, or with a part no piece covers, becomes the single token `unk`.
    """
    if len(word) > max_chars:
        return [unk]
    pieces: list[str] = []
    start = 0
    while start < len(word):
        for end in range(len(word), start, -1):  # longest first
            piece = word[start:end] if start == 0 else prefix + word[start:end]
            if piece in vocab:
                pieces.append(piece)
                start = end
                break
        else:  # no piece fits here: the whole word is unknown, not just this part
            return [unk]
    return pieces


def wordpiece_tokenizer(vocab: Collection[str] | Mapping[str, int], unk: str = UNK,
                        prefix: str = CONTINUATION, max_chars: int = MAX_WORD_CHARS) -> Tokenizer:
    """`tokenizers`' WordPiece model with this vocabulary (Whitespace words), to compare with."""
    ids = dict(vocab) if isinstance(vocab, Mapping) else {t: i for i, t in enumerate(sorted(vocab))}
    if unk not in ids:
        ids[unk] = len(ids)
    tokenizer = Tokenizer(models.WordPiece(ids, unk_token=unk, continuing_subword_prefix=prefix,
                                           max_input_chars_per_word=max_chars))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer


def wordpiece_splits(counts: Mapping[str, int], prefix: str = CONTINUATION
                     ) -> dict[tuple[str, ...], int]:
    """Each word as WordPiece starts it: its first character, then "##" + each later character."""
    return {(w[0], *(prefix + c for c in w[1:])): n for w, n in _as_counts(counts).items()}


@dataclass(frozen=True)
class PairScore:
    """A pair of neighbouring symbols with BPE's and WordPiece's reasons to merge it."""

    pair: Pair
    count: int      # freq(ab): BPE merges the most frequent pair
    score: float    # freq(ab) / (freq(a) freq(b)): WordPiece merges the highest score


def wordpiece_scores(splits: Mapping[tuple[str, ...], int]) -> list[PairScore]:
    """Every neighbouring pair with its count and its WordPiece score, highest score first.

    score(a, b) = freq(ab) / (freq(a) freq(b)): how much more often a and b occur together than
    their own frequencies predict. Merging the pair with the highest score raises the likelihood of
    the training text (under a unigram model of the symbols) the most; a pair of frequent symbols
    that meet only as often as chance would is not worth a token, however frequent the pair.
    """
    symbols: Counter[str] = Counter()
    for syms, n in splits.items():
        for s in syms:
            symbols[s] += n
    rows = [PairScore(p, c, c / (symbols[p[0]] * symbols[p[1]]))
            for p, c in pair_counts(splits).items()]
    return sorted(rows, key=lambda r: (-r.score, -r.count, r.pair))


# --------------------------------------------------------------------------------------------
# Unigram (SentencePiece)
# --------------------------------------------------------------------------------------------


def _lines(texts: str | Iterable[str]) -> list[str]:
    lines = texts.splitlines() if isinstance(texts, str) else list(texts)
    for t in lines:
        if not isinstance(t, str):
            raise TypeError(f"texts must be strings, got a {type(t).__name__}: {t!r:.80}")
    return [t for t in lines if t.strip()]


def train_sentencepiece(
    texts: str | Iterable[str],
    vocab_size: int = 1000,
    model_type: str = "unigram",
    seed: int = DEFAULT_SEED,
    **options: Any,
) -> Any:
    """Train a SentencePiece model in memory (no files), quietly and deterministically.

    Returns a `sentencepiece.SentencePieceProcessor`. Unigram by default (model_type="bpe" also
    works). Every character of the text is kept (character_coverage=1.0); `vocab_size` is an upper
    limit (hard_vocab_limit=False), since a small text may not offer that many pieces. One thread
    and a fixed seed make the model the same in every run. `options` go to the trainer.
    """
    import sentencepiece as spm

    lines = _lines(texts)
    if not lines:
        raise ValueError("The training texts are empty. Pass a corpus text or a list of strings.")
    n_chars = len({c for line in lines for c in line if not c.isspace()})
    if vocab_size <= n_chars:
        raise ValueError(f"vocab_size={vocab_size} leaves no room for pieces: the text has "
                         f"{n_chars} distinct characters, and each is a piece. Ask for more than "
                         f"{n_chars + 3} (the characters, <unk>, <s> and </s>).")
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    settings = dict(model_type=model_type, vocab_size=vocab_size, character_coverage=1.0,
                    hard_vocab_limit=False, num_threads=1, minloglevel=2)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model,
                                   **{**settings, **options})
    return spm.SentencePieceProcessor(model_proto=model.getvalue())


def sentencepiece_log_probs(sp: Any) -> dict[str, float]:
    """The pieces of a Unigram SentencePiece model with their log-probabilities (no control,
    unknown or unused pieces)."""
    return {sp.id_to_piece(i): sp.get_score(i) for i in range(sp.get_piece_size())
            if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i) or sp.is_byte(i))}


def sentencepiece_view(text: str) -> str:
    """Text as SentencePiece segments it: runs of spaces become one "▁", and one "▁" goes first."""
    return SP_SPACE + SP_SPACE.join(text.split())


def unigram_segment(text: str, log_probs: Mapping[str, float]) -> list[str]:
    """The most probable split of `text` into pieces of a Unigram model (Viterbi).

    A split's log-probability is the sum of its pieces' log-probabilities; dynamic programming over
    end positions finds the best split in O(len(text) x longest piece). A character that is no
    piece becomes a piece of its own (every split covers it that way, so its score changes no
    choice), and neighbouring unknown characters are returned as one piece, as SentencePiece does.
    """
    if not log_probs:
        raise ValueError("log_probs is empty: pass the pieces of a trained Unigram model "
                         "(sentencepiece_log_probs(sp)).")
    unk_lp = min(log_probs.values())  # SentencePiece uses this minus 10; any constant does here
    longest = max(len(p) for p in log_probs)
    best = [0.0] + [-math.inf] * len(text)  # best[j]: log-probability of the best split of text[:j]
    back = [0] * (len(text) + 1)            # where the last piece of that split starts
    for end in range(1, len(text) + 1):
        for start in range(max(0, end - longest), end):
            lp = log_probs.get(text[start:end])
            if lp is None and start == end - 1:
                lp = unk_lp  # an unknown character: a piece of its own, at a price
            if lp is not None and best[start] + lp > best[end]:
                best[end], back[end] = best[start] + lp, start
    pieces: list[str] = []
    end = len(text)
    while end > 0:
        piece = text[back[end]:end]
        if pieces and piece not in log_probs and pieces[-1] not in log_probs:
            pieces[-1] = piece + pieces[-1]  # a run of unknown characters is one piece
        else:
            pieces.append(piece)
        end = back[end]
    return pieces[::-1]


# --------------------------------------------------------------------------------------------
# Comparing segmentations
# --------------------------------------------------------------------------------------------

Segmenter = Callable[[str], Sequence[str]]


def segmenter(tokenizer: Any) -> Segmenter:
    """A function text -> tokens for a `tokenizers` Tokenizer, a `transformers` fast tokenizer, a
    SentencePiece processor, or a function that already is one. Special tokens are left out."""
    if isinstance(tokenizer, Tokenizer) or isinstance(getattr(tokenizer, "backend_tokenizer", None),
                                                      Tokenizer):
        tok = as_backend(tokenizer)
        return lambda text: tok.encode(text, add_special_tokens=False).tokens
    if hasattr(tokenizer, "encode") and hasattr(tokenizer, "id_to_piece"):  # SentencePiece
        return lambda text: tokenizer.encode(text, out_type=str)
    if callable(tokenizer):
        return tokenizer
    raise TypeError(f"Cannot segment with a {type(tokenizer).__name__}: pass a tokenizers.Tokenizer, "
                    "a transformers fast tokenizer, a SentencePieceProcessor or a function "
                    "text -> list of tokens.")


def round_trip(tokenizer: Any, text: str) -> str:
    """`text` encoded and decoded again by a `tokenizers` Tokenizer or a SentencePiece processor."""
    if hasattr(tokenizer, "id_to_piece"):  # SentencePiece
        return tokenizer.decode(tokenizer.encode(text))
    tok = as_backend(tokenizer)
    return tok.decode(tok.encode(text, add_special_tokens=False).ids)


@dataclass(frozen=True)
class Segmentation:
    """One sentence as one tokenizer splits it."""

    sentence: str
    tokenizer: str
    tokens: list[str]


def compare_segmentations(tokenizers: Mapping[str, Any], sentences: Iterable[str]
                          ) -> list[Segmentation]:
    """Each sentence split by each tokenizer (name -> tokenizer, see `segmenter`)."""
    split = {name: segmenter(t) for name, t in tokenizers.items()}
    return [Segmentation(s, name, list(fn(s))) for s in sentences for name, fn in split.items()]


def format_segmentations(rows: Sequence[Segmentation], sep: str = " | ") -> str:
    """`compare_segmentations`' result as text: each sentence, then one line per tokenizer with
    its number of tokens and the tokens."""
    width = max((len(r.tokenizer) for r in rows), default=0)
    lines: list[str] = []
    last = None
    for r in rows:
        if r.sentence != last:
            lines.append(("" if not lines else "\n") + repr(r.sentence))
            last = r.sentence
        lines.append(f"  {r.tokenizer:<{width}} {len(r.tokens):>3}  {sep.join(r.tokens)}")
    return "\n".join(lines)


def tokens_per_sentence(rows: Sequence[Segmentation]) -> dict[str, float]:
    """Mean number of tokens per sentence, by tokenizer."""
    totals: dict[str, list[int]] = defaultdict(list)
    for r in rows:
        totals[r.tokenizer].append(len(r.tokens))
    return {name: sum(n) / len(n) for name, n in totals.items()}
