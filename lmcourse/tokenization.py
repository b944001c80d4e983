"""Lesson 05, tokenization: train a cased WordPiece (BERT style) and a byte-level BPE (GPT-2 style)
tokenizer with Hugging Face `tokenizers`, measure them (vocabulary, subword splits, unknown tokens,
fertility), save them as `transformers` fast tokenizers, and read CoNLL sentences as training text.

The analysis functions take either a raw `tokenizers.Tokenizer` or a `transformers` fast tokenizer
(they use its `backend_tokenizer`), so the lesson can measure what it trained and what it reloaded.
"""

from __future__ import annotations

import json
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

# BERT's special tokens, in BERT's id order: [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4.
PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
WORDPIECE_SPECIALS = (PAD, UNK, CLS, SEP, MASK)
CONTINUATION = "##"  # WordPiece marks a piece that continues a word: "Paris" -> "Par", "##is"
EOT = "<|endoftext|>"  # GPT-2's one special token: end of text, also used as bos/unk/pad
SPACE_MARK = "\u0120"  # "Ġ": how byte-level BPE shows the space byte at the start of a token
KINDS = ("wordpiece", "bpe")
DEFAULT_MAX_LENGTH = {"wordpiece": 512, "bpe": 1024}  # BERT's and GPT-2's context lengths
BATCH_LINES = 1000  # lines per batch handed to the Rust trainer

TokenizerLike = Any  # a tokenizers.Tokenizer or a transformers fast tokenizer


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def _training_batches(texts: str | Iterable[str]) -> Iterator[list[str]]:
    """Batches of strings for `Tokenizer.train_from_iterator`.

    A single string (a whole corpus) is cut into lines that keep their newline, so that BPE also
    learns the newline bytes; iterating a str directly would feed one character at a time.
    """
    if isinstance(texts, str):
        lines = texts.splitlines(keepends=True)
        for i in range(0, len(lines), BATCH_LINES):
            yield lines[i:i + BATCH_LINES]
        return
    batch: list[str] = []
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"texts must be strings, got a {type(text).__name__}: {text!r:.80}")
        batch.append(text)
        if len(batch) == BATCH_LINES:
            yield batch
            batch = []
    if batch:
        yield batch


def _train(tokenizer: Tokenizer, texts: str | Iterable[str], trainer: trainers.Trainer) -> None:
    """Train `tokenizer` in place; refuse texts with nothing to learn from."""
    n_chars = 0

    def counted() -> Iterator[list[str]]:
        nonlocal n_chars
        for batch in _training_batches(texts):
            n_chars += sum(len(t.strip()) for t in batch)
            yield batch

    tokenizer.train_from_iterator(counted(), trainer=trainer)
    if n_chars == 0:
        raise ValueError("The training texts are empty. Pass a corpus text, a list of strings or an "
                         "iterator of strings.")


def _wordpiece_pipeline(cased: bool) -> Tokenizer:
    """An untrained WordPiece tokenizer with BERT's normalizer, pre-tokenizer and decoder."""
    tokenizer = Tokenizer(models.WordPiece(unk_token=UNK, continuing_subword_prefix=CONTINUATION))
    # NFC first: "é" typed as e + combining accent and "é" as one code point become the same text.
    # BertNormalizer then cleans control characters and spaces CJK characters, as BERT does.
    tokenizer.normalizer = normalizers.Sequence([
        normalizers.NFC(),
        normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                   strip_accents=not cased, lowercase=not cased),
    ])
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix=CONTINUATION)
    return tokenizer


def _word_counts(tokenizer: Tokenizer, texts: str | Iterable[str]) -> Counter[str]:
    """How often each word occurs, words as `tokenizer`'s normalizer and pre-tokenizer cut them."""
    counts: Counter[str] = Counter()
    normalize, split = tokenizer.normalizer.normalize_str, tokenizer.pre_tokenizer.pre_tokenize_str
    for batch in _training_batches(texts):
        for text in batch:
            counts.update(word for word, _ in split(normalize(text)))
    return counts


