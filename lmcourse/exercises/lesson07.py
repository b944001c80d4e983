"""Checked exercises of lesson 07 (fine-tuning BERT for named-entity recognition on CoNLL-2003):
word labels to subword labels, tags to entity spans, entity-level F1, and a LoRA layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmcourse import ner, peft_layers
from lmcourse.checker import Case, Diagnosis, Exercise, Mistake
from lmcourse.exercises import register
from lmcourse.lm_math import IGNORE_INDEX as IGNORE

LESSON = "07_ner_finetuning"


# --------------------------------------------------------------------------- first-subword labels


def _align_cases() -> list[Case]:
    return [
        Case("a word split into three subwords", ([None, 0, 0, 0, 1, 2, 3, None], [1, 2, 0, 5]),
             hint="only a word's FIRST subword gets the word's label; its later subwords (same word "
                  "id as the token before) get -100."),
        Case("first word labelled O (label 0)", ([None, 0, 1, 1, 2, None], [0, 3, 0]),
             hint="word 0 is a word and label 0 (O) is a label: test `word_id is None`, not "
                  "`if not word_id`."),
        Case("no word split", ([None, 0, 1, 2, None], [3, 4, 0]),
             hint="every word is one token here: each gets its own label, [CLS] and [SEP] -100."),
        Case("neighbouring words with the same label", ([None, 0, 1, 2, 2, None], [5, 5, 5]),
             hint="a new word starts where the WORD ID changes, whatever its label: three words "
                  "labelled 5 are three first subwords."),
        Case("last word split", ([None, 0, 1, 1, 1, None], [0, 7]),
             hint="the last word's later subwords get -100 like any other."),
        Case("sentence cut off by truncation", ([None, 0, 0, 1, None], [1, 2, 0, 0]),
             hint="one label per TOKEN (len(word_ids)); words with no token get none."),
        Case("empty sentence", ([None, None], []),
             hint="special tokens ([CLS], [SEP]: word id None) get -100; an empty sentence has "
                  "nothing else."),
    ]


def _align_every_subword(word_ids, word_labels):
    return [IGNORE if w is None else word_labels[w] for w in word_ids]


def _align_specials_o(word_ids, word_labels):
    out, previous = [], None
    for w in word_ids:
        out.append(0 if w is None else word_labels[w] if w != previous else IGNORE)
        previous = w
    return out


def _align_last_subword(word_ids, word_labels):
    out = []
    for i, w in enumerate(word_ids):
        nxt = word_ids[i + 1] if i + 1 < len(word_ids) else None
        out.append(IGNORE if w is None or w == nxt else word_labels[w])
    return out


def _align_falsy_word_zero(word_ids, word_labels):
    out, previous = [], None
    for w in word_ids:
        out.append(IGNORE if not w or w == previous else word_labels[w])
        previous = w
    return out


def _align_by_label_change(word_ids, word_labels):
    out, previous = [], None
    for w in word_ids:
        label = None if w is None else word_labels[w]
        out.append(IGNORE if w is None or label == previous else label)
        previous = label
    return out


def _label_count_advice(got, want, case: Case) -> Diagnosis | None:
    """A result of the wrong length: the labels are not one per token."""
    if isinstance(got, (list, tuple, torch.Tensor)) and len(got) != len(want):
        return Diagnosis("one label per token", f"returned {len(got)} labels for {len(want)} tokens: "
                         "return one label per TOKEN of word_ids (len(word_ids) of them): the word's "
                         "label on its first subword, -100 on later subwords and on special tokens "
                         "(word id None).")
    return None


register(Exercise(
    key="ner_align_labels",
    lesson=LESSON,
    reference=ner.align_labels,
    cases=_align_cases,
    diagnosers=[_label_count_advice],
    library_name="lm.ner.align_labels",
    mistakes=[
        Mistake("every subword labelled", _align_every_subword,
                "you labelled every subword with its word's label. Label only the first subword "
                "(where the word id differs from the previous token's) and give the later ones "
                "-100, so each word counts once in the loss and the metrics."),
        Mistake("special tokens labelled O", _align_specials_o,
                "special tokens ([CLS], [SEP], padding: word id None) must get -100, not 0: label "
                "0 is O, and the model would be trained to call [CLS] 'outside an entity'."),
        Mistake("last subword labelled", _align_last_subword,
                "you labelled each word's LAST subword; the convention (and the decoding that "
                "reads predictions back) uses the FIRST: compare each word id with the PREVIOUS "
                "token's."),
        Mistake("word 0 taken for a special token", _align_falsy_word_zero,
                "`if not word_id` is also true for word 0, so the first word lost its label: test "
                "`word_id is None`."),
        Mistake("new word found by a label change", _align_by_label_change,
                "remember the previous WORD ID, not the previous label: two neighbouring words "
                "with the same label are still two words."),
    ],
))


# --------------------------------------------------------------------------- tags to spans


def _span_cases() -> list[Case]:
    return [
        Case("two entities", (["B-PER", "I-PER", "O", "B-LOC"],),
             hint="an entity is (type, start, end) with end EXCLUSIVE, as in a slice: B-PER I-PER "
                  "at 0, 1 gives ('PER', 0, 2)."),
        Case("entity at the end", (["O", "B-ORG", "I-ORG"],),
             hint="an entity still open after the last tag ends there: close it after the loop."),
        Case("adjacent entities of one type", (["B-LOC", "B-LOC", "I-LOC", "O"],),
             hint="every B- starts a new entity, even right after an entity of the same type."),
        Case("I- after O", (["O", "I-PER", "I-PER", "O"],),
             hint="an I-X that does not continue an entity of type X starts one (conlleval's and "
                  "seqeval's default)."),
        Case("type changes inside", (["B-PER", "I-PER", "I-LOC", "O"],),
             hint="an I-LOC after PER tags ends the PER entity and starts a LOC one."),
        Case("I- at the start", (["I-MISC"],),
             hint="an I- as the very first tag starts an entity too."),
        Case("no entity", (["O", "O", "O"],), hint="only O: no entity, an empty list."),
        Case("empty sentence", ([],), hint="no tags: an empty list."),
    ]


def _spans_not_closed(tags):
    return [span for span in ner.entity_spans(tags) if span[2] < len(tags)]


def _spans_inclusive(tags):
    return [(k, s, e - 1) for k, s, e in ner.entity_spans(tags)]


def _spans_stray_i_dropped(tags):
    return ner.entity_spans(tags, strict=True)


def _spans_b_continues(tags):
    spans, kind, start = [], None, 0
    for i, tag in enumerate(tags):
        tag_kind = None if tag == "O" else tag[2:]
        if kind is not None and tag_kind != kind:
            spans.append((kind, start, i))
            kind = None
        if tag_kind is not None and kind is None:
            kind, start = tag_kind, i
    if kind is not None:
        spans.append((kind, start, len(tags)))
    return spans


def _spans_type_ignored(tags):
    spans, kind, start = [], None, 0
    for i, tag in enumerate(tags):
        if kind is not None and not tag.startswith("I-"):
            spans.append((kind, start, i))
            kind = None
        if tag != "O" and kind is None:
            kind, start = tag[2:], i
    if kind is not None:
        spans.append((kind, start, len(tags)))
    return spans


def _entity_count_advice(got, want, case: Case) -> Diagnosis | None:
    """Too many or too few entities: the case's rule is the advice."""
    if isinstance(got, (list, tuple)) and len(got) != len(want):
        return Diagnosis("entity count", f"found {len(got)} entities where the tags mark "
                         f"{len(want)}: {case.hint}")
    return None


