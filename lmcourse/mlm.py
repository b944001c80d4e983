"""Lesson 05b, masked-language-model pretraining: BERT's 80/10/10 masking rule, a collator for the
course's `Trainer`, masked-token accuracy, a small `transformers.BertForMaskedLM`, news-domain
training sentences (CoNLL-2003, with an offline stand-in), fill-in-the-blank predictions, and
saving the pretrained model in `transformers` format where the fine-tuning lessons find it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmcourse import config, data
from lmcourse.batching import epoch_generator
from lmcourse.checkpoints import atomic_save_dir
from lmcourse.lm_math import IGNORE_INDEX

MLM_PROBABILITY = 0.15     # BERT: predict 15% of the tokens
MASK_SHARE = 0.8           # of the selected tokens: 80% become [MASK] ...
RANDOM_SHARE = 0.1         # ... 10% a random token, and the remaining 10% stay unchanged
DEFAULT_CHECKPOINT = "bert-mlm-conll"  # the folder name the fine-tuning lessons load

Example = Mapping[str, Any]  # {"input_ids": list[int] or 1-D tensor, optional "labels": ...}


# --------------------------------------------------------------------------- the masking rule


def mask_tokens(
    input_ids: torch.Tensor,
    special_tokens_mask: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
    mlm_probability: float = MLM_PROBABILITY,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking rule: (masked_input_ids, labels), both shaped like `input_ids`.

    Each position not marked in `special_tokens_mask` ([CLS], [SEP], padding) is selected with
    probability `mlm_probability`. Labels hold the original token at selected positions and -100
    elsewhere. Of the selected tokens 80% become `mask_token_id`, 10% a token drawn uniformly from
    range(vocab_size), 10% stay as they are (the same draws as transformers'
    DataCollatorForLanguageModeling). The inputs are not modified.
    """
    shape = input_ids.shape
    probs = torch.full(shape, float(mlm_probability))
    probs.masked_fill_(special_tokens_mask.bool().cpu(), 0.0)
    selected = torch.bernoulli(probs, generator=generator).bool().to(input_ids.device)
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    # 80% of the selected -> [MASK]
    to_mask = torch.bernoulli(torch.full(shape, MASK_SHARE), generator=generator).bool()
    to_mask = to_mask.to(input_ids.device) & selected
    # half of the remaining 20% -> a random token; the other half keeps the original
    half = RANDOM_SHARE / (1.0 - MASK_SHARE)
    to_random = torch.bernoulli(torch.full(shape, half), generator=generator).bool()
    to_random = to_random.to(input_ids.device) & selected & ~to_mask
    random_ids = torch.randint(vocab_size, shape, generator=generator, dtype=input_ids.dtype)
    masked = torch.where(to_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    masked = torch.where(to_random, random_ids.to(input_ids.device), masked)
    return masked, labels


def masking_statistics(input_ids: torch.Tensor, special_tokens_mask: torch.Tensor,
                       masked: torch.Tensor, labels: torch.Tensor, mask_token_id: int,
                       vocab_size: int) -> dict[str, float]:
    """What a masking did, as rates (what the lesson's check and the tests compare):

    - `selected_rate`: labelled positions (label != -100) / ordinary positions (~0.15);
    - `mask_share`, `random_share`, `unchanged_share`: of the labelled positions, the fraction that
      became [MASK], another token, or stayed the same (~0.8, 0.1, 0.1);
    - `labels_are_originals`: of the labelled positions, the fraction whose label is the original
      token (1.0);
    - `specials_selected`: special and padding positions that got a label or changed (0.0);
    - `unlabelled_changed`: ordinary positions without a label whose input changed (0.0);
    - `random_id_mean`: mean of the random replacement ids / vocab_size (~0.5: uniform over the
      vocabulary).
    """
    special = special_tokens_mask.bool()
    sel = labels != IGNORE_INDEX
    ordinary = ~special
    n_sel = max(int((sel & ordinary).sum()), 1)
    is_mask = masked == mask_token_id
    same = masked == input_ids
    rand = sel & ~is_mask & ~same & ordinary
    special_touched = special & (sel | ~same)
    return {
        "selected_rate": float((sel & ordinary).sum()) / max(int(ordinary.sum()), 1),
        "mask_share": float((sel & ordinary & is_mask).sum()) / n_sel,
        "random_share": float(rand.sum()) / n_sel,
        "unchanged_share": float((sel & ordinary & same).sum()) / n_sel,
        "labels_are_originals": float((sel & ordinary & (labels == input_ids)).sum()) / n_sel,
        "specials_selected": float(special_touched.sum()) / max(int(special.sum()), 1),
        "unlabelled_changed": float((~sel & ordinary & ~same).sum())
                              / max(int((~sel & ordinary).sum()), 1),
        "random_id_mean": float(masked[rand].double().mean()) / vocab_size if rand.any() else 0.0,
    }


def special_tokens_mask_of(input_ids: torch.Tensor, special_ids: Sequence[int]) -> torch.Tensor:
    """True where `input_ids` holds one of `special_ids` ([PAD], [CLS], [SEP], ...)."""
    return torch.isin(input_ids, torch.tensor(sorted(set(special_ids)), dtype=input_ids.dtype,
                                              device=input_ids.device))


# --------------------------------------------------------------------------- accuracy


def masked_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of the labelled positions (label != -100) where argmax(logits) is the label.

    `logits`: (..., V); `labels`: (...). With no labelled position the accuracy is 0.0.
    """
    keep = labels != IGNORE_INDEX
    n = int(keep.sum())
    if n == 0:
        return 0.0
    pred = logits.argmax(dim=-1)  # (...)
    return float((pred[keep] == labels[keep]).sum()) / n


def predicted_ids(logits: torch.Tensor, batch: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The Trainer's `preprocess_logits`: keep the argmax ids (B, T), not the logits (B, T, V), of
    each evaluation batch, so a large held-out set costs kilobytes instead of gigabytes."""
    return logits.argmax(dim=-1)


def mlm_metrics(logits: list[torch.Tensor], batches: list[Mapping[str, torch.Tensor]]) -> dict[str, float]:
    """The Trainer's `metrics_fn`: masked-token accuracy pooled over all evaluation batches.

    Each item of `logits` is a batch's logits (B, T, V) or already its predicted ids (B, T), as
    `predicted_ids` keeps them."""
    correct, total = 0, 0
    for lg, batch in zip(logits, batches, strict=True):
        labels = batch["labels"].to(lg.device)
        pred = lg if lg.dim() == labels.dim() else lg.argmax(-1)  # (B, T)
        keep = labels != IGNORE_INDEX
        correct += int((pred[keep] == labels[keep]).sum())
        total += int(keep.sum())
    return {"masked_accuracy": correct / max(total, 1)}


def context_free_baselines(examples: Sequence[Example], most_frequent_id: int,
                           mask_token_id: int) -> dict[str, float]:
    """Masked-token accuracy of two guessers that ignore the context, on pre-masked examples:

    - `most_frequent`: always the most frequent token of the training text;
    - `copy_visible`: the token shown at the position when it is not [MASK] (right for the 10% of
      labelled positions left unchanged, wrong for the 10% replaced at random), else the most
      frequent token. Anything a model scores above this it learned from the context.
    """
    shown = torch.tensor([i for e in examples for i in e["input_ids"]])  # (N,)
    labels = torch.tensor([i for e in examples for i in e["labels"]])  # (N,)
    keep = labels != IGNORE_INDEX
    shown, labels = shown[keep], labels[keep]
    n = max(int(keep.sum()), 1)
    copy = torch.where(shown == mask_token_id, torch.full_like(shown, most_frequent_id), shown)
    return {"most_frequent": int((labels == most_frequent_id).sum()) / n,
            "copy_visible": int((copy == labels).sum()) / n}


# --------------------------------------------------------------------------- collator


@dataclass
class MLMCollator:
    """Pads a list of examples into a batch and masks it with `mask_tokens` (a Trainer collate_fn).

    Each example is a dict with "input_ids" (a list of ids with [CLS] ... [SEP]). The batch holds
    input_ids (B, T), attention_mask (B, T) and labels (B, T); T is the longest example, rounded up
    to a multiple of `pad_to_multiple_of` if set. Examples that already carry "labels" (a fixed,
    pre-masked evaluation set from `fixed_masks`) are only padded, not masked again.
    Randomness comes from `generator`, else torch's global generator (which the Trainer's
    checkpoints save, so a resumed run masks exactly as a straight one).
    """

    pad_token_id: int
    mask_token_id: int
    vocab_size: int
    special_token_ids: Sequence[int]
    mlm_probability: float = MLM_PROBABILITY
    pad_to_multiple_of: int | None = None
    generator: torch.Generator | None = None

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, **kwargs: Any) -> MLMCollator:
        """A collator with the pad/mask ids, vocabulary size and special ids of a transformers tokenizer."""
        if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("The tokenizer needs a [MASK] and a [PAD] token for masked-LM training.")
        return cls(pad_token_id=tokenizer.pad_token_id, mask_token_id=tokenizer.mask_token_id,
                   vocab_size=len(tokenizer), special_token_ids=list(tokenizer.all_special_ids),
                   **kwargs)

    def pad(self, rows: list[Sequence[int]], value: int) -> torch.Tensor:
        """Right-pad lists of ids to one length: (B, T)."""
        t = max(len(r) for r in rows)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            t = (t + m - 1) // m * m
        out = torch.full((len(rows), t), value, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, :len(r)] = torch.as_tensor(r, dtype=torch.long)
        return out

    def __call__(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("MLMCollator got an empty list of examples.")
        ids = [list(map(int, e["input_ids"])) for e in examples]
        input_ids = self.pad(ids, self.pad_token_id)  # (B, T)
        attention_mask = self.pad([[1] * len(r) for r in ids], 0)  # (B, T)
        has_labels = ["labels" in e for e in examples]
        if all(has_labels):
            labels = self.pad([list(map(int, e["labels"])) for e in examples], IGNORE_INDEX)
            return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if any(has_labels):
            raise ValueError("Some examples carry labels and some do not; mix no pre-masked examples "
                             "into a batch to be masked.")
        special = special_tokens_mask_of(input_ids, self.special_token_ids) | (attention_mask == 0)
        masked, labels = mask_tokens(input_ids, special, self.mask_token_id, self.vocab_size,
                                     self.mlm_probability, self.generator)
        return {"input_ids": masked, "attention_mask": attention_mask, "labels": labels}


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int = 0,
                           window: int = 50) -> list[list[int]]:
    """One epoch of batches of example indices, shuffled but grouped by length.

    The indices are shuffled (seeded by seed and epoch), cut into windows of `window` batches,
    sorted by length inside each window and cut into batches, and the batches are shuffled: each
    batch holds sentences of similar lengths, so little of it is padding (a random batch of
    CoNLL sentences is mostly padding: lengths run from 3 to over 100 tokens). The last batch of
    an epoch may be smaller.
    """
    g = epoch_generator(seed, epoch)
    order = torch.randperm(len(lengths), generator=g).tolist()
    span = batch_size * window
    batches = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start:start + span], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


