"""Named-entity tags: the BIO tag schemes (IOB1, IOB2), converting IOB1 to IOB2, the label list of a
set of entity types, and the entities (spans) a tag sequence marks.

A tag is `O` (outside every entity) or `B-TYPE` / `I-TYPE` (the beginning / inside of an entity of
type TYPE, e.g. `B-PER`, `I-LOC`). The two schemes differ in where `B-` appears:

- IOB2 (CoNLL-2003 as distributed today, the Hugging Face data sets): every entity starts with `B-`;
- IOB1 (the original CoNLL-2003 files): an entity starts with `I-`, and `B-` only marks an entity
  that directly follows another one of the same type.

The course works in IOB2; `iob1_to_iob2` converts. The tag helpers at the top work on plain
strings: the module imports nothing from the course when it loads, so the data loaders
(`lmcourse.data`) can use it. The parts for fine-tuning a token classifier (lesson 07) import torch,
transformers, seqeval and `lmcourse.lm_math.IGNORE_INDEX` inside the functions that need them:

- subword labels: `align_labels` turns word labels into labels of a fast tokenizer's subwords
  (first subword labelled, the rest and the special tokens IGNORE_INDEX), `tokenize_and_align`
  does it for a batch of pre-split sentences, `TokenClassificationCollator` pads (labels with
  IGNORE_INDEX); `encode_seeds_recipe` is the naive recipe the lesson compares against;
- decoding: `entity_spans` reads entities from tags (the lenient policy below, or strict IOB2),
  `word_predictions` and `predict_word_tags` take a model's subword predictions back to words;
- metrics: entity-level precision, recall and F1 per type and micro-averaged by seqeval
  (`entity_scores`, `entity_metrics`, `entity_report`), the same from span sets (`span_prf`),
  token accuracy for contrast, a Trainer metrics_fn (`ner_metrics_fn`), and error analysis
  (`span_errors`, `error_counts`, `entity_confusion`).

Decoding policy. An `I-X` that does not continue an entity of type X (after `O`, at the start, or
after an entity of another type) begins a new entity of type X. This is what conlleval and seqeval's
default mode do (`seqeval.metrics.sequence_labeling.get_entities`; tests/test_ner.py checks equality
on random tag sequences). `strict=True` follows seqeval's `mode="strict", scheme=IOB2` instead:
only `B-X` begins an entity, and such a stray `I-X` belongs to no entity at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

OUTSIDE = "O"
BEGIN, INSIDE = "B", "I"
SCHEMES = ("IOB1", "IOB2")


def split_tag(tag: str) -> tuple[str, str | None]:
    """("O", None) for `O`; (prefix, type) for `B-TYPE` or `I-TYPE`: split_tag("I-LOC") is
    ("I", "LOC"). Anything else raises ValueError saying what a BIO tag looks like."""
    if tag == OUTSIDE:
        return OUTSIDE, None
    prefix, sep, kind = tag.partition("-")
    if prefix in (BEGIN, INSIDE) and sep and kind and not any(c.isspace() for c in kind):
        return prefix, kind
    if prefix in ("S", "E") and sep and kind:
        hint = " It looks like IOBES (S-/E- tags); convert the file to BIO first."
    elif "_" in tag and tag.split("_", 1)[0] in (BEGIN, INSIDE):
        hint = " Prefix and type are joined by a hyphen: B-PER, not B_PER."
    elif tag == OUTSIDE.lower() or tag[:2] in ("b-", "i-"):
        hint = " Tags are case-sensitive: O, B-..., I-... in capitals."
    elif sep == "" and tag.isalpha():
        hint = f" A bare type needs a prefix: B-{tag} or I-{tag}."
    else:
        hint = ""
    raise ValueError(f"{tag!r} is not a BIO tag (O, B-TYPE or I-TYPE).{hint}")


def starts_entity(tag: str, previous: str) -> bool:
    """Whether `tag` begins a new entity after `previous` (read leniently, as conlleval does: an
    `I-` after `O` or after another type also begins one)."""
    prefix, kind = split_tag(tag)
    if prefix == OUTSIDE:
        return False
    if prefix == BEGIN:
        return True
    return split_tag(previous)[1] != kind  # I-X after O or after Y begins an entity of type X


def detect_scheme(sentences: Iterable[Sequence[str]]) -> str:
    """"IOB1" when some entity starts with `I-` (at a sentence's start, after `O` or after another
    type), else "IOB2". (A file with no such entity reads the same in both schemes.)"""
    return "IOB1" if any(iob2_errors(tags) for tags in sentences) else "IOB2"


def iob1_to_iob2(tags: Sequence[str]) -> list[str]:
    """The same entities in IOB2: every `I-TYPE` that begins an entity becomes `B-TYPE`.
    Tags already in IOB2 come back unchanged."""
    out: list[str] = []
    previous = OUTSIDE
    for tag in tags:
        prefix, kind = split_tag(tag)
        if prefix == INSIDE and starts_entity(tag, previous):
            out.append(f"{BEGIN}-{kind}")
        else:
            out.append(tag)
        previous = tag
    return out


def iob2_errors(tags: Sequence[str]) -> list[int]:
    """Positions of tags that break IOB2: an `I-TYPE` that begins an entity (it should be
    `B-TYPE`). An empty list means the sequence is valid IOB2."""
    bad = []
    previous = OUTSIDE
    for i, tag in enumerate(tags):
        if split_tag(tag)[0] == INSIDE and starts_entity(tag, previous):
            bad.append(i)
        previous = tag
    return bad


def bio_labels(types: Sequence[str]) -> list[str]:
    """The label list for entity types, in the course's order: `O` first, then for each type in
    the order given `B-TYPE` then `I-TYPE`. bio_labels(["PER", "LOC"]) is
    ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]."""
    if len(set(types)) != len(types):
        raise ValueError(f"Entity types repeat: {list(types)}.")
    labels = [OUTSIDE]
    for kind in types:
        split_tag(f"{BEGIN}-{kind}")  # the type must make a valid tag
        labels += [f"{BEGIN}-{kind}", f"{INSIDE}-{kind}"]
    return labels


def entity_types(labels: Sequence[str]) -> list[str]:
    """The entity types of a label list, in order of first appearance:
    entity_types(["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]) is ["PER", "LOC"]."""
    types: list[str] = []
    for label in labels:
        kind = split_tag(label)[1]
        if kind is not None and kind not in types:
            types.append(kind)
    return types


def entity_spans(tags: Sequence[str], strict: bool = False) -> list[tuple[str, int, int]]:
    """The entities a tag sequence marks, as (type, start, end) with `end` exclusive:
    ["B-PER", "I-PER", "O", "B-LOC"] gives [("PER", 0, 2), ("LOC", 3, 4)].

    An entity continues over `I-X` of its own type and ends at anything else (`O`, any `B-`, an `I-`
    of another type). A stray `I-X` (after `O`, at the start, after another type) begins an entity,
    as in conlleval and seqeval's default mode: ["O", "I-PER", "I-LOC"] gives [("PER", 1, 2),
    ("LOC", 2, 3)]. With strict=True (seqeval's mode="strict", scheme=IOB2) only `B-X` begins an
    entity and a stray `I-X` is part of none: the same tags give [].
    """
    spans: list[tuple[str, int, int]] = []
    kind: str | None = None  # the type of the entity open at this token, if any
    start = 0
    for i, tag in enumerate(tags):
        prefix, tag_kind = split_tag(tag)
        continues = kind is not None and prefix == INSIDE and tag_kind == kind
        if kind is not None and not continues:
            spans.append((kind, start, i))  # the open entity ends before this tag
            kind = None
        if kind is None and (prefix == BEGIN or (prefix == INSIDE and not strict)):
            kind, start = tag_kind, i
    if kind is not None:
        spans.append((kind, start, len(tags)))
    return spans


def entities(tokens: Sequence[str], tags: Sequence[str]) -> list[tuple[str, str]]:
    """(type, text) for each entity of a sentence, tokens joined by spaces:
    entities(["Hans-Peter", "Schmidt", "visited", "Jordan"], ["B-PER", "I-PER", "O", "B-LOC"])
    is [("PER", "Hans-Peter Schmidt"), ("LOC", "Jordan")]."""
    if len(tokens) != len(tags):
        raise ValueError(f"{len(tokens)} tokens but {len(tags)} tags.")
    return [(kind, " ".join(tokens[start:end])) for kind, start, end in entity_spans(tags)]


def spans_to_tags(length: int, spans: Iterable[tuple[str, int, int]]) -> list[str]:
    """IOB2 tags of a sentence of `length` tokens holding the entities `spans` ((type, start, end),
    end exclusive, not overlapping): the inverse of `entity_spans`."""
    tags = [OUTSIDE] * length
    for kind, start, end in spans:
        if not 0 <= start < end <= length:
            raise ValueError(f"Span ({kind!r}, {start}, {end}) does not fit {length} tokens.")
        if any(t != OUTSIDE for t in tags[start:end]):
            raise ValueError(f"Span ({kind!r}, {start}, {end}) overlaps another entity.")
        tags[start:end] = [f"{BEGIN}-{kind}"] + [f"{INSIDE}-{kind}"] * (end - start - 1)
    return tags


# --------------------------------------------------------------------------- subword labels
#
# From here on: fine-tuning a token classifier (lesson 07). Imports of the course, torch,
# transformers and seqeval stay inside the functions, so that loading this module stays free of them.

if TYPE_CHECKING:
    import torch

    MetricsFn = Callable[[list[torch.Tensor], list[Mapping[str, Any]]], dict[str, float]]

ERROR_KINDS = ("correct", "type", "boundary", "type_and_boundary", "missed", "spurious")
Span = tuple[str, int, int]  # (type, start, end), end exclusive


def _ignore_index() -> int:
    from lmcourse.lm_math import IGNORE_INDEX  # the course's one definition

    return IGNORE_INDEX


def b_to_i_ids(labels: Sequence[str]) -> dict[int, int]:
    """{id of B-X: id of I-X} for each type of a label list: with bio_labels(["PER", "LOC"])
    (O, B-PER, I-PER, B-LOC, I-LOC) it is {1: 2, 3: 4}. What `align_labels` needs to label the
    later subwords of a word that begins an entity."""
    index = {label: i for i, label in enumerate(labels)}
    out: dict[int, int] = {}
    for i, label in enumerate(labels):
        prefix, kind = split_tag(label)
        if prefix == BEGIN:
            inside = f"{INSIDE}-{kind}"
            if inside not in index:
                raise ValueError(f"The label list has {label!r} but no {inside!r}.")
            out[i] = index[inside]
    return out


def align_labels(
    word_ids: Sequence[int | None],
    word_labels: Sequence[int],
    label_all_subwords: bool = False,
    b_to_i: Mapping[int, int] | None = None,
) -> list[int]:
    """The label of each subword token, from the labels of the words.

    `word_ids` is a fast tokenizer's `encoding.word_ids(i)`: for each token the index of the word it
    comes from, None for special tokens ([CLS], [SEP], padding). The first subword of a word gets
    the word's label; later subwords of the same word and special tokens get IGNORE_INDEX, so the
    loss and the metrics count each word once:
    align_labels([None, 0, 0, 1, None], [1, 0]) is [-100, 1, -100, 0, -100].

    label_all_subwords=True labels every subword with its word's label instead, except that a
    later subword of a word labelled B-X gets I-X (the entity continues; B-X again would start a
    new one). That needs `b_to_i` = {id of B-X: id of I-X} (`b_to_i_ids(labels)`); pass
    b_to_i={} to copy B-X onto every subword on purpose.
    """
    ignore = _ignore_index()
    if label_all_subwords and b_to_i is None:
        raise ValueError("label_all_subwords=True needs b_to_i={id of B-X: id of I-X}: pass "
                         "b_to_i=ner.b_to_i_ids(labels) (or b_to_i={} to copy B-X as it is).")
    out: list[int] = []
    previous: int | None = None
    for wid in word_ids:
        if wid is None:
            out.append(ignore)
        else:
            if not 0 <= wid < len(word_labels):
                raise ValueError(f"word_ids name word {wid}, but there are {len(word_labels)} "
                                 "word labels: pass the labels of the same sentence.")
            label = int(word_labels[wid])
            if wid != previous:
                out.append(label)                             # a word's first subword
            elif label_all_subwords:
                out.append(int(b_to_i.get(label, label)))     # later subword: B-X -> I-X
            else:
                out.append(ignore)                            # later subword: not counted
        previous = wid
    return out


def tokenize_and_align(
    tokenizer: Any,
    sentences: Sequence[Sequence[str]],
    tags: Sequence[Sequence[int]] | None = None,
    *,
    label_all_subwords: bool = False,
    b_to_i: Mapping[int, int] | None = None,
    max_length: int | None = None,
    return_word_ids: bool = False,
) -> dict[str, list[list[Any]]]:
    """Tokenize pre-split sentences (lists of words) and label their subwords with `align_labels`.

    Returns lists, one row per sentence and nothing padded (`TokenClassificationCollator` pads each
    batch): input_ids ([CLS] ... [SEP]), attention_mask, labels (when `tags`, the word label ids,
    are given) and, with return_word_ids=True, word_ids (None for special tokens; for
    `word_predictions`). It works as a batched `datasets.Dataset.map` function:
    `ds.map(lambda b: tokenize_and_align(tok, b["tokens"], b["ner_tags"]), batched=True)`.
    Sentences longer than `max_length` tokens (default: the tokenizer's limit) are truncated;
    their last words then have no token and no label.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("tokenize_and_align needs a fast tokenizer (it reads word_ids()): load it "
                         "with AutoTokenizer.from_pretrained(..., use_fast=True).")
    sentences = [list(s) for s in sentences]
    if tags is not None and len(tags) != len(sentences):
        raise ValueError(f"{len(sentences)} sentences but {len(tags)} tag sequences.")
    enc = tokenizer(sentences, is_split_into_words=True, truncation=True,
                    max_length=max_length or tokenizer.model_max_length)
    out: dict[str, list[list[Any]]] = {"input_ids": list(enc["input_ids"]),
                                       "attention_mask": list(enc["attention_mask"])}
    word_ids = [enc.word_ids(i) for i in range(len(sentences))]
    if tags is not None:
        out["labels"] = []
        for i, (words, word_tags) in enumerate(zip(sentences, tags)):
            if len(words) != len(word_tags):
                raise ValueError(f"Sentence {i}: {len(words)} words but {len(word_tags)} tags.")
            out["labels"].append(align_labels(word_ids[i], word_tags, label_all_subwords, b_to_i))
    if return_word_ids:
        out["word_ids"] = word_ids
    return out


@dataclass
class TokenClassificationCollator:
    """Pads a list of `tokenize_and_align` examples into one batch (a Trainer collate_fn).

    The batch holds input_ids (B, T) padded with `pad_token_id`, attention_mask (B, T) (1 real
    token, 0 padding, from the lengths), labels (B, T) padded with
    IGNORE_INDEX when the examples have labels (so padding counts in no loss and no metric), and
    token_type_ids (B, T) padded with 0 when they have them. T is the batch's longest example
    (dynamic padding), rounded up to a multiple of `pad_to_multiple_of` if set. Other keys
    (`tokens`, `ner_tags`, `word_ids`, `id` of a dataset row) are left out of the batch.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, **kwargs: Any) -> TokenClassificationCollator:
        """A collator with the tokenizer's [PAD] id."""
        from lmcourse.batching import tokenizer_pad_id

        return cls(pad_token_id=tokenizer_pad_id(tokenizer), **kwargs)

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        from lmcourse.batching import pad_batch

        return pad_batch(examples, self.pad_token_id, self.pad_to_multiple_of,
                         token_keys={"labels": _ignore_index(), "token_type_ids": 0},
                         name="TokenClassificationCollator")


def encode_seeds_recipe(
    tokenizer: Any,
    sentences: Sequence[Sequence[str]],
    tags: Sequence[Sequence[int]],
    o_id: int = 0,
    max_length: int = 128,
) -> dict[str, torch.Tensor]:
    """The seeds' recipe, kept for lesson 07 to compare against (not how the course encodes NER).

    Every sentence is padded to max_length=128 tokens, and the word labels are laid on the token
    positions as they are, padded with the `O` id: label i goes to token i. With no subword
    alignment, [CLS] gets the first word's label, every later label sits one token early (and
    further off after each word split into several subwords), and padding and [SEP] are labelled
    O, so the loss and the token accuracy count them (an easy, useless `O`). Returns input_ids,
    attention_mask and labels, each (N, max_length).
    """
    import torch

    sentences = [list(s) for s in sentences]
    if len(tags) != len(sentences):
        raise ValueError(f"{len(sentences)} sentences but {len(tags)} tag sequences.")
    enc = tokenizer(sentences, is_split_into_words=True, padding="max_length", truncation=True,
                    max_length=max_length, return_tensors="pt")
    labels = [[int(t) for t in row[:max_length]] for row in tags]
    labels = [row + [o_id] * (max_length - len(row)) for row in labels]
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],  # (N, L)
            "labels": torch.tensor(labels, dtype=torch.long)}                       # (N, L)