def _kept_alphabet(counts: Counter[str], limit: int | None) -> set[str]:
    """The `limit` most frequent characters (all when None); ties go to the smaller code point."""
    chars: Counter[str] = Counter()
    for word, n in counts.items():
        for c in word:
            chars[c] += n
    ranked = sorted(chars, key=lambda c: (-chars[c], c))
    return set(ranked if limit is None else ranked[:limit])


def _continuation_marks(alphabet: set[str], continuing: set[str]) -> dict[str, str]:
    """A private code point for each character seen inside a word (its "##c" form), in code
    point order and never one of the alphabet's own characters."""
    marks: dict[str, str] = {}
    code = 0xF0000  # Supplementary Private Use Area-A: no real text uses it
    for c in sorted(continuing):
        while chr(code) in alphabet:
            code += 1
        marks[c] = chr(code)
        code += 1
    return marks


def train_wordpiece(
    texts: str | Iterable[str],
    vocab_size: int = 8000,
    min_frequency: int = 2,
    cased: bool = True,
    limit_alphabet: int = 1000,
    show_progress: bool = False,
) -> Tokenizer:
    """Train a BERT-style WordPiece tokenizer; special tokens [PAD] [UNK] [CLS] [SEP] [MASK] get ids 0-4.

    `texts`: a whole corpus as one string, a list of strings or an iterator of strings.
    Cased (default): NFC normalization only, no lowercasing, no accent stripping, so "Paris" and
    "paris" can be different tokens. Uncased: lowercase and strip accents (bert-base-uncased).
    Words come from BertPreTokenizer (split at whitespace and at every punctuation mark); pieces
    after the first of a word carry the "##" prefix. A word with a character outside the learned
    alphabet (the `limit_alphabet` most frequent characters) becomes one [UNK]. The post-processor
    adds [CLS] ... [SEP] (and, for a pair, [CLS] A [SEP] B [SEP] with token type ids 0 and 1).

    Merges are picked by pair frequency, as the `tokenizers` WordPiece trainer does (Google's
    original WordPiece picks them by likelihood gain); the model that encodes with the result
    (greedy longest match, "##") is WordPiece's. Training is deterministic: the same texts and
    settings give the same vocabulary and ids in every process. (`tokenizers`' own WordPieceTrainer
    numbers its "##c" symbols in hash-table order, which changes from process to process, and ties
    between equally frequent merges then go different ways: about 15% of a 2,000-token vocabulary
    moved.) So the words are counted here, every character inside a word is written as a private
    code point of its own (its "##" form), and the byte-pair trainer, whose symbols are numbered
    in code-point order and whose ties go to the smaller pair, learns the merges.
    """
    tokenizer = _wordpiece_pipeline(cased)
    counts = _word_counts(tokenizer, texts)
    if not counts:
        raise ValueError("The training texts are empty. Pass a corpus text, a list of strings or an "
                         "iterator of strings.")
    alphabet = _kept_alphabet(counts, limit_alphabet)
    continuing = {c for word in counts for c in word[1:] if c in alphabet}
    marks = _continuation_marks(alphabet, continuing)
    unmark = {m: c for c, m in marks.items()}

    def marked(word: str) -> str:  # "Paris" -> "P" + the marks of a, r, i, s; unknown chars dropped
        return "".join(c if i == 0 else marks[c] for i, c in enumerate(word) if c in alphabet)

    def lines() -> Iterator[str]:  # each word as often as it occurs, in a fixed order
        for word in sorted(counts):
            w = marked(word)
            if w:
                yield " ".join([w] * counts[word])

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(WORDPIECE_SPECIALS),
        initial_alphabet=sorted(alphabet),  # every kept character also stands alone (word start)
        show_progress=show_progress,
    )
    bpe.train_from_iterator(lines(), trainer=trainer)

    def as_wordpiece(token: str) -> str:
        if token in WORDPIECE_SPECIALS:
            return token
        if token[0] in unmark:  # a piece from inside a word: "##" + its characters
            return CONTINUATION + "".join(unmark[c] for c in token)
        return token[0] + "".join(unmark[c] for c in token[1:])

    vocab = {as_wordpiece(t): i for t, i in bpe.get_vocab().items()}
    tokenizer.model = models.WordPiece(vocab, unk_token=UNK, continuing_subword_prefix=CONTINUATION)
    tokenizer.add_special_tokens(list(WORDPIECE_SPECIALS))
    cls_id, sep_id = tokenizer.token_to_id(CLS), tokenizer.token_to_id(SEP)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS}:0 $A:0 {SEP}:0",
        pair=f"{CLS}:0 $A:0 {SEP}:0 $B:1 {SEP}:1",
        special_tokens=[(CLS, cls_id), (SEP, sep_id)],
    )
    return tokenizer