def grouped_batches(examples: Sequence[Example], collator: MLMCollator, batch_size: int,
                    seed: int = config.DEFAULT_SEED, window: int = 50) -> Any:
    """A Trainer `train_data` factory: epoch -> masked batches from `length_grouped_batches`."""
    lengths = [len(e["input_ids"]) for e in examples]

    def epoch_batches(epoch: int) -> Any:
        for idx in length_grouped_batches(lengths, batch_size, seed, epoch, window):
            yield collator([examples[i] for i in idx])

    return epoch_batches


def fixed_masks(examples: Sequence[Example], collator: MLMCollator,
                generator: torch.Generator | None = None) -> list[dict[str, list[int]]]:
    """The examples masked once (draws from `generator`): an evaluation set whose masks never
    change, so evaluation losses at different steps are comparable. Each gets "input_ids" and
    "labels"."""
    out = []
    for e in examples:
        ids = torch.as_tensor(list(map(int, e["input_ids"])), dtype=torch.long)[None]  # (1, T)
        special = special_tokens_mask_of(ids, collator.special_token_ids)
        masked, labels = mask_tokens(ids, special, collator.mask_token_id, collator.vocab_size,
                                     collator.mlm_probability, generator)
        out.append({"input_ids": masked[0].tolist(), "labels": labels[0].tolist()})
    return out