# --------------------------------------------------------------------------- predictions to words


def _token_ids(predictions: Any) -> list[int]:
    """Predicted ids of one sentence's tokens from ids (T,) or logits (T, C): tensor, array or list."""
    if hasattr(predictions, "ndim"):  # a tensor or a numpy array
        if predictions.ndim == 2:
            predictions = predictions.argmax(-1)  # (T, C) -> (T,)
        return [int(x) for x in predictions.tolist()]
    rows = list(predictions)
    if rows and isinstance(rows[0], (list, tuple)):
        return [max(range(len(r)), key=r.__getitem__) for r in rows]
    return [int(x) for x in rows]


def word_predictions(
    predictions: Any,
    word_ids: Sequence[int | None],
    n_words: int | None = None,
    fill: int = 0,
) -> list[int]:
    """One predicted label id per word: the prediction of the word's first subword.

    `predictions` are one sentence's predicted ids (T,) or logits (T, C) (a padded batch row is
    fine: positions past len(word_ids) are not read); `word_ids` its tokens' word indices (None for
    special tokens). The result has `n_words` entries (default: the last word seen + 1); a word
    with no token (cut off by truncation, or dropped by the tokenizer) gets `fill` (0: `O` in the
    course's label order).
    """
    preds = _token_ids(predictions)
    if len(preds) < len(word_ids):
        raise ValueError(f"{len(preds)} token predictions for {len(word_ids)} tokens.")
    seen = [w for w in word_ids if w is not None]
    n = n_words if n_words is not None else (max(seen) + 1 if seen else 0)
    out: list[int | None] = [None] * n
    for pos, wid in enumerate(word_ids):
        if wid is not None and wid < n and out[wid] is None:
            out[wid] = preds[pos]  # the first subword decides
    return [fill if p is None else p for p in out]


