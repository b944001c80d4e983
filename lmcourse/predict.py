"""Serving a token classifier (lesson 08): raw text in, entities with character offsets out.

Training and evaluation (lesson 07) read pre-split CoNLL sentences; a deployed model gets raw
text. `NerPredictor` closes the gap in five steps:

1. tokenize the raw text with a fast tokenizer, keeping each token's character offsets
   (`return_offsets_mapping=True`) and its word (`encoding.word_ids()`: the words are the model's
   own pre-tokenizer's, so "U.S." is four words for BERT, as it was for the pipeline it is
   compared with);
2. split a text longer than the model's window into overlapping windows (`stride` tokens of
   overlap) and batch the windows of all texts, sorted by length, with dynamic padding;
3. run the model (eval mode, no gradients) and turn each token's logits into probabilities;
4. give each word the prediction of its FIRST subword (tag = argmax, score = its probability), as
   training labelled it (`lmcourse.ner.align_labels`). A word that several windows hold takes the
   prediction of the window where its first subword is farthest from the window's edges (the
   most tokens of context on its poorer side); ties go to the earlier window;
5. `aggregate_spans` reads the entities from the word tags (the decoding policy of
   `lmcourse.ner.entity_spans`) and gives each its character span, its text and the mean score
   of its words: what `transformers.pipeline("token-classification",
   aggregation_strategy="first")` returns (tests/test_predict.py checks equality).

torch and transformers are imported inside the functions that need them, so that loading this
module stays free of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmcourse import ner

if TYPE_CHECKING:
    import torch

WordPredictions = tuple[list[str], list[float], list[tuple[int, int]]]  # tags, scores, offsets


@dataclass(frozen=True)
class Entity:
    """One entity found in a text: text[start:end] (character offsets, end exclusive) is `text`;
    `score` is the mean of its words' scores (each the probability of the word's predicted tag)."""

    type: str
    start: int
    end: int
    text: str
    score: float


def aggregate_spans(
    word_tags: Sequence[str],
    word_scores: Sequence[float],
    word_offsets: Sequence[tuple[int, int]],
    text: str,
) -> list[Entity]:
    """The entities of one text from its words' predictions, in text order.

    `word_tags` holds one IOB2 tag per word ("B-PER", "I-PER", "O"), `word_scores` the probability
    of each word's tag, `word_offsets` each word's (start, end) character offsets in `text` (end
    exclusive). Words form entities as in `lmcourse.ner.entity_spans` (lenient: `B-X` starts an
    entity, `I-X` continues one of type X, a stray `I-X` starts one). An entity runs from its first
    word's start to its last word's end, its text is sliced from `text` (never rebuilt from the
    words: the spaces between them are the text's own), and its score is the mean of its words'
    scores (the pipeline's aggregation_strategy="first"):

    aggregate_spans(["B-PER", "I-PER", "O"], [0.9, 0.7, 0.99], [(0, 4), (6, 11), (12, 15)],
    "Hans  Meyer met") is [Entity("PER", 0, 11, "Hans  Meyer", 0.8)].
    """
    n = len(word_tags)
    if len(word_scores) != n or len(word_offsets) != n:
        raise ValueError(f"{n} word tags, {len(word_scores)} scores and {len(word_offsets)} offsets: "
                         "pass one tag, one score and one (start, end) per word.")
    for i, (start, end) in enumerate(word_offsets):
        if not 0 <= start <= end <= len(text):
            raise ValueError(f"Word {i} has offsets ({start}, {end}), outside the text of "
                             f"{len(text)} characters: pass offsets into this text.")
    out: list[Entity] = []
    for kind, first, stop in ner.entity_spans(word_tags):  # words first .. stop - 1
        start, end = int(word_offsets[first][0]), int(word_offsets[stop - 1][1])
        score = sum(float(s) for s in word_scores[first:stop]) / (stop - first)
        out.append(Entity(kind, start, end, text[start:end], score))
    return out


# --------------------------------------------------------------------------- the predictor

_NO_LIMIT = 1_000_000  # tokenizers without a limit report model_max_length as a huge number


def _default_window(model: Any, tokenizer: Any) -> int:
    """The longest input the model takes: the smaller of its max_position_embeddings and the
    tokenizer's model_max_length (RoBERTa's 514 positions hold 512 tokens; its tokenizer says 512)."""
    limits = []
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        limits.append(positions)
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < _NO_LIMIT:
        limits.append(tokenizer_limit)
    if not limits:
        raise ValueError("Neither the model's config (max_position_embeddings) nor the tokenizer "
                         "(model_max_length) says how long an input may be: pass max_length=.")
    return min(limits)


def top_label(logits: torch.Tensor) -> tuple[Any, Any]:
    """Each token's most probable label id and its softmax probability, as numpy arrays (B, T),
    from logits (B, T, C) on any device.

    The probability of the top label is 1 / sum_c exp(l_c - l_max): the softmax's numerator is 1
    there. Computed in numpy, on the CPU: the arrays are small ((16, 40, 9) for a CoNLL batch), and
    a torch operation on them would wake torch's thread pool between ONNX Runtime's calls, which
    on a 2-core machine cost as much time as a quarter of the model's forward pass (measured).
    """
    import numpy as np

    x = logits.detach().float().cpu().numpy()                     # (B, T, C)
    labels = x.argmax(-1)                                         # (B, T)
    top = np.take_along_axis(x, labels[..., None], -1)            # (B, T, 1)
    scores = 1.0 / np.exp(x - top).sum(-1)                        # (B, T)
    return labels, scores


def model_labels(model: Any) -> list[str]:
    """The model's labels in id order (config.id2label), each checked to be a BIO tag."""
    id2label = getattr(getattr(model, "config", None), "id2label", None)
    if not id2label:
        raise ValueError("The model has no config.id2label: load it with "
                         "from_pretrained(..., id2label={0: 'O', 1: 'B-PER', ...}, label2id=...).")
    labels = [str(id2label[i]) for i in sorted(int(k) for k in id2label)]
    try:
        for label in labels:
            ner.split_tag(label)
    except ValueError as e:
        raise ValueError(f"The model's labels {labels[:5]}{' ...' if len(labels) > 5 else ''} are not "
                         f"BIO tags ({e}) Load it with id2label= and label2id= that name the tags "
                         "(e.g. lm.data.CONLL2003_LABELS).") from None
    return labels


class NerPredictor:
    """Named entities of raw texts from a token classifier: `predict("...")` -> [Entity, ...].

    `model` is a transformers ...ForTokenClassification (anything that takes input_ids and
    attention_mask (B, T) and returns logits (B, T, C)) whose config.id2label names BIO tags;
    `tokenizer` its FAST tokenizer (offsets and word ids come from it). The predictor loads
    nothing (`from_pretrained` does). Texts are cut into windows of at most `max_length` tokens,
    special tokens included (default: the model's limit, `_default_window`), overlapping by
    `stride` tokens; windows are batched `batch_size` at a time, sorted by length, and run on
    `device` (default: the course's, `lm.get_device()`).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        device: str | torch.device | None = None,
        batch_size: int = 16,
        max_length: int | None = None,
        stride: int = 32,
    ) -> None:
        from lmcourse import config

        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("NerPredictor needs a fast tokenizer (it reads character offsets and "
                             "word ids): load it with AutoTokenizer.from_pretrained(folder) "
                             "(fast by default), not a slow/legacy tokenizer class.")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}; it must be at least 1.")
        self.model, self.tokenizer = model, tokenizer
        self.labels = model_labels(model)
        self.max_length = _default_window(model, tokenizer) if max_length is None else int(max_length)
        content = self.max_length - tokenizer.num_special_tokens_to_add(pair=False)
        if content < 1:
            raise ValueError(f"max_length={self.max_length} leaves no room for text next to the "
                             "special tokens ([CLS], [SEP]): pass a larger max_length.")
        if not 0 <= stride < content:
            raise ValueError(f"stride={stride}: the overlap of two windows must be at least 0 and "
                             f"smaller than a window's {content} text tokens (max_length="
                             f"{self.max_length} minus the special tokens); pass a smaller stride.")
        self.stride = int(stride)
        self.batch_size = int(batch_size)
        self.device = config.get_device(device)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device | None = None,
                        **kwargs: Any) -> NerPredictor:
        """A predictor for a saved token classifier: the model (AutoModelForTokenClassification,
        or `lm.compress.load_pruned` when config.json records pruned heads; safetensors weights
        only: nothing is unpickled) and its fast tokenizer (AutoTokenizer) from
        `folder`; `kwargs` (batch_size, max_length, stride) go to the constructor."""
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        path = Path(folder).expanduser()
        if path.is_dir() and not any(path.glob("*.safetensors")):
            raise ValueError(f"{path} holds no .safetensors weights, and the predictor never loads "
                             "pickled ones (.bin, .pt: loading them can run code). Save the model "
                             "with model.save_pretrained(folder), which writes model.safetensors.")
        import json

        config_file = path / "config.json"
        settings = json.loads(config_file.read_text()) if config_file.is_file() else {}
        if settings.get("pruned_heads"):  # heads removed by lm.compress.prune_heads: its loader
            from lmcourse.compress import load_pruned

            model = load_pruned(path)
        else:
            model = AutoModelForTokenClassification.from_pretrained(str(path), use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        return cls(model, tokenizer, device=device, **kwargs)

    def predict(self, texts: str | Sequence[str]) -> list[Entity] | list[list[Entity]]:
        """The entities of a text (a list of Entity), or of each text of a list (a list of lists,
        in the input order). An empty text has none."""
        single = isinstance(texts, str)
        rows = [texts] if single else self._texts(texts)
        out = [aggregate_spans(tags, scores, offsets, text)
               for text, (tags, scores, offsets) in zip(rows, self.predict_words(rows))]
        return out[0] if single else out

    @staticmethod
    def _texts(texts: Any) -> list[str]:
        if not isinstance(texts, (list, tuple)):
            raise ValueError(f"predict takes a str or a list of str, not {type(texts).__name__}.")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"Text {i} is {type(text).__name__}, not str: predict takes raw "
                                 "text; join pre-split words first (' '.join(words)).")
        return list(texts)

    def predict_words(self, texts: Sequence[str]) -> list[WordPredictions]:
        """For each text, what `aggregate_spans` reads: (tags, scores, offsets), one entry per word
        of the model's pre-tokenizer, each word's from its first subword in the window where that
        subword is farthest from the window's edges (ties: the earlier window)."""
        import torch

        from lmcourse.ner import TokenClassificationCollator
        from lmcourse.train import get_logits

        texts = self._texts(texts)
        if not texts:
            return []
        enc = self.tokenizer(texts, return_offsets_mapping=True, truncation=True,
                             max_length=self.max_length, stride=self.stride,
                             return_overflowing_tokens=True)
        windows = list(range(len(enc["input_ids"])))
        owner = list(enc["overflow_to_sample_mapping"])  # the text each window comes from
        word_ids = [enc.word_ids(w) for w in windows]    # word indices of the whole text
        offsets = [[tuple(o) for o in enc["offset_mapping"][w]] for w in windows]
        keys = [k for k in ("input_ids", "token_type_ids") if k in enc]

        # each word's span: its first subword's start to its last subword's end, in any window
        spans: list[dict[int, list[int]]] = [{} for _ in texts]
        for w in windows:
            for wid, (a, b) in zip(word_ids[w], offsets[w]):
                if wid is not None:
                    span = spans[owner[w]].setdefault(wid, [a, b])
                    span[0], span[1] = min(span[0], a), max(span[1], b)
        # best[text][word] = (context, -window, window, position), the largest wins: the window
        # where the word's first token there is farthest from an edge, ties to the earlier window.
        # That first token is the word's first subword, except where a window begins inside the
        # word; such a token has context 0, and the earlier window that holds the first subword
        # has at least as much, so it never wins. (The text's own start and end need no exception
        # either: the first window gives every token more tokens before it than any other window,
        # the last window more after it.)
        best: list[dict[int, tuple[int, int, int, int]]] = [{} for _ in texts]
        for w in windows:
            i = owner[w]
            content = [p for p, wid in enumerate(word_ids[w]) if wid is not None]
            seen: set[int] = set()
            for p in content:
                wid = word_ids[w][p]
                if wid in seen:
                    continue  # a later subword of a word this window holds already
                seen.add(wid)
                candidate = (min(p - content[0], content[-1] - p), -w, w, p)
                if wid not in best[i] or candidate > best[i][wid]:
                    best[i][wid] = candidate

        needed = sorted({c[2] for words in best for c in words.values()}, key=lambda w: len(word_ids[w]))
        # window -> each token's predicted label id and its probability, as lists (T_w,)
        predicted: dict[int, tuple[list[int], list[float]]] = {}
        if needed:
            collate = TokenClassificationCollator.from_tokenizer(self.tokenizer)
            was_training = self.model.training
            self.model.to(self.device)
            self.model.eval()
            try:
                with torch.no_grad():
                    for start in range(0, len(needed), self.batch_size):
                        rows = needed[start:start + self.batch_size]
                        batch = collate([{k: enc[k][w] for k in keys} for w in rows])
                        batch = {k: v.to(self.device) for k, v in batch.items()}
                        logits = get_logits(self.model(**batch))               # (b, T, C)
                        labels, scores = top_label(logits)                     # (b, T) each
                        for lab, sc, w in zip(labels, scores, rows):
                            n = len(word_ids[w])
                            predicted[w] = (lab[:n].tolist(), sc[:n].tolist())
            finally:
                self.model.train(was_training)

        out: list[WordPredictions] = []
        for i in range(len(texts)):
            tags: list[str] = []
            scores: list[float] = []
            spans_out: list[tuple[int, int]] = []
            for wid in sorted(best[i]):
                _, _, w, p = best[i][wid]
                tags.append(self.labels[predicted[w][0][p]])
                scores.append(predicted[w][1][p])
                spans_out.append((int(spans[i][wid][0]), int(spans[i][wid][1])))
            out.append((tags, scores, spans_out))
        return out


# --------------------------------------------------------------------------- saving for serving


def model_card(
    name: str,
    labels: Sequence[str],
    base_model: str,
    data: str,
    metrics: dict[str, dict[str, float]] | None = None,
    limits: Sequence[str] = (),
) -> str:
    """A model card (README.md) for a saved NER model: what it is, what it was trained on, how well
    it does, and where it fails. Whoever serves or reuses the model reads this file, not the
    notebook it came from, so the numbers and the limits travel with the weights.

    `metrics` maps a split name to its scores, e.g. {"test": {"f1": 0.87, "precision": ...}};
    `limits` are sentences such as "trained on 1990s Reuters news; expect lower F1 on tweets".
    """
    types = sorted(ner.entity_types(labels))
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: token-classification",
        f"base_model: {base_model}",
        "tags: [ner, lmcourse]",
        "---",
        "",
        f"# {name}",
        "",
        f"A token classifier for named entities ({', '.join(types) or 'no entity types'}), "
        f"fine-tuned from `{base_model}` in lesson 07 of lmcourse.",
        "",
        "## Data",
        "",
        data,
        "",
        "## Labels",
        "",
        f"{len(labels)} tags in id order: " + ", ".join(f"`{label}`" for label in labels) + ".",
        "",
        "## Metrics",
        "",
    ]
    if metrics:
        names = sorted({k for scores in metrics.values() for k in scores})
        lines += ["| split | " + " | ".join(names) + " |",
                  "|---|" + "---|" * len(names)]
        for split, scores in metrics.items():
            cells = [f"{scores[k]:.4f}" if k in scores else "" for k in names]
            lines.append(f"| {split} | " + " | ".join(cells) + " |")
        lines.append("")
        lines.append("Entity-level scores (seqeval, exact span and type) unless the name says "
                     "otherwise.")
    else:
        lines.append("Not measured.")
    lines += ["", "## Limits", ""]
    lines += [f"- {limit}" for limit in limits] or ["- None recorded."]
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from lmcourse.predict import NerPredictor",
        "predictor = NerPredictor.from_pretrained(folder)   # safetensors only, never pickles",
        'predictor.predict("Angela Merkel visited Paris.")',
        "```",
        "",
        "or serve it: `lmcourse serve FOLDER`.",
        "",
    ]
    return "\n".join(lines)