def _span_end_advice(got, want, case: Case) -> Diagnosis | None:
    """The right entities, starts and types, with other ends."""
    if not (isinstance(got, (list, tuple)) and len(got) == len(want) and want):
        return None
    spans = [tuple(x) for x in got]
    if all(len(x) == 3 for x in spans) and [x[:2] for x in spans] == [w[:2] for w in want] \
            and any(x[2] != w[2] for x, w in zip(spans, want)):
        return Diagnosis("span ends", "your entities have the right types and starts but other "
                         "ends: end is EXCLUSIVE, like a slice (tokens[start:end] is the entity), "
                         "so B-PER I-PER at 0, 1 is ('PER', 0, 2).")
    return None


register(Exercise(
    key="ner_bio_to_spans",
    lesson=LESSON,
    reference=ner.entity_spans,
    cases=_span_cases,
    diagnosers=[_entity_count_advice, _span_end_advice],
    library_name="lm.ner.entity_spans",
    mistakes=[
        Mistake("last entity never closed", _spans_not_closed,
                "an entity that runs to the last tag is lost: after the loop, append the entity "
                "that is still open (end = len(tags))."),
        Mistake("end inclusive", _spans_inclusive,
                "end is EXCLUSIVE, like a Python slice: a one-token entity at 3 is (type, 3, 4), "
                "so that tokens[start:end] is the entity."),
        Mistake("stray I- dropped", _spans_stray_i_dropped,
                "you dropped an I-X that follows O or another type (seqeval's strict mode). The "
                "lesson's policy (conlleval, seqeval's default) lets it start an entity of type X."),
        Mistake("B- continues an entity", _spans_b_continues,
                "B-X always starts a NEW entity, even right after an entity of type X: B-LOC B-LOC "
                "is two locations. Continue the open entity only on I-X of its type."),
        Mistake("type change ignored", _spans_type_ignored,
                "an I- tag continues the open entity only when its type is the entity's type: "
                "B-PER I-LOC is a PER entity, then a LOC one."),
    ],
))