def predict_word_tags(
    model: Any,
    tokenizer: Any,
    sentences: Sequence[Sequence[str]],
    labels: Sequence[str],
    batch_size: int = 32,
    max_length: int | None = None,
    device: Any = None,
) -> list[list[str]]:
    """The predicted tag of every word of each pre-split sentence (first-subword decoding).

    `model` is any token classifier that returns logits (B, T, C) (a transformers
    ...ForTokenClassification); it runs in eval mode on `device` (default: the course's device) and
    is put back in its previous mode. Words cut off by truncation get `O`. Row i is sentences[i].
    """
    import torch

    from lmcourse import config
    from lmcourse.train import get_logits

    sentences = [list(s) for s in sentences]
    device = config.get_device(device)
    enc = tokenize_and_align(tokenizer, sentences, max_length=max_length,
                                              return_word_ids=True)
    collate = TokenClassificationCollator.from_tokenizer(tokenizer)
    fill = labels.index(OUTSIDE) if OUTSIDE in labels else 0
    order = sorted(range(len(sentences)), key=lambda i: len(enc["input_ids"][i]))
    out: list[list[str]] = [[] for _ in sentences]
    was_training = model.training
    model.to(device)
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                batch = collate([{"input_ids": enc["input_ids"][i]} for i in rows])
                batch = {k: v.to(device) for k, v in batch.items()}
                ids = get_logits(model(**batch)).argmax(-1).cpu()  # (b, T)
                for row, i in zip(ids, rows):
                    words = word_predictions(row, enc["word_ids"][i], len(sentences[i]), fill)
                    out[i] = [labels[w] for w in words]
    finally:
        model.train(was_training)
    return out