def save_ner_model(model: Any, tokenizer: Any, folder: str | Path, card: str | None = None) -> Path:
    """Save a token classifier for serving, atomically: config.json (with id2label), the weights as
    model.safetensors (a format that holds tensors only: loading it runs no code, unlike a pickled
    .bin), the tokenizer, and the model card `card` as README.md. `NerPredictor.from_pretrained`
    and `transformers.AutoModelForTokenClassification.from_pretrained` load the folder."""
    from lmcourse.checkpoints import atomic_save_dir

    model_labels(model)  # refuse a model whose labels are not BIO tags before writing anything

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)  # safetensors: transformers 5 writes no other format
        tokenizer.save_pretrained(tmp)
        if card is not None:
            (tmp / "README.md").write_text(card, encoding="utf-8")

    return atomic_save_dir(Path(folder), write)


# --------------------------------------------------------------------------- scoring raw-text output


def join_words(words: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """A pre-split sentence as the raw text a service receives (words joined by one space) and
    each word's (start, end) character offsets in it."""
    offsets, pos = [], 0
    for w in words:
        offsets.append((pos, pos + len(w)))
        pos += len(w) + 1
    return " ".join(words), offsets


def tags_from_entities(entities: Sequence[Entity], word_offsets: Sequence[tuple[int, int]]) -> list[str]:
    """IOB2 tags of the given words from entities with character offsets: a word that overlaps an
    entity gets its type (B- on the first such word, I- on the rest); other words get O. This is
    how entities predicted on raw text are scored against word-level gold tags (CoNLL's words are
    not always the model's: "U.S." is one CoNLL word and four BERT pre-tokenizer words)."""
    tags = ["O"] * len(word_offsets)
    for e in entities:
        inside = [i for i, (a, b) in enumerate(word_offsets) if a < e.end and e.start < b]
        for k, i in enumerate(inside):
            if tags[i] == "O":  # an earlier entity keeps a word both overlap
                tags[i] = ("B-" if k == 0 else "I-") + e.type
    return tags


def raw_text_scores(
    found: Sequence[Sequence[Entity]], sentences: Sequence[Sequence[str]],
    gold: Sequence[Sequence[str]],
) -> dict[str, float]:
    """Entity-level scores (seqeval, as `lm.ner.entity_metrics`) of entities predicted on raw text:
    `found[i]` holds the entities (Entity-like: type, start, end) of sentence i's words joined into
    raw text by `join_words` (what `NerPredictor.predict` returns for those texts). They are read
    back as word tags (`tags_from_entities`) and compared with `gold` (tag strings)."""
    if len(found) != len(sentences):
        raise ValueError(f"{len(found)} entity lists for {len(sentences)} sentences: predict on "
                         "[join_words(s)[0] for s in sentences], one list per sentence.")
    pred = [tags_from_entities(ents, join_words(words)[1]) for ents, words in zip(found, sentences)]
    return ner.entity_metrics([list(g) for g in gold], pred)


def pipeline_entities(pipe: Any, texts: Sequence[str], batch_size: int = 16) -> list[list[Entity]]:
    """The entities of each text from a transformers `pipeline("token-classification",
    aggregation_strategy=...)`, as Entity objects, so that the pipeline and the predictor are
    scored and compared the same way. The text of each entity is sliced from the input (the
    pipeline's own `word` is rebuilt from tokens: lower-cased by an uncased tokenizer)."""
    out = pipe(list(texts), batch_size=batch_size)
    return [[Entity(r["entity_group"], int(r["start"]), int(r["end"]), t[int(r["start"]):int(r["end"])],
                    float(r["score"])) for r in rows] for t, rows in zip(texts, out)]


# --------------------------------------------------------------------------- lesson 07's model

# The main run of lesson 07 (section 8) in each mode: sentences of train/dev/test used (None: all),
# and the settings passed to lm.ner.fine_tune_ner. tests/test_predict.py checks that they equal the
# lesson's parameters cell, so lesson 08 rebuilds the same model when lesson 07's is missing.
LESSON07_MAIN_RUN: dict[str, dict[str, Any]] = {
    "smoke": dict(n_train=64, n_dev=48, n_test=48, batch_size=8, max_length=128, lr=1e-4,
                  main_epochs=1, n_evals=1, patience=2, online_encoder=False),
    "quick": dict(n_train=None, n_dev=None, n_test=None, batch_size=32, max_length=128, lr=1e-4,
                  main_epochs=1, n_evals=2, patience=2, online_encoder=False),
    "full": dict(n_train=None, n_dev=None, n_test=None, batch_size=32, max_length=128, lr=5e-5,
                 main_epochs=3, n_evals=3, patience=2, online_encoder=True),
}


def default_model_dir(mode: str) -> Path:
    """Where lesson 07 saves its fine-tuned NER model and lesson 08 looks for it."""
    from lmcourse.config import cache_dir

    return cache_dir() / "models" / f"ner-{mode}"


def ner_card(encoder_name: str, labels: Sequence[str], n_train: int, data_note: str,
             metrics: dict[str, dict[str, float]]) -> str:
    """The model card of lesson 07's model (`model_card` with the lesson's data and limits)."""
    limits = [
        "Trained on Reuters news from 1996-97 (CoNLL-2003): expect lower scores on other "
        "genres (social media, medicine, law) and on names that became common later.",
        "Four types only (PER, ORG, LOC, MISC); anything else is not found.",
        "Metrics are exact-match entity F1 (seqeval); a wrong boundary counts as a miss and a "
        "false alarm.",
    ]
    if "MiniLM" in encoder_name:
        limits.append("The encoder (all-MiniLM-L6-v2) is uncased and tuned for sentence "
                      "embeddings: capital letters, a strong cue for names, are lost; a cased "
                      "BERT scores higher.")
    return model_card(f"NER ({encoder_name}, CoNLL-2003)", labels, base_model=encoder_name,
                      data=f"{n_train:,} training sentences. {data_note}", metrics=metrics,
                      limits=limits)


def load_or_fine_tune(
    folder: str | Path | None = None,
    mode: str = "quick",
    seed: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> tuple[Path, str]:
    """(folder, where it came from) of lesson 07's fine-tuned NER model, ready for
    `NerPredictor.from_pretrained(folder)`.

    The folder (default `default_model_dir(mode)`) is used as it is when it holds a saved token
    classifier (config.json and model.safetensors). Otherwise lesson 07's main run
    (`LESSON07_MAIN_RUN[mode]`: the pretrained encoder, CoNLL-2003 train, early stopping on dev) is
    run first and its model saved there with a model card giving dev and test F1 (`save_ner_model`).
    """
    from lmcourse import classification, config, data
    from lmcourse.config import DEFAULT_SEED

    folder = Path(folder).expanduser() if folder is not None else default_model_dir(mode)
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder, f"loaded from {folder}"
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    r = LESSON07_MAIN_RUN[mode]
    seed = DEFAULT_SEED if seed is None else seed

    def first(ds: Any, n: int | None) -> Any:
        return ds if n is None else ds.select(range(min(n, len(ds))))

    train_all = data.load_conll("train", quiet=True)
    train = first(train_all, r["n_train"])
    dev = first(data.load_conll("validation", quiet=True), r["n_dev"])
    test = first(data.load_conll("test", quiet=True), r["n_test"])
    labels = train.features["ner_tags"].feature.names
    id2label, label2id = classification.label_maps(labels)
    source, name = classification.pretrained_encoder(online=r["online_encoder"],
                                                     model_id=classification.ONLINE_CASED_ENCODER)
    tokenizer = AutoTokenizer.from_pretrained(source)
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a new head on a pretrained encoder is expected: no report
    try:
        config.seed_everything(seed)  # the new classification head starts at random
        model = AutoModelForTokenClassification.from_pretrained(
            source, num_labels=len(labels), id2label=id2label, label2id=label2id)
    finally:
        hf_logging.set_verbosity(verbosity)
    config.seed_everything(seed)
    run = ner.fine_tune_ner(model, tokenizer, train, dev, labels, epochs=r["main_epochs"], lr=r["lr"],
                            batch_size=r["batch_size"], max_length=r["max_length"],
                            bf16=config.bf16_pays(config.get_device(device)), n_evals=r["n_evals"],
                            patience=r["patience"], seed=seed, device=device, progress=progress)
    test_scores = ner.evaluate_ner(run.model, tokenizer, test, labels, device=device)
    card = ner_card(name, labels, len(train), train_all.info.description or "",
                    {"dev": {k: run.dev[k] for k in ("precision", "recall", "f1")},
                     "test": {k: test_scores[k] for k in ("precision", "recall", "f1")}})
    save_ner_model(run.model, tokenizer, folder, card=card)
    return folder, f"fine-tuned with lesson 07's recipe ({run.steps} steps, test F1 " \
                   f"{test_scores['f1']:.4f}) and saved to {folder}"