def train_bpe(
    texts: str | Iterable[str],
    vocab_size: int = 8000,
    min_frequency: int = 2,
    add_prefix_space: bool = False,
    show_progress: bool = False,
) -> Tokenizer:
    """Train a GPT-2-style byte-level BPE tokenizer with the special token <|endoftext|> (id 0).

    Text is turned into UTF-8 bytes, each byte shown as a printable character (the space byte as
    "Ġ"), and all 256 bytes start in the vocabulary: any text can be encoded, nothing is unknown,
    and decoding gives the text back exactly. Words come from GPT-2's regex (a word keeps the space
    before it: " Paris" is one pre-token). `vocab_size` counts the 256 bytes and <|endoftext|>.
    """
    n_base = len(pre_tokenizers.ByteLevel.alphabet()) + 1  # 256 bytes + <|endoftext|>
    if vocab_size < n_base:
        raise ValueError(f"vocab_size={vocab_size} is too small for byte-level BPE: the 256 bytes "
                         f"and {EOT} alone take {n_base} entries. Use at least {n_base}.")
    tokenizer = Tokenizer(models.BPE())  # no unk token: every byte is in the vocabulary
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)  # as GPT-2's tokenizer.json
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen or not
        show_progress=show_progress,
    )
    _train(tokenizer, texts, trainer)
    return tokenizer


def train_timed(kind: str, texts: str | Iterable[str], **kwargs: Any) -> tuple[Tokenizer, float]:
    """Train a tokenizer of `kind` ("wordpiece" or "bpe"); returns (tokenizer, seconds taken)."""
    train = {"wordpiece": train_wordpiece, "bpe": train_bpe}.get(kind)
    if train is None:
        raise ValueError(f"Unknown tokenizer kind {kind!r}; choose one of {KINDS}.")
    start = time.perf_counter()
    tokenizer = train(texts, **kwargs)
    return tokenizer, time.perf_counter() - start


# --------------------------------------------------------------------------------------------
# Looking inside
# --------------------------------------------------------------------------------------------


def as_backend(tokenizer: TokenizerLike) -> Tokenizer:
    """The raw `tokenizers.Tokenizer` of a raw or a `transformers` fast tokenizer."""
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if isinstance(backend, Tokenizer):
        return backend
    raise TypeError(f"Expected a tokenizers.Tokenizer or a transformers fast tokenizer, got "
                    f"{type(tokenizer).__name__}. (A slow, pure-Python tokenizer has no backend.)")


def tokenizer_kind(tokenizer: TokenizerLike) -> str:
    """'wordpiece' or 'bpe', from the tokenizer's model."""
    model = as_backend(tokenizer).model
    if isinstance(model, models.WordPiece):
        return "wordpiece"
    if isinstance(model, models.BPE):
        return "bpe"
    raise ValueError(f"Unsupported tokenizer model {type(model).__name__}; expected WordPiece or BPE.")