# --------------------------------------------------------------------------- metrics


def sentence_spans(sentences: Sequence[Sequence[str]], strict: bool = False) -> set[tuple[int, str, int, int]]:
    """Every entity of a list of tag sequences as (sentence, type, start, end): the set entity-level
    metrics compare (an entity is right only when sentence, type, start and end all match)."""
    return {(i, *span) for i, tags in enumerate(sentences) for span in entity_spans(tags, strict)}


def span_prf(gold: Iterable[Any], pred: Iterable[Any]) -> tuple[float, float, float]:
    """(precision, recall, F1) of predicted entities against gold ones, each a set of spans (any
    hashable: (type, start, end), or (sentence, type, start, end) across sentences).

    precision = right / predicted, recall = right / gold, F1 = 2PR / (P + R), where right counts
    the predicted spans that are in `gold` exactly; 0.0 where a denominator is 0 (as seqeval with
    zero_division=0).
    """
    gold, pred = set(gold), set(pred)
    right = len(gold & pred)
    precision = right / len(pred) if pred else 0.0
    recall = right / len(gold) if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def _check_pairs(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> None:
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted ones.")
    for i, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"Sentence {i}: {len(g)} gold tags but {len(p)} predicted tags.")


def _seqeval_kwargs(strict: bool) -> dict[str, Any]:
    if not strict:
        return {}
    from seqeval.scheme import IOB2

    return {"mode": "strict", "scheme": IOB2}


