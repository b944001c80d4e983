"""Text classification (lesson 06a, sentiment on SST-2): the confusion matrix and the metrics read
from it, pooling an encoder's token vectors into one sentence vector, a bag-of-words logistic
regression baseline that a fine-tuned encoder has to beat, and fine-tuning a pretrained encoder:
sentences to padded batches, a pooled classifier head, metrics for the course Trainer, prediction.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmcourse import config
from lmcourse.batching import epoch_order
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
    support, predicted = cm.sum(dim=1), cm.sum(dim=0)   # (C,) true counts, (C,) predicted counts
    precision, recall = _ratio(tp, predicted), _ratio(tp, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
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


def pad_rows(rows: Sequence[Sequence[int]], value: int, multiple_of: int | None = None) -> torch.Tensor:
    """Right-pad lists of ids to the longest (rounded up to a multiple of `multiple_of`): (B, T)."""
    t = max(len(r) for r in rows)
    if multiple_of:
        t = (t + multiple_of - 1) // multiple_of * multiple_of
    out = torch.full((len(rows), t), value, dtype=torch.long)  # (B, T)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.as_tensor(r, dtype=torch.long)
    return out


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
        if tokenizer.pad_token_id is None:
            raise ValueError("The tokenizer has no padding token; set tokenizer.pad_token first.")
        return cls(pad_token_id=tokenizer.pad_token_id, **kwargs)

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("ClassificationCollator got an empty list of examples.")
        ids = [list(map(int, e["input_ids"])) for e in examples]
        m = self.pad_to_multiple_of
        batch = {"input_ids": pad_rows(ids, self.pad_token_id, m),              # (B, T)
                 "attention_mask": pad_rows([[1] * len(r) for r in ids], 0, m)}  # (B, T)
        for key in ("token_type_ids", "labels"):
            has = [key in e for e in examples]
            if any(has) and not all(has):
                raise ValueError(f"Some examples have {key} and some do not; encode them alike.")
            if all(has):
                if key == "labels":
                    batch["labels"] = torch.tensor([int(e["labels"]) for e in examples])  # (B,)
                else:
                    batch[key] = pad_rows([e[key] for e in examples], 0, m)  # (B, T)
        return batch


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