def _is_byte_level(tok: Tokenizer) -> bool:
    pre = tok.pre_tokenizer
    if isinstance(pre, pre_tokenizers.ByteLevel):
        return True
    return isinstance(pre, pre_tokenizers.Sequence) and '"ByteLevel"' in tok.to_str()


def _as_texts(texts: str | Iterable[str]) -> list[str]:
    """Texts to measure: a single string counts line by line (without the newlines)."""
    if isinstance(texts, str):
        return [line for line in texts.splitlines() if line.strip()]
    out = list(texts)
    for t in out:
        if not isinstance(t, str):
            raise TypeError(f"texts must be strings, got a {type(t).__name__}: {t!r:.80}")
    return out


def _encode_all(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens ([CLS]/[SEP] are not subwords)."""
    return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]


def fertility(tokenizer: TokenizerLike, texts: str | Iterable[str]) -> float:
    """Subword tokens per word: (tokens of all texts) / (whitespace-separated words).

    Special tokens are not counted. A word is what `str.split()` gives (for CoNLL sentences joined
    by spaces: one CoNLL token), so attached punctuation ("lord!") counts as extra subwords for
    every tokenizer alike. Both tokenizers split text only at or after the whitespace between
    words, so every word costs at least one token and fertility >= 1 (1.0: every word is one
    token), unless a word is made only of characters the normalizer deletes (control characters).
    """
    tok = as_backend(tokenizer)
    texts = _as_texts(texts)
    n_words = sum(len(t.split()) for t in texts)
    if n_words == 0:
        raise ValueError("fertility needs at least one word; the texts are empty.")
    n_tokens = sum(len(ids) for ids in _encode_all(tok, texts))
    return n_tokens / n_words


def unk_id(tokenizer: TokenizerLike) -> int | None:
    """Id of the model's unknown token, or None when it has none (byte-level BPE)."""
    tok = as_backend(tokenizer)
    name = getattr(tok.model, "unk_token", None)
    return tok.token_to_id(name) if name else None


def unk_rate(tokenizer: TokenizerLike, texts: str | Iterable[str]) -> float:
    """Fraction of the tokens of `texts` that are the unknown token (0.0 for byte-level BPE).

    For WordPiece a word with one unseen character becomes a single [UNK]: the whole word is lost.
    """
    tok = as_backend(tokenizer)
    ids = [i for row in _encode_all(tok, _as_texts(texts)) for i in row]
    if not ids:
        raise ValueError("unk_rate needs at least one token; the texts are empty.")
    unk = unk_id(tok)
    if unk is None:
        return 0.0
    return sum(i == unk for i in ids) / len(ids)


def unk_examples(
    tokenizer: TokenizerLike, texts: str | Iterable[str], n: int = 10
) -> list[tuple[str, int]]:
    """The `n` most frequent pieces of text that became the unknown token, with their counts."""
    tok = as_backend(tokenizer)
    unk = unk_id(tok)
    texts = _as_texts(texts)
    if unk is None:
        return []
    counts: Counter[str] = Counter()
    for text, enc in zip(texts, tok.encode_batch(texts, add_special_tokens=False), strict=True):
        counts.update(text[a:b] for i, (a, b) in zip(enc.ids, enc.offsets, strict=True) if i == unk)
    return counts.most_common(n)


def show_splits(
    tokenizer: TokenizerLike, words: Iterable[str], leading_space: bool | None = None
) -> list[tuple[str, list[str]]]:
    """[(word, its subword tokens)] for each word, without special tokens.

    Byte-level BPE tokenizes a word differently at the start of a text ("Paris") and after a space
    (" Paris" -> "ĠParis"); `leading_space=None` encodes each word as it usually appears, after a
    space, for byte-level tokenizers (True/False force it). The returned word is the one given.
    """
    tok = as_backend(tokenizer)
    if leading_space is None:
        leading_space = _is_byte_level(tok)
    words = list(words)
    encodings = tok.encode_batch([(" " + w) if leading_space else w for w in words],
                                 add_special_tokens=False)
    return [(w, e.tokens) for w, e in zip(words, encodings, strict=True)]


def format_splits(splits: Sequence[tuple[str, Sequence[str]]]) -> str:
    """The result of `show_splits` as aligned text lines: word -> pieces (count)."""
    width = max((len(w) for w, _ in splits), default=0)
    return "\n".join(f"{w:<{width}}  ->  {' '.join(p)}  ({len(p)})" for w, p in splits)


def readable(tokenizer: TokenizerLike, token: str) -> str:
    """A token as text: byte-level BPE's "ĠParis" -> " Paris"; WordPiece tokens as they are."""
    tok = as_backend(tokenizer)
    if _is_byte_level(tok):
        return decoders.ByteLevel().decode([token])
    return token


def vocab_summary(tokenizer: TokenizerLike, n_examples: int = 10) -> dict[str, Any]:
    """What the vocabulary holds: sizes, kinds of pieces, the longest and the last-learned tokens.

    - `word_initial`: pieces that start a word (WordPiece: no "##"; BPE: those that start with the
      space byte "Ġ", i.e. words after a space);
    - `continuation`: the others (WordPiece: "##..."; BPE: no leading "Ġ": pieces inside words,
      punctuation, words at the start of a line);
    - `single_characters`: one character (WordPiece, with or without "##") or one byte (BPE);
    - `last_learned`: the highest ids, the merges learned last (the rarest kept);
    - `mean_chars`: mean length in characters of the non-special tokens, markers not counted.
    """
    tok = as_backend(tokenizer)
    kind = tokenizer_kind(tok)
    vocab = tok.get_vocab(with_added_tokens=True)
    added = tok.get_added_tokens_decoder()  # {id: AddedToken}
    special = [added[i].content for i in sorted(added) if added[i].special]
    special_set = set(special)
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    plain = [t for t, _ in by_id if t not in special_set]

    def body(t: str) -> str:
        if kind == "wordpiece":
            return t[len(CONTINUATION):] if t.startswith(CONTINUATION) else t
        return readable(tok, t)

    if kind == "wordpiece":
        continuation = [t for t in plain if t.startswith(CONTINUATION)]
        single = [t for t in plain if len(body(t)) == 1]
    else:
        continuation = [t for t in plain if not t.startswith(SPACE_MARK)]
        single = [t for t in plain if len(t) == 1]  # each of the 256 bytes is one character
    lengths = [len(body(t)) for t in plain]
    longest = sorted(plain, key=lambda t: (-len(body(t)), vocab[t]))[:n_examples]
    return {
        "kind": kind,
        "vocab_size": len(vocab),
        "special_tokens": special,
        "word_initial": len(plain) - len(continuation),
        "continuation": len(continuation),
        "single_characters": len(single),
        "mean_chars": sum(lengths) / max(len(lengths), 1),
        "longest": longest,
        "last_learned": [t for t, _ in by_id[-n_examples:] if t not in special_set],
    }


# --------------------------------------------------------------------------------------------
# Saving for transformers
# --------------------------------------------------------------------------------------------


def _special_tokens_for(kind: str) -> dict[str, str]:
    if kind == "wordpiece":
        return {"pad_token": PAD, "unk_token": UNK, "cls_token": CLS, "sep_token": SEP, "mask_token": MASK}
    # GPT-2 uses <|endoftext|> for bos, eos and unk; it also serves as padding, which batching
    # needs and which the attention mask hides from the model anyway.
    return {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT, "pad_token": EOT}


def save_for_transformers(
    tokenizer: Tokenizer,
    folder: str | Path,
    kind: str | None = None,
    model_max_length: int | None = None,
) -> Path:
    """Save a trained tokenizer as a `transformers` fast tokenizer; `AutoTokenizer` loads the folder.

    The folder gets `tokenizer.json` (the tokenizer exactly as trained) and `tokenizer_config.json`
    (class, special tokens, `model_max_length`: 512 for WordPiece, 1024 for BPE by default).
    The class saved is `PreTrainedTokenizerFast` (in transformers 5 an alias of `TokenizersBackend`),
    which loads `tokenizer.json` as it is. `BertTokenizerFast` would not do here: in transformers 5
    it rebuilds its normalizer from `do_lower_case`/`strip_accents` and drops the NFC step.
    The WordPiece tokenizer also returns `token_type_ids`, as BERT's does. After saving, the folder
    is reloaded and checked to give the same ids as `tokenizer`; returns the folder.
    """
    from transformers import PreTrainedTokenizerFast

    tok = as_backend(tokenizer)
    kind = kind or tokenizer_kind(tok)
    if kind not in KINDS:
        raise ValueError(f"Unknown tokenizer kind {kind!r}; choose one of {KINDS}.")
    actual = tokenizer_kind(tok)
    if actual != kind:
        raise ValueError(f"kind={kind!r} but the tokenizer's model is {actual}.")
    specials = _special_tokens_for(kind)
    missing = sorted({t for t in specials.values() if tok.token_to_id(t) is None})
    if missing:
        raise ValueError(f"The tokenizer has no {missing} token(s); train it with train_{kind}() so "
                         "that the special tokens are in its vocabulary.")
    extra: dict[str, Any] = {}
    if kind == "wordpiece":
        extra["model_input_names"] = ["input_ids", "token_type_ids", "attention_mask"]
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=model_max_length or DEFAULT_MAX_LENGTH[kind],
        clean_up_tokenization_spaces=False,  # decoding is the backend decoder's job, as trained
        **specials,
        **extra,
    )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(folder)
    _check_same_ids(tok, load_tokenizer(folder), folder)
    return folder