def entity_scores(
    gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], strict: bool = False
) -> dict[str, dict[str, float]]:
    """Entity-level precision, recall, F1 and support (gold entities) per type, and their "micro"
    average (over all entities), by seqeval's `classification_report`.

    Default mode reads tags leniently (a stray I-X begins an entity, `entity_spans`); strict=True is
    seqeval's mode="strict", scheme=IOB2 (a stray I-X belongs to no entity). Zero division gives 0.0.
    """
    import warnings

    from seqeval.metrics import classification_report

    _check_pairs(gold, pred)
    gold, pred = [list(g) for g in gold], [list(p) for p in pred]
    types = sorted({t for _, t, _, _ in sentence_spans(gold, strict) | sentence_spans(pred, strict)})
    out: dict[str, dict[str, float]] = {}
    if types:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = classification_report(gold, pred, output_dict=True, zero_division=0,
                                           **_seqeval_kwargs(strict))
        for name, row in report.items():
            if name in types or name == "micro avg":
                out["micro" if name == "micro avg" else name] = {
                    "precision": float(row["precision"]), "recall": float(row["recall"]),
                    "f1": float(row["f1-score"]), "support": int(row["support"])}
    else:  # no entity anywhere: seqeval's report has no rows
        out["micro"] = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    return out


def token_accuracy(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> float:
    """The fraction of tags (O included) predicted right: the metric that flatters, since most
    tags are O (predicting O everywhere scores about 0.83 on CoNLL-2003 and finds no entity)."""
    _check_pairs(gold, pred)
    n = sum(len(g) for g in gold)
    return sum(a == b for g, p in zip(gold, pred) for a, b in zip(g, p)) / n if n else 0.0


def entity_metrics(
    gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], strict: bool = False
) -> dict[str, float]:
    """precision, recall, f1 (entity-level, micro-averaged, seqeval), accuracy (token accuracy,
    for contrast) and f1_<TYPE> for each entity type: one flat dict, as a Trainer logs it."""
    scores = entity_scores(gold, pred, strict)
    micro = scores.pop("micro")
    out = {"precision": micro["precision"], "recall": micro["recall"], "f1": micro["f1"],
           "accuracy": token_accuracy(gold, pred)}
    out.update({f"f1_{kind}": row["f1"] for kind, row in scores.items()})
    return out


def entity_report(
    gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], strict: bool = False,
    digits: int = 4,
) -> str:
    """seqeval's text report: precision, recall, F1 and support per type, then the micro, macro
    and weighted averages."""
    import warnings

    from seqeval.metrics import classification_report

    _check_pairs(gold, pred)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return classification_report([list(g) for g in gold], [list(p) for p in pred],
                                     digits=digits, zero_division=0, **_seqeval_kwargs(strict))