# --------------------------------------------------------------------------- entity-level F1

def _f1_cases() -> list[Case]:
    gold = {(0, "PER", 0, 2), (0, "LOC", 5, 6), (1, "ORG", 0, 3), (2, "MISC", 4, 5)}
    pred = {(0, "PER", 0, 2), (1, "ORG", 0, 3), (2, "LOC", 4, 5)}
    return [
        Case("2 of 3 predictions right and 4 gold", (gold, pred),
             hint="precision = right / predicted = 2/3, recall = right / gold = 2/4, "
                  "F1 = 2PR / (P + R)."),
        Case("right boundaries but wrong type", ({(0, "PER", 0, 2)}, {(0, "ORG", 0, 2), (0, "PER", 0, 2)}),
             hint="an entity is right only when sentence, type, start and end all match."),
        Case("overlapping but different boundaries",
             ({(0, "ORG", 0, 3), (1, "LOC", 2, 3)}, {(0, "ORG", 0, 2), (1, "LOC", 2, 3)}),
             hint="entity-level scoring gives no partial credit: ('ORG', 0, 2) is not ('ORG', 0, 3)."),
        Case("same span in another sentence", ({(0, "PER", 1, 2)}, {(1, "PER", 1, 2)}),
             hint="the sentence index is part of an entity: the same span in another sentence is "
                  "another entity."),
        Case("nothing predicted", ({(0, "PER", 0, 1), (1, "LOC", 3, 4)}, set()),
             hint="with no prediction, precision is 0.0 (define x / 0 as 0.0, as seqeval does), "
                  "so is F1."),
        Case("no gold entity", (set(), {(0, "PER", 0, 1)}),
             hint="with no gold entity, recall is 0.0 (x / 0 taken as 0.0)."),
        Case("both empty", (set(), set()),
             hint="nothing to find and nothing found: (0.0, 0.0, 0.0), never a ZeroDivisionError."),
        Case("all right", ({(0, "PER", 0, 1), (3, "MISC", 2, 4)}, {(0, "PER", 0, 1), (3, "MISC", 2, 4)}),
             hint="every prediction right and every entity found: (1.0, 1.0, 1.0)."),
    ]


def _f1_swapped(gold, pred):
    p, r, f = ner.span_prf(gold, pred)
    return r, p, f


def _f1_mean(gold, pred):
    p, r, _ = ner.span_prf(gold, pred)
    return p, r, (p + r) / 2


def _f1_type_ignored(gold, pred):
    return ner.span_prf({(s, a, b) for s, _, a, b in gold}, {(s, a, b) for s, _, a, b in pred})


def _f1_no_guard(gold, pred):
    right = len(set(gold) & set(pred))
    p, r = right / len(pred), right / len(gold)
    return p, r, 2 * p * r / (p + r)


def _f1_sentence_ignored(gold, pred):
    return ner.span_prf({x[1:] for x in gold}, {x[1:] for x in pred})


def _ratio_advice(got, want, case: Case) -> Diagnosis | None:
    """Scores above 1, or nonzero scores where a set is empty."""
    if not (isinstance(got, (list, tuple)) and len(got) == 3):
        return None
    values = [float(v) for v in got]
    if any(v > 1.0 for v in values):
        return Diagnosis("not a fraction", "precision, recall and F1 are fractions between 0 and "
                         "1 (right / predicted, right / gold), not percentages or counts.")
    gold, pred = case.args
    if (not gold or not pred) and any(values):
        return Diagnosis("empty set", "with no prediction or no gold entity nothing is right: "
                         "define x / 0 as 0.0 (seqeval's zero_division=0), so precision, recall "
                         "and F1 are 0.0 there, not 1.0.")
    return None


register(Exercise(
    key="ner_span_f1",
    lesson=LESSON,
    reference=ner.span_prf,
    cases=_f1_cases,
    outputs=("precision", "recall", "f1"),
    diagnosers=[_ratio_advice],
    library_name="lm.ner.span_prf",
    mistakes=[
        Mistake("precision and recall swapped", _f1_swapped,
                "precision divides the right predictions by the number PREDICTED (how many of "
                "your entities are right); recall divides by the number of GOLD entities (how "
                "many of the true ones you found)."),
        Mistake("F1 as the mean of P and R", _f1_mean,
                "F1 is the HARMONIC mean 2PR / (P + R), not (P + R) / 2: it stays low when either "
                "one is low."),
        Mistake("type ignored", _f1_type_ignored,
                "you compared boundaries only. An entity with the right span but the wrong type is "
                "wrong: compare whole tuples (sentence, type, start, end)."),
        Mistake("no zero-division guard", _f1_no_guard,
                "with no prediction (or no gold entity, or P + R = 0) you divide by zero: return "
                "0.0 for those ratios, as seqeval does with zero_division=0."),
        Mistake("sentence ignored", _f1_sentence_ignored,
                "you dropped the sentence index, so entities with the same span in different "
                "sentences became one: compare whole tuples."),
    ],
))