PROBE_TEXTS = (
    "First Citizen: Before we proceed any further, hear me speak.",
    "PARIS, paris and Paris; O'er the hills -- 1,234 times!",
    "Cafe\u0301 na\u00efve \u2603 \u6771\u4eac \U0001f600\ttab  double  space\nnew line",
)


def _probe_texts(tok: Tokenizer) -> list[str]:
    """Texts that tell tokenizers apart: fixed ones, plus every single-character token of the
    vocabulary written decomposed (NFD), which catches a normalizer lost on the way."""
    chars = [t for t in tok.get_vocab() if len(t) == 1]
    return [*PROBE_TEXTS, " ".join(unicodedata.normalize("NFD", c) for c in sorted(chars))]


def _check_same_ids(raw: Tokenizer, loaded: Any, folder: Path) -> None:
    """Raise when the reloaded folder does not encode like the raw tokenizer."""
    for text in _probe_texts(raw):
        want = raw.encode(text).ids
        got = loaded(text)["input_ids"]
        if got != want:
            raise RuntimeError(f"The tokenizer saved in {folder} encodes {text!r} as {got}, but the "
                               f"trained tokenizer gives {want}. The saved files are inconsistent.")


def load_tokenizer(folder: str | Path) -> Any:
    """Load a folder written by `save_for_transformers` (or any tokenizer folder) with AutoTokenizer."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer_config.json").is_file():
        raise FileNotFoundError(f"No tokenizer in {folder}: expected tokenizer.json and "
                                "tokenizer_config.json. Save one with save_for_transformers().")
    return AutoTokenizer.from_pretrained(str(folder))


def saved_config(folder: str | Path) -> dict[str, Any]:
    """The tokenizer_config.json of a saved tokenizer folder, as a dict."""
    return json.loads((Path(folder) / "tokenizer_config.json").read_text(encoding="utf-8"))