def ner_metrics_fn(labels: Sequence[str], strict: bool = False) -> MetricsFn:
    """A Trainer metrics_fn for a token classifier: `entity_metrics` of the evaluation set.

    It gets each batch's logits (B, T, C) (or predicted ids (B, T), when the Trainer's
    preprocess_logits takes the argmax) and the batches with their labels (B, T); positions whose
    label is IGNORE_INDEX (special tokens, padding, later subwords) are skipped, so with
    first-subword labels each row is one sentence's words. The Trainer logs eval_f1,
    eval_precision, eval_recall, eval_accuracy (token accuracy) and eval_f1_<TYPE>. (With labels
    on every subword it scores subwords, not words: use `predict_word_tags` to compare those.)
    """
    labels = list(labels)

    def metrics(logits: list[torch.Tensor], batches: list[Mapping[str, Any]]) -> dict[str, float]:
        import torch

        if not logits:
            raise ValueError("No logits: the evaluation set was empty.")
        ignore = _ignore_index()
        gold: list[list[str]] = []
        pred: list[list[str]] = []
        for out, batch in zip(logits, batches):
            ids = out.argmax(-1) if out.dim() == 3 else out  # (B, T)
            target = torch.as_tensor(batch["labels"])        # (B, T)
            if ids.shape != target.shape:
                raise ValueError(f"Predictions {tuple(ids.shape)} and labels {tuple(target.shape)} "
                                 "differ in shape: pass (B, T, C) logits or (B, T) ids.")
            for p_row, t_row in zip(ids.tolist(), target.tolist()):
                keep = [j for j, t in enumerate(t_row) if t != ignore]
                gold.append([labels[t_row[j]] for j in keep])
                pred.append([labels[p_row[j]] for j in keep])
        return entity_metrics(gold, pred, strict)

    return metrics


# --------------------------------------------------------------------------- error analysis


def _overlap(a: Span, b: Span) -> bool:
    return a[1] < b[2] and b[1] < a[2]


def span_errors(gold: Sequence[Span], pred: Sequence[Span]) -> list[tuple[str, Span | None, Span | None]]:
    """Each gold and predicted entity of one sentence, sorted into one of ERROR_KINDS:

    - correct: a predicted entity with the same type, start and end;
    - type: one with the same start and end but another type;
    - boundary: one of the same type that overlaps it with other boundaries;
    - type_and_boundary: one of another type that overlaps it with other boundaries;
    - missed: no predicted entity overlaps it;
    - spurious: a predicted entity that overlaps no gold one.

    Returns (kind, gold span, predicted span) triples: one per gold entity (with the predicted span
    that explains it, None when missed), then one per spurious prediction (gold span None). A
    prediction that overlaps two gold entities explains both.
    """
    pred = list(pred)
    out: list[tuple[str, Span | None, Span | None]] = []
    for g in gold:
        same = [p for p in pred if p[1:] == g[1:]]
        if same:
            out.append(("correct" if same[0][0] == g[0] else "type", g, same[0]))
            continue
        near = [p for p in pred if _overlap(g, p)]
        if not near:
            out.append(("missed", g, None))
            continue
        same_type = [p for p in near if p[0] == g[0]]
        p = same_type[0] if same_type else near[0]
        out.append(("boundary" if same_type else "type_and_boundary", g, p))
    out += [("spurious", None, p) for p in pred if not any(_overlap(g, p) for g in gold)]
    return out


def error_counts(
    gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], strict: bool = False
) -> dict[str, int]:
    """How many entities of each of ERROR_KINDS (`span_errors`) over tag sequences of sentences.
    correct + type + boundary + type_and_boundary + missed is the number of gold entities."""
    _check_pairs(gold, pred)
    counts = dict.fromkeys(ERROR_KINDS, 0)
    for g, p in zip(gold, pred):
        for kind, _, _ in span_errors(entity_spans(g, strict), entity_spans(p, strict)):
            counts[kind] += 1
    return counts


def entity_confusion(
    gold: Sequence[Sequence[str]],
    pred: Sequence[Sequence[str]],
    types: Sequence[str] | None = None,
    strict: bool = False,
) -> tuple[list[str], torch.Tensor]:
    """(names, counts): an entity-type confusion matrix (K+1, K+1), names = types + ["O"].

    Row = gold type, column = predicted type, for entities with the same sentence, start and end
    in both; a gold entity no prediction has the boundaries of counts in column O (missed, or a
    boundary error), a predicted entity with no gold one of its boundaries in row O (spurious, or
    a boundary error). The diagonal holds the correct entities; cell (O, O) is 0. `types`
    defaults to those that occur, sorted.
    """
    import torch

    _check_pairs(gold, pred)
    g_spans = {(i, s, e): t for i, t, s, e in sentence_spans(gold, strict)}
    p_spans = {(i, s, e): t for i, t, s, e in sentence_spans(pred, strict)}
    if types is None:
        types = sorted(set(g_spans.values()) | set(p_spans.values()))
    names = [*types, OUTSIDE]
    index = {name: k for k, name in enumerate(names)}
    missing = sorted((set(g_spans.values()) | set(p_spans.values())) - set(types))
    if missing:
        raise ValueError(f"Entity types {missing} occur but are not in types={list(types)}.")
    counts = torch.zeros(len(names), len(names), dtype=torch.long)  # (K+1, K+1)
    for where in g_spans.keys() | p_spans.keys():
        counts[index[g_spans.get(where, OUTSIDE)], index[p_spans.get(where, OUTSIDE)]] += 1
    return names, counts


# --------------------------------------------------------------------------- fine-tuning runs

LABEL_RECIPES = ("first_subword", "all_subwords", "unaligned")


def _tags_of(data: Any) -> tuple[list[list[str]], list[list[int]]]:
    """(sentences, tag ids) of a `load_conll` dataset or of a (sentences, tag ids) pair."""
    if isinstance(data, tuple):
        sentences, tags = data
    else:
        sentences, tags = data["tokens"], data["ner_tags"]
    return [list(s) for s in sentences], [[int(t) for t in row] for row in tags]