# --------------------------------------------------------------------------- data


@dataclass
class Sentences:
    """Training or held-out sentences and where they came from."""

    texts: list[str]   # one sentence per item, tokens joined by spaces
    source: str        # "CoNLL-2003 <split>" or the offline stand-in's name
    location: str      # the file or module read
    news: bool         # True for the real news-domain text (CoNLL-2003)

    def __repr__(self) -> str:
        return (f"Sentences({len(self.texts):,} sentences, {sum(len(t.split()) for t in self.texts):,} "
                f"words, from {self.source}: {self.location})")


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


def split_sentences(text: str, min_words: int = 3, max_words: int = 60) -> list[str]:
    """Cut running text into sentences (at . ! ? followed by a capital), whitespace squeezed;
    keeps those of min_words..max_words words."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        for s in _SENTENCE_END.split(" ".join(para.split())):
            if min_words <= len(s.split()) <= max_words:
                out.append(s)
    return out


def offline_sentences(split: str = "train", valid_every: int = 5) -> Sentences:
    """The stand-in when CoNLL-2003 is absent: the Python help texts (`load_corpus("pydoc")`) cut
    into distinct sentences; every `valid_every`-th sentence is held out for "valid"/"test"."""
    corpus = data.load_corpus("pydoc", quiet=True)
    sents = list(dict.fromkeys(split_sentences(corpus.text)))  # distinct, in order
    held = split in ("valid", "test")
    texts = [s for i, s in enumerate(sents) if (i % valid_every == 0) == held]
    return Sentences(texts, "offline stand-in: Python's help texts, not news", corpus.location, news=False)


def news_sentences(split: str = "train") -> Sentences:
    """The sentences of a CoNLL-2003 split (labels dropped, tokens joined by spaces), from
    $LMCOURSE_DATA_DIR/conll2003/; without that folder, the offline stand-in (and it says so)."""
    try:
        path = data.conll_path(split)
    except data.DataError as e:
        sents = offline_sentences(split)
        print(f"No CoNLL-2003 data ({e}).\nUsing the {sents.source}: {len(sents.texts):,} sentences. "
              "Numbers will differ from a news-domain run.")
        return sents
    return Sentences(data.conll_texts(path), f"CoNLL-2003 {split}", str(path), news=True)


def encode(tokenizer: Any, texts: Sequence[str], max_length: int = 128) -> list[dict[str, list[int]]]:
    """[{"input_ids": [CLS] ... [SEP]}] for each text, truncated to max_length tokens."""
    enc = tokenizer(list(texts), truncation=True, max_length=max_length,
                    return_attention_mask=False, return_token_type_ids=False)
    return [{"input_ids": ids} for ids in enc["input_ids"]]


# --------------------------------------------------------------------------- the model


def bert_config(tokenizer: Any, d_model: int = 128, n_layers: int = 2, n_heads: int = 2,
                d_ff: int | None = None, max_positions: int = 128, dropout: float = 0.1) -> Any:
    """A small `transformers.BertConfig` sized for `tokenizer` (vocabulary, pad id).

    The sizes have the course's names (`lm.transformer.BertConfig`): d_model is transformers'
    hidden_size, n_layers num_hidden_layers, n_heads num_attention_heads, d_ff intermediate_size
    (default 4 * d_model) and max_positions max_position_embeddings.
    """
    from transformers import BertConfig

    return BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        intermediate_size=d_ff or 4 * d_model,
        max_position_embeddings=max_positions,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        pad_token_id=tokenizer.pad_token_id,
        type_vocab_size=2,
    )


def small_bert(tokenizer: Any, **sizes: Any) -> Any:
    """A freshly initialised `BertForMaskedLM` (seed before calling it) with `bert_config(**sizes)`."""
    from transformers import BertForMaskedLM

    return BertForMaskedLM(bert_config(tokenizer, **sizes))


# --------------------------------------------------------------------------- fill in the blank


def make_blanks(tokenizer: Any, texts: Sequence[str], n: int = 5,
                generator: torch.Generator | None = None, min_chars: int = 3, min_words: int = 6,
                max_words: int = 30, max_tokens: int | None = None) -> list[tuple[str, str]]:
    """Up to `n` (text with one word replaced by [MASK], the word) from the texts of min_words to
    max_words words (and at most max_tokens tokens with [CLS] and [SEP], if given): the word is
    alphabetic, at least `min_chars` long, and a single token of `tokenizer`, so one [MASK] hides
    exactly it. Sentences and words are drawn with `generator` (None: torch's global one)."""
    out: list[tuple[str, str]] = []
    for i in torch.randperm(len(texts), generator=generator).tolist():
        words = texts[i].split()
        candidates = [j for j, w in enumerate(words) if j > 0 and w.isalpha() and len(w) >= min_chars
                      and len(tokenizer.tokenize(w)) == 1]
        if not min_words <= len(words) <= max_words or not candidates:
            continue
        if max_tokens is not None and len(tokenizer(texts[i])["input_ids"]) > max_tokens:
            continue
        j = candidates[int(torch.randint(len(candidates), (1,), generator=generator))]
        out.append((" ".join([*words[:j], tokenizer.mask_token, *words[j + 1:]]), words[j]))
        if len(out) == n:
            break
    return out


@torch.no_grad()
def fill_mask(model: Any, tokenizer: Any, texts: Sequence[str], top_k: int = 3) -> list[list[tuple[str, float]]]:
    """For each text, the top_k (token, probability) predictions at its first [MASK]."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    enc = tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt",
                    max_length=model.config.max_position_embeddings).to(device)
    logits = model(**enc).logits  # (B, T, V)
    if was_training:
        model.train()
    out = []
    for row in range(len(texts)):
        pos = (enc["input_ids"][row] == tokenizer.mask_token_id).nonzero()
        if len(pos) == 0:
            raise ValueError(f"No {tokenizer.mask_token} in {texts[row]!r}.")
        probs = logits[row, pos[0, 0]].float().softmax(-1)  # (V,)
        p, idx = probs.topk(top_k)
        out.append([(tokenizer.convert_ids_to_tokens(int(i)), float(q)) for q, i in zip(p, idx)])
    return out


# --------------------------------------------------------------------------- saving


def default_checkpoint_dir(name: str = DEFAULT_CHECKPOINT, root: str | Path | None = None,
                           mode: str | None = None) -> Path:
    """Where the pretrained model is kept: `root/name/mode`, by default
    `lm.config.cache_dir()/checkpoints/bert-mlm-conll/<mode>` ($LMCOURSE_CACHE moves the cache).

    One folder per mode (smoke, quick, full; default: the current mode, $LMCOURSE_MODE), so a
    smoke run never overwrites a real model and a lesson finds the model of its own mode.
    """
    base = Path(root) if root is not None else config.cache_dir() / "checkpoints"
    return base / name / config.get_mode(mode)


def save_pretrained_bert(model: Any, tokenizer: Any, folder: str | Path) -> Path:
    """Save model (config.json, model.safetensors) and tokenizer in `transformers` format, atomically:
    `AutoModelForMaskedLM.from_pretrained(folder)` and `AutoTokenizer.from_pretrained(folder)` load it."""
    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)  # safetensors is transformers' default format
        tokenizer.save_pretrained(tmp)

    return atomic_save_dir(Path(folder), write)


def load_pretrained_bert(folder: str | Path, device: str | torch.device | None = None) -> tuple[Any, Any]:
    """(model in eval mode on the course device, tokenizer) from a folder of `save_pretrained_bert`."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"No pretrained model in {folder}: run lesson 05b (pretraining BERT) "
                                "first, or pass the folder it saved to.")
    model = AutoModelForMaskedLM.from_pretrained(str(folder)).to(config.get_device(device)).eval()
    return model, AutoTokenizer.from_pretrained(str(folder))