# --------------------------------------------------------------------------- a LoRA layer


def _lora_cases() -> list[Case]:
    g = torch.Generator().manual_seed(7)

    def layer(d_in, d_out, r, bias=True, zero_b=False):
        w = torch.randn(d_out, d_in, generator=g) / d_in ** 0.5
        b = torch.randn(d_out, generator=g) if bias else None
        a = torch.randn(r, d_in, generator=g) / d_in ** 0.5
        bb = torch.zeros(d_out, r) if zero_b else torch.randn(d_out, r, generator=g)
        return w, b, a, bb

    return [
        Case("(N d_in) input: d_in 6 -> d_out 3 with r = 2 and alpha = 4",
             (torch.randn(4, 6, generator=g), *layer(6, 3, 2), 4.0),
             hint="y = x Wᵀ + b + (alpha / r) · (x Aᵀ) Bᵀ with A (r, d_in), B (d_out, r): the "
                  "frozen layer plus the scaled low-rank update."),
        Case("(B T d_in) input with r = 4 and alpha = 16",
             (torch.randn(2, 5, 8, generator=g), *layer(8, 8, 4), 16.0),
             hint="the same formula on the last dimension: x @ A.T works for any leading dims."),
        Case("alpha equal to r", (torch.randn(3, 5, generator=g), *layer(5, 4, 2), 2.0),
             hint="the scale is alpha / r (here 1), taken from the arguments; r is lora_A.shape[0]."),
        Case("rank 1 and alpha = 8", (torch.randn(3, 6, generator=g), *layer(6, 2, 1), 8.0),
             hint="r = lora_A.shape[0] = 1 here: the scale is alpha / 1."),
        Case("B = 0: a fresh LoRA layer", (torch.randn(3, 6, generator=g), *layer(6, 3, 2, zero_b=True), 4.0),
             hint="LoRA starts with B = 0, so the layer's output is the frozen layer's, x Wᵀ + b."),
        Case("no bias", (torch.randn(3, 6, generator=g), *layer(6, 3, 2, bias=False), 4.0),
             hint="bias may be None (a layer without bias): add it only when it is given "
                  "(F.linear(x, W, bias) does both)."),
    ]


def _lora_scale_alpha(x, weight, bias, lora_A, lora_B, alpha):
    return F.linear(x, weight, bias) + alpha * (x @ lora_A.T @ lora_B.T)


def _lora_scale_r_over_alpha(x, weight, bias, lora_A, lora_B, alpha):
    return F.linear(x, weight, bias) + (lora_A.shape[0] / alpha) * (x @ lora_A.T @ lora_B.T)


def _lora_update_only(x, weight, bias, lora_A, lora_B, alpha):
    return (alpha / lora_A.shape[0]) * (x @ lora_A.T @ lora_B.T)


def _lora_bias_dropped(x, weight, bias, lora_A, lora_B, alpha):
    return x @ weight.T + (alpha / lora_A.shape[0]) * (x @ lora_A.T @ lora_B.T)


def _lora_unscaled(x, weight, bias, lora_A, lora_B, alpha):
    return F.linear(x, weight, bias) + x @ lora_A.T @ lora_B.T


register(Exercise(
    key="ner_lora_forward",
    lesson=LESSON,
    reference=peft_layers.lora_forward,
    cases=_lora_cases,
    library_name="lm.peft_layers.lora_forward",
    mistakes=[
        Mistake("scaled by alpha", _lora_scale_alpha,
                "the update is scaled by alpha / r, not alpha: dividing by the rank keeps the "
                "update's size (and a good learning rate) about the same when you change r."),
        Mistake("scaled by r / alpha", _lora_scale_r_over_alpha,
                "the scale is alpha / r (alpha on top): with r = 8 and alpha = 16 the update is "
                "doubled, not halved."),
        Mistake("update without the frozen layer", _lora_update_only,
                "LoRA ADDS its update to the frozen layer's output: y = x Wᵀ + b + (alpha / r) · "
                "x Aᵀ Bᵀ. Without x Wᵀ + b the pretrained layer is gone."),
        Mistake("bias dropped", _lora_bias_dropped,
                "the frozen layer has a bias: x Wᵀ + b (F.linear(x, weight, bias)), when bias is "
                "not None."),
        Mistake("no scale", _lora_unscaled,
                "the low-rank update is multiplied by alpha / r before it is added."),
    ],
))