def encode_examples(
    tokenizer: Any,
    data: Any,
    labels: Sequence[str],
    label_recipe: str = "first_subword",
    max_length: int = 128,
    pad_unaligned: bool = True,
) -> list[dict[str, list[int]]]:
    """Training examples (input_ids, labels) of a `load_conll` dataset or a (sentences, tag ids)
    pair.

    label_recipe: "first_subword" (the course: `tokenize_and_align`), "all_subwords" (every
    subword labelled, B-X continued as I-X) or "unaligned" (the seeds' recipe: word labels laid
    on token positions as they are, padded with O). With pad_unaligned (the seeds' whole recipe,
    `encode_seeds_recipe`) every row is max_length long, padding labelled O, with an
    attention_mask; without it each row keeps its own length (input_ids and as many labels), so
    the label mistake can be measured apart from the padding.
    """
    if label_recipe not in LABEL_RECIPES:
        raise ValueError(f"label_recipe={label_recipe!r}; choose one of {LABEL_RECIPES}.")
    sentences, tags = _tags_of(data)
    o_id = list(labels).index(OUTSIDE) if OUTSIDE in labels else 0
    if label_recipe == "unaligned" and pad_unaligned:
        enc = encode_seeds_recipe(tokenizer, sentences, tags, o_id=o_id, max_length=max_length)
        return [{"input_ids": i.tolist(), "attention_mask": a.tolist(), "labels": y.tolist()}
                for i, a, y in zip(enc["input_ids"], enc["attention_mask"], enc["labels"])]
    if label_recipe == "unaligned":
        ids = tokenize_and_align(tokenizer, sentences, max_length=max_length)["input_ids"]
        return [{"input_ids": i, "labels": (list(t) + [o_id] * len(i))[:len(i)]} for i, t in zip(ids, tags)]
    all_subwords = label_recipe == "all_subwords"
    enc = tokenize_and_align(tokenizer, sentences, tags, label_all_subwords=all_subwords,
                             b_to_i=b_to_i_ids(labels) if all_subwords else None, max_length=max_length)
    return [{"input_ids": i, "labels": y} for i, y in zip(enc["input_ids"], enc["labels"])]