# --------------------------------------------------------------------------- the whole recipe


def pretrain(
    texts: Sequence[str],
    vocab_size: int = 8000,
    max_length: int = 64,
    d_model: int = 128,
    n_layers: int = 2,
    n_heads: int = 2,
    batch_size: int = 64,
    max_steps: int = 2000,
    lr: float = 1e-3,
    warmup_steps: int = 50,
    seed: int = config.DEFAULT_SEED,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> tuple[Any, Any]:
    """Lesson 05b's recipe in one call: train the course's WordPiece tokenizer on `texts`, then
    pretrain `small_bert` on them with 80/10/10 masking, length-grouped batches, AdamW with warmup
    and linear decay. Returns (BertForMaskedLM in eval mode, tokenizer). The defaults are lesson
    05b's quick mode."""
    import tempfile

    from lmcourse import tokenization
    from lmcourse.train import TrainConfig, Trainer

    texts = list(texts)
    raw = tokenization.train_wordpiece(texts, vocab_size=vocab_size)
    tokenizer = tokenization.load_tokenizer(tokenization.save_for_transformers(raw, tempfile.mkdtemp()))
    data = encode(tokenizer, texts, max_length)
    collator = MLMCollator.from_tokenizer(tokenizer)
    config.seed_everything(seed)
    model = small_bert(tokenizer, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                       max_positions=max_length)
    cfg = TrainConfig(max_steps=max_steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
                      schedule="linear", weight_decay=0.01, seed=seed, progress=progress)
    trainer = Trainer(model, cfg, grouped_batches(data, collator, batch_size, seed=seed),
                      collate_fn=collator, device=device)
    config.seed_everything(seed)  # the collator's masks come from torch's global generator
    trainer.train()
    return model.eval(), tokenizer


def checkpoint_size_differences(model_config: Any, sizes: Mapping[str, Any]) -> list[str]:
    """Where a saved BERT's config differs from the `pretrain` sizes asked for (d_model,
    n_layers, n_heads, max_length, vocab_size; the vocabulary may come out a little smaller than
    asked), as "name: saved vs asked" strings; [] when it matches or nothing was asked."""
    fields = {"d_model": "hidden_size", "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads",
              "max_length": "max_position_embeddings"}
    out = [f"{name} {getattr(model_config, attr)} vs {sizes[name]}" for name, attr in fields.items()
           if name in sizes and getattr(model_config, attr) != sizes[name]]
    if "vocab_size" in sizes and model_config.vocab_size > sizes["vocab_size"]:
        out.append(f"vocab_size {model_config.vocab_size} vs {sizes['vocab_size']}")
    return out


def load_or_pretrain(folder: str | Path | None = None, texts: Sequence[str] | None = None,
                     **pretrain_kwargs: Any) -> tuple[Any, Any, str]:
    """The learner's pretrained BERT: (model, tokenizer, where it came from).

    It is loaded from `folder` (default `default_checkpoint_dir()`, where lesson 05b saves it) if
    one is there; otherwise pretrained now with `pretrain(texts, **pretrain_kwargs)` (default
    texts: the CoNLL-2003 training sentences, `news_sentences`) and saved to that folder, and the
    third item says so.
    """
    folder = Path(folder) if folder is not None else default_checkpoint_dir()
    if (folder / "config.json").is_file():
        model, tokenizer = load_pretrained_bert(folder, device=pretrain_kwargs.get("device"))
        where = f"loaded from {folder} (lesson 05b)"
        differ = checkpoint_size_differences(model.config, pretrain_kwargs)
        if differ:  # a learner may have changed 05b's sizes on purpose: use it, but say so
            where += (f"; note: its sizes differ from this mode's recipe ({', '.join(differ)}), so the "
                      "numbers will differ from the lesson's text (run lesson 05b in this mode to match)")
        return model, tokenizer, where
    texts = list(texts) if texts is not None else news_sentences("train").texts
    model, tokenizer = pretrain(texts, **pretrain_kwargs)
    save_pretrained_bert(model, tokenizer, folder)
    steps = pretrain_kwargs.get("max_steps", 2000)
    return model, tokenizer, (f"not found at {folder}: pretrained now on {len(texts):,} sentences "
                              f"for {steps:,} steps (lesson 05b's recipe) and saved there")