def _stack_padded(examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Collate rows that are already padded to one length (the seeds' recipe): stack them, the
    attention mask included (0 on padding)."""
    import torch

    return {k: torch.tensor([list(e[k]) for e in examples], dtype=torch.long)  # (B, L)
            for k in ("input_ids", "attention_mask", "labels")}


def evaluate_ner(
    model: Any, tokenizer: Any, data: Any, labels: Sequence[str], max_length: int | None = None,
    batch_size: int = 64, device: Any = None, strict: bool = False,
) -> dict[str, float]:
    """Entity-level precision, recall, F1 (seqeval, micro), token accuracy and f1_<TYPE> of a
    token classifier on a `load_conll` dataset (or a (sentences, tag ids) pair), predicting one tag
    per word from its first subword (`predict_word_tags`): every word counts, also words cut off by
    truncation (predicted O)."""
    sentences, tags = _tags_of(data)
    gold = [[labels[t] for t in row] for row in tags]
    pred = predict_word_tags(model, tokenizer, sentences, labels, batch_size=batch_size,
                             max_length=max_length, device=device)
    return entity_metrics(gold, pred, strict)


@dataclass
class NerRun:
    """What `fine_tune_ner` returns. `history.eval` holds the dev evaluations (eval_f1, ...)."""

    model: Any
    history: Any                    # lm.train.History
    dev: dict[str, float]           # evaluate_ner on dev with the kept weights ({} without dev)
    steps: int                      # optimizer steps taken
    planned_steps: int              # steps the schedule was planned for
    best_step: int | None           # the step whose weights were kept (early stopping), else None
    seconds: float                  # training time, dev evaluations during training included
    train_seconds: float            # training steps alone (no evaluation)
    trainable: int                  # parameters the optimizer updated
    tokens: int                     # real (non-padding) tokens of the training batches seen
    padded_tokens: int              # token positions of those batches, padding included

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.train_seconds if self.train_seconds else 0.0

    @property
    def padding(self) -> float:
        return 1 - self.tokens / self.padded_tokens if self.padded_tokens else 0.0


def fine_tune_ner(
    model: Any,
    tokenizer: Any,
    train: Any,
    dev: Any,
    labels: Sequence[str],
    *,
    epochs: float = 3.0,
    max_steps: int | None = None,
    min_steps: int = 1,
    batch_size: int = 32,
    lr: float = 5e-5,
    weight_decay: float = 0.01,
    warmup: float = 0.1,
    max_length: int = 128,
    label_recipe: str = "first_subword",
    padding: str = "dynamic",
    group_by_length: bool = True,
    bf16: bool = False,
    n_evals: int = 0,
    max_eval_sentences: int | None = None,
    early_stopping: bool = True,
    patience: int = 2,
    seed: int | None = None,
    device: Any = None,
    progress: bool = False,
) -> NerRun:
    """Fine-tune a token classifier (a transformers ...ForTokenClassification, or any model that
    returns a loss and logits (B, T, C) for input_ids, attention_mask, labels) on NER data with the
    course Trainer, then score it on dev with `evaluate_ner`.

    `train` and `dev` are `load_conll` datasets or (sentences, tag ids) pairs with tag ids into
    `labels` (dev may be None: no evaluation, `dev` of the result is {}). The recipe's parts can each be switched to the seeds' choice, so a lesson or a
    benchmark can measure what each one buys:
    - label_recipe (`encode_examples`): "first_subword" (the course), "all_subwords", "unaligned";
    - padding: "dynamic" (each batch to its longest sentence) or "max_length" (every batch to
      `max_length` tokens); "unaligned" with "max_length" is the seeds' whole recipe (padding
      labelled O and counted in the loss);
    - group_by_length: batches of similar lengths (True) or a shuffled order;
    - bf16: bfloat16 autocast (pays on CPUs with bf16 instructions and on GPUs).
    AdamW with `weight_decay` (not on biases and LayerNorm), `warmup` (a share of the steps) then
    linear decay, for `epochs` passes (or max_steps). With n_evals > 0 the model is evaluated on
    dev (its first `max_eval_sentences`) n_evals times, the eval loss per labelled token; with
    early_stopping the run stops after `patience` evaluations without a better dev F1 and keeps
    the weights of the best one. Dev then serves to choose: report test. Only parameters with
    requires_grad train (LoRA, adapters). Dropout draws from torch's global generator: seed it
    before calling for a repeatable run.
    """
    import time

    from lmcourse.classification import LengthGroupedBatches, plan_steps
    from lmcourse.config import DEFAULT_SEED
    from lmcourse.mlm import predicted_ids
    from lmcourse.train import TrainConfig, Trainer

    if padding not in ("dynamic", "max_length"):
        raise ValueError(f"padding={padding!r}; choose 'dynamic' or 'max_length'.")
    seed = DEFAULT_SEED if seed is None else seed
    t0 = time.perf_counter()
    seeds = label_recipe == "unaligned" and padding == "max_length"  # the seeds' whole recipe
    examples = encode_examples(tokenizer, train, labels, label_recipe, max_length, pad_unaligned=seeds)
    if seeds:
        collate: Any = _stack_padded
    else:
        collate = TokenClassificationCollator.from_tokenizer(
            tokenizer, pad_to_multiple_of=max_length if padding == "max_length" else None)
    batches = LengthGroupedBatches(examples, collate, batch_size, seed, group_by_length=group_by_length)
    steps = plan_steps(len(examples), batch_size, epochs, min_steps, max_steps)
    if dev is None and n_evals > 0:
        raise ValueError("n_evals > 0 needs dev data to evaluate on.")
    dev_sentences, dev_tags = _tags_of(dev) if dev is not None else ([], [])
    if max_eval_sentences is not None:
        dev_sentences, dev_tags = dev_sentences[:max_eval_sentences], dev_tags[:max_eval_sentences]
    eval_data = None
    stop: dict[str, Any] = {}
    if n_evals > 0:
        eval_data = encode_examples(tokenizer, (dev_sentences, dev_tags), labels, "first_subword", max_length)
        stop["eval_every"] = max(1, -(-steps // n_evals))
        if early_stopping:
            stop.update(early_stopping_metric="eval_f1", early_stopping_mode="max",
                        early_stopping_patience=patience, restore_best=True)
    cfg = TrainConfig(max_steps=steps, batch_size=batch_size, eval_batch_size=64, lr=lr,
                      weight_decay=weight_decay, warmup_steps=round(warmup * steps), schedule="linear",
                      mixed_precision=bf16, progress=progress, seed=seed, **stop)
    trainer = Trainer(model, cfg, batches, eval_data,
                      collate_fn=TokenClassificationCollator.from_tokenizer(tokenizer),
                      metrics_fn=ner_metrics_fn(labels), preprocess_logits=predicted_ids, device=device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    eval_seconds = [0.0]
    evaluate = trainer.evaluate

    def timed_evaluate(*args: Any, **kwargs: Any) -> dict[str, float]:
        t = time.perf_counter()
        try:
            return evaluate(*args, **kwargs)
        finally:
            eval_seconds[0] += time.perf_counter() - t

    trainer.evaluate = timed_evaluate  # type: ignore[method-assign]
    t_train = time.perf_counter()
    history = trainer.train()
    train_seconds = time.perf_counter() - t_train - eval_seconds[0]
    seconds = time.perf_counter() - t0
    seen = [idx for epoch in range(steps // max(1, batches.steps_per_epoch()) + 1)
            for idx in batches.index_batches(epoch)][:trainer.state.step]
    real = sum(sum(examples[i]["attention_mask"]) if seeds else batches.lengths[i] for idx in seen for i in idx)
    width = (lambda idx: max_length) if padding == "max_length" \
        else (lambda idx: max(batches.lengths[i] for i in idx))
    padded = sum(len(idx) * width(idx) for idx in seen)
    scores = evaluate_ner(model, tokenizer, (dev_sentences, dev_tags), labels, max_length=max_length,
                          device=device) if dev_sentences else {}
    best = trainer.state.best_step if eval_data is not None and early_stopping else None
    return NerRun(model, history, scores, trainer.state.step, steps, best, seconds, train_seconds,
                  trainable, real, padded)
