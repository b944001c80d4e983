"""Checked exercises of lesson 06 (text classification: pooling, the confusion matrix and its
metrics, reading a classifier's mistakes)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from lmcourse import classification
from lmcourse.checker import Case, Diagnosis, Exercise, Mistake
from lmcourse.exercises import register
from lmcourse.lm_math import IGNORE_INDEX

LESSON = "06_text_classification"
IGNORE = IGNORE_INDEX


def _close(a, b, atol: float = 1e-5, rtol: float = 1e-4) -> bool:
    """Two float tensors of one shape with the same values (nan where both are nan)."""
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
            and bool(torch.allclose(a.double(), b.double(), atol=atol, rtol=rtol, equal_nan=True)))


# --------------------------------------------------------------------------- masked mean pooling


def _mask(rows: list[list[int]], dtype: torch.dtype = torch.long) -> torch.Tensor:
    return torch.tensor(rows, dtype=dtype)


def _pool_cases() -> list[Case]:
    g = torch.Generator().manual_seed(6)
    padded = _mask([[1, 1, 1, 1, 1, 1],
                    [1, 1, 1, 0, 0, 0],
                    [1, 1, 1, 1, 1, 0],
                    [1, 0, 0, 0, 0, 0]])
    empty_row = _mask([[1, 1, 0, 0, 0],
                       [0, 0, 0, 0, 0],
                       [1, 1, 1, 1, 0]])
    holes = _mask([[0, 0, 1, 1, 1],
                   [1, 0, 1, 0, 1],
                   [1, 1, 1, 0, 0]])
    return [
        Case("padded batch", (torch.randn(4, 6, 5, generator=g), padded),
             hint="sum the vectors of the tokens where attention_mask is 1 and divide each row by "
                  "its own number of real tokens (mask.sum(dim=1, keepdim=True)); padding counts "
                  "in neither."),
        Case("no padding", (torch.randn(2, 4, 3, generator=g), torch.ones(2, 4, dtype=torch.long)),
             hint="without padding the result is the plain mean over the tokens (dim=1)."),
        Case("an all-padding row", (torch.randn(3, 5, 4, generator=g), empty_row),
             hint="a row with no real token has nothing to average: return zeros there, not 0 / 0 "
                  "= nan (clamp the count to at least 1: its sum is 0 anyway)."),
        Case("bool mask", (torch.randn(4, 6, 5, generator=g), padded.bool()),
             hint="the mask may be True/False: convert it to the dtype of hidden "
                  "(mask.to(hidden.dtype)) before you multiply and count."),
        Case("padding on the left and in the middle", (torch.randn(3, 5, 2, generator=g), holes),
             hint="real tokens are wherever the mask is 1, not necessarily the first ones: "
                  "multiply by the mask, don't slice the first n tokens."),
        Case("float64 hidden", (torch.randn(3, 6, 4, generator=g, dtype=torch.float64),
                                padded[:3].clone()),
             hint="keep the dtype of hidden (float64 here): convert the mask to hidden.dtype, never "
                  "hidden to float32."),
        Case("D = 1", (torch.randn(3, 5, 1, generator=g), empty_row.clone()),
             hint="keep the last dimension even when it has size 1: the result is (B, D) = (3, 1)."),
        Case("B = 1", (torch.randn(1, 7, 3, generator=g), _mask([[1, 1, 1, 1, 0, 0, 0]])),
             hint="keep the batch dimension even for one sentence: the result is (1, D)."),
    ]


def _pool_call(fn: Callable, hidden: torch.Tensor, attention_mask: torch.Tensor):
    """Run a pooling and refuse a float result of another precision than hidden's (the generic
    comparison accepts any float precision)."""
    out = fn(hidden, attention_mask)
    if isinstance(out, torch.Tensor) and out.is_floating_point() and out.dtype != hidden.dtype:
        raise TypeError(f"the pooled vectors must keep the dtype of hidden: found dtype "
                        f"{out.dtype}, expected {hidden.dtype}")
    return out


def _pool_advice(got, want, case: Case) -> Diagnosis | None:
    """Recognise what a wrong pooling computed: which tokens it averaged, what it divided by."""
    if not isinstance(got, torch.Tensor) or not got.is_floating_point() or _close(got, want):
        return None
    hidden, mask = case.args
    m = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    count = m.sum(1)                          # (B, 1)
    if got.shape != want.shape:
        if got.dim() == 1 and got.numel() == hidden.shape[0] and _close(got, want.mean(-1)):
            return Diagnosis("averaged over D", "you averaged over the features too: average "
                             "over the tokens only (dim=1) and keep the D features of each row.")
        return None
    summed = (hidden * m).sum(1)              # (B, D)
    pad = (1 - m)
    if _close(got, hidden.mean(1)):
        return Diagnosis("padding averaged", "your result is the plain mean over all T positions: "
                         "padding vectors count. Average only where attention_mask is 1.")
    if bool((pad.sum(1) > 0).any()) and _close(got, (hidden * pad).sum(1) / pad.sum(1).clamp(min=1)):
        return Diagnosis("mask inverted", "you averaged the padding vectors: attention_mask is 1 "
                         "on real tokens and 0 on padding, so keep the positions where it is 1.")
    if _close(got, summed):
        return Diagnosis("sum, not mean", "your result is the sum of the real tokens' vectors: "
                         "divide it by the number of real tokens of each row.")
    real = count.squeeze(-1) > 0             # (B,) rows with at least one real token
    nz = real.unsqueeze(-1) & (want.abs() > 1e-6)  # (B, D)
    if bool(nz.any()) and bool(torch.isfinite(got).all()):
        ratio = torch.where(nz, got.double() / want.double(), torch.nan)
        per_row = []
        for b in range(got.shape[0]):
            r = ratio[b][~torch.isnan(ratio[b])]
            if r.numel() < 2:  # one feature: any two vectors differ by a factor, no evidence
                continue
            if not bool(torch.allclose(r, r[0].expand_as(r), rtol=1e-4)):
                return None
            per_row.append(float(r[0]))
        if len(per_row) >= 2 and max(per_row) - min(per_row) > 1e-4 * max(abs(v) for v in per_row):
            return Diagnosis("divided by the wrong count", "each row of yours is the right mean "
                             "times its own factor: the sum of a row's real tokens is right, but "
                             "divide it by THAT row's number of real tokens "
                             "(mask.sum(dim=1, keepdim=True)), not by T, by the batch's total, or "
                             "by a count that padding changes.")
    return None


def _pool_plain_mean(hidden, attention_mask):
    return hidden.mean(dim=1)


def _pool_divide_by_T(hidden, attention_mask):
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / hidden.shape[1]


def _pool_sum(hidden, attention_mask):
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1)


def _pool_batch_count(hidden, attention_mask):
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum().clamp(min=1)


def _pool_nan_empty(hidden, attention_mask):
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1)


def _pool_no_keepdim(hidden, attention_mask):
    m = attention_mask.to(hidden.dtype)
    return (hidden * m.unsqueeze(-1)).sum(1) / m.sum(1).clamp(min=1)


def _pool_float32(hidden, attention_mask):
    m = attention_mask.float().unsqueeze(-1)
    return (hidden.float() * m).sum(1) / m.sum(1).clamp(min=1)


def _pool_cls(hidden, attention_mask):
    return hidden[:, 0]


register(Exercise(
    key="masked_mean_pool",
    lesson=LESSON,
    reference=classification.masked_mean_pool,
    cases=_pool_cases,
    call=_pool_call,
    diagnosers=[_pool_advice],
    library_name="lm.classification.masked_mean_pool",
    mistakes=[
        Mistake("padding averaged too", _pool_plain_mean,
                "hidden.mean(dim=1) averages the padding vectors too, so a sentence's vector "
                "depends on how long the other sentences of its batch are. Multiply by the mask "
                "and divide by the number of real tokens."),
        Mistake("divided by T", _pool_divide_by_T,
                "you divide the masked sum by T, the padded length, so short sentences get "
                "shrunken vectors: divide each row by its own number of real tokens, "
                "attention_mask.sum(dim=1, keepdim=True)."),
        Mistake("sum without dividing", _pool_sum,
                "you return the sum of the real tokens' vectors; the mean divides it by the number "
                "of real tokens, so long and short sentences get vectors of the same scale."),
        Mistake("divided by the batch's count", _pool_batch_count,
                "you divide by the number of real tokens in the whole batch (mask.sum()); each "
                "row is divided by its OWN count: mask.sum(dim=1, keepdim=True)."),
        Mistake("nan for an all-padding row", _pool_nan_empty,
                "a row without real tokens divides 0 by 0 = nan: clamp the count to at least 1 "
                "(count.clamp(min=1)), which gives that row zeros."),
        Mistake("count without keepdim", _pool_no_keepdim,
                "mask.sum(dim=1) has shape (B,), and (B, D) / (B,) lines the counts up with the "
                "features, not with the rows (an error, or a silent mix-up when B == D): keep the "
                "dimension, mask.sum(dim=1, keepdim=True) of shape (B, 1)."),
        Mistake("float32 forced", _pool_float32,
                "you convert to float32 (.float()), which loses float64's precision: convert the "
                "mask to hidden's dtype instead (attention_mask.to(hidden.dtype))."),
        Mistake("[CLS] vector taken", _pool_cls,
                "hidden[:, 0] is [CLS] pooling, the other way to get a sentence vector; this "
                "exercise averages the vectors of all the real tokens (the mask says which)."),
    ],
))


# --------------------------------------------------------------------------- confusion matrix


def _cm_cases() -> list[Case]:
    g = torch.Generator().manual_seed(7)
    big_labels = torch.randint(0, 5, (5000,), generator=g)
    big_preds = torch.where(torch.rand(5000, generator=g) < 0.6, big_labels,
                            torch.randint(0, 5, (5000,), generator=g))
    big_labels[torch.rand(5000, generator=g) < 0.1] = IGNORE
    return [
        Case("2 classes", (torch.tensor([0, 1, 1, 1, 0]), torch.tensor([0, 0, 0, 1, 1]), 2),
             hint="count cm[true, predicted] += 1 for each example: the row is the TRUE class "
                  "(labels), the column the predicted one."),
        Case("3 classes with a class never predicted",
             (torch.tensor([0, 1, 0, 1, 1, 0, 0, 1]), torch.tensor([0, 1, 2, 2, 1, 0, 2, 0]), 3),
             hint="class 2 is never predicted: its column is all zeros, but it is still there "
                  "(torch.bincount needs minlength=C * C to count cells no example reaches)."),
        Case("a class that never occurs", (torch.tensor([0, 3, 1, 3, 2, 1]),
                                           torch.tensor([0, 1, 1, 2, 2, 0]), 4),
             hint="no example is of class 3, so row 3 is all zeros; the matrix is still "
                  "num_classes x num_classes."),
        Case("the last class absent", (torch.tensor([0, 1, 1, 0]), torch.tensor([0, 1, 0, 0]), 3),
             hint="class 2 is neither true nor predicted here: the matrix is still "
                  "num_classes x num_classes (3 x 3), not sized from the largest label."),
        Case("labels -100 skipped", (torch.tensor([1, 0, 2, 2, 1, 0, 1]),
                                     torch.tensor([1, IGNORE, 2, IGNORE, 0, 0, IGNORE]), 3),
             hint="examples whose label is -100 have no true class: leave them out "
                  "(keep = labels != -100) before counting."),
        Case("no examples", (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), 2),
             hint="with no examples every count is 0: return a 2 x 2 matrix of zeros."),
        Case("large N", (big_preds, big_labels, 5),
             hint="count every example whose label is not -100 exactly once: the cells sum to "
                  "the number of labelled examples. torch.bincount(labels * C + preds, "
                  "minlength=C * C) counts them all at once."),
    ]


def _cm_advice(got, want, case: Case) -> Diagnosis | None:
    """What a wrong confusion matrix counted."""
    if not isinstance(got, torch.Tensor) or got.shape != want.shape or got.dtype == torch.bool \
            or got.dim() != 2:
        return None
    g, w = got.double(), want.double()
    if torch.equal(g, w):
        return None
    if bool(w.sum() > 0) and torch.equal(g, torch.diag(w.diagonal())):
        return Diagnosis("only the diagonal", "only your diagonal holds counts: every example "
                         "counts once, in row = true class and column = predicted class, the "
                         "wrong ones too (off the diagonal).")
    n_got, n_want = float(g.sum()), float(w.sum())
    if n_got > n_want:
        n_all = case.args[1].numel()
        extra = (" You counted every example, -100 ones included: skip the labels equal to -100."
                 if n_got == n_all else "")
        return Diagnosis("too many counted", f"your counts add up to {n_got:g}, but only "
                         f"{n_want:g} examples have a label (not -100): each counts exactly once."
                         f"{extra}")
    if n_got < n_want:
        return Diagnosis("too few counted", f"your counts add up to {n_got:g}, but {n_want:g} "
                         "examples have a label (not -100): count each of them once, class 0 "
                         "included (a += on indexed cells counts a repeated cell only once: use "
                         "index_put_(..., accumulate=True), bincount or a loop).")
    if torch.equal(g.sum(1), w.sum(0)) and torch.equal(g.sum(0), w.sum(1)):
        return Diagnosis("rows predicted", "your rows add up to the predicted counts: rows must "
                         "be the TRUE class (labels) and columns the predicted class.")
    return None


def _cm_loop(preds, labels, num_classes, transposed=False, skip=True, dtype=torch.long):
    cm = torch.zeros(num_classes, num_classes, dtype=dtype)
    for p, y in zip(preds.tolist(), labels.tolist()):
        if skip and y == IGNORE:
            continue
        if transposed:
            cm[p, y] += 1
        else:
            cm[y, p] += 1
    return cm


def _cm_transposed(preds, labels, num_classes):
    return _cm_loop(preds, labels, num_classes, transposed=True)


def _cm_keeps_ignored(preds, labels, num_classes):
    return _cm_loop(preds, labels, num_classes, skip=False)


def _cm_float(preds, labels, num_classes):
    return _cm_loop(preds, labels, num_classes, dtype=torch.float32)


def _cm_diagonal_only(preds, labels, num_classes):
    keep = labels != IGNORE
    right = preds[keep][preds[keep] == labels[keep]]
    return torch.diag(torch.bincount(right, minlength=num_classes))


def _cm_size_from_data(preds, labels, num_classes):
    keep = labels != IGNORE
    seen = torch.cat([preds[keep], labels[keep]])
    n = int(seen.max()) + 1
    return _cm_loop(preds[keep], labels[keep], n)


register(Exercise(
    key="confusion_matrix",
    lesson=LESSON,
    reference=classification.confusion_matrix,
    cases=_cm_cases,
    diagnosers=[_cm_advice],
    library_name="lm.classification.confusion_matrix",
    mistakes=[
        Mistake("rows are the predictions", _cm_transposed,
                "your matrix is transposed: the ROW is the true class (labels) and the column the "
                "predicted one, cm[label, pred] += 1, so a row sums to the class's support."),
        Mistake("-100 labels counted", _cm_keeps_ignored,
                "a label of -100 is no class (as an index it is out of range, or wraps around): "
                "skip those examples, keep = labels != -100, before you count."),
        Mistake("float counts", _cm_float,
                "counts are whole numbers: build the matrix as integers (torch.zeros(C, C, "
                "dtype=torch.long), or torch.bincount), not floats."),
        Mistake("only the diagonal", _cm_diagonal_only,
                "you count only the right predictions; every labelled example counts once, the "
                "wrong ones off the diagonal at [true class, predicted class]."),
        Mistake("size from the data", _cm_size_from_data,
                "the matrix is num_classes x num_classes whatever the data holds: a class that is "
                "neither true nor predicted still gets its (zero) row and column. Use the "
                "num_classes argument, not the largest label + 1."),
    ],
))


# --------------------------------------------------------------------------- precision, recall, F1


def _prf_cases() -> list[Case]:
    g = torch.Generator().manual_seed(8)
    return [
        Case("hand-checked 2 x 2", (torch.tensor([[5, 2], [1, 4]]),),
             hint="class 0: TP 5 of 6 predicted (precision = TP / column sum = 5/6) and of 7 "
                  "true (recall = TP / row sum = 5/7); F1 = 2PR / (P + R)."),
        Case("3 x 3", (torch.tensor([[7, 1, 2], [3, 5, 0], [1, 4, 6]]),),
             hint="per class c: precision = cm[c, c] / cm[:, c].sum(), recall = cm[c, c] / "
                  "cm[c, :].sum() (rows are true classes)."),
        Case("a class never predicted", (torch.tensor([[4, 1, 0], [2, 3, 0], [1, 2, 0]]),),
             hint="class 2 is never predicted (its column is 0): its precision is 0 / 0, which "
                  "is 0.0 by convention, not nan; its F1 is 0.0 too."),
        Case("a class with no examples", (torch.tensor([[3, 1, 1], [0, 0, 0], [2, 0, 5]]),),
             hint="class 1 has no examples (its row is 0): its recall is 0 / 0, which is 0.0 by "
                  "convention, not nan; P + R = 0 makes its F1 0.0 too."),
        Case("a perfect matrix", (torch.diag(torch.tensor([3, 8, 1, 4])),),
             hint="every prediction is right: precision, recall and F1 are 1 for every class."),
        Case("float matrix", (torch.tensor([[10.0, 0.0], [5.0, 5.0]]),),
             hint="a float matrix works the same way: precision = TP / column sum, recall = TP "
                  "/ row sum."),
        Case("no examples at all", (torch.zeros(3, 3, dtype=torch.long),),
             hint="an empty matrix gives 0.0 everywhere (every denominator is 0), not nan."),
        Case("10 classes", (torch.randint(0, 20, (10, 10), generator=g)
                            + 30 * torch.eye(10, dtype=torch.long),),
             hint="compute all classes at once: TP = cm.diagonal(), predicted = cm.sum(dim=0), "
                  "true = cm.sum(dim=1)."),
    ]


def _prf_parts(cm):
    cm = torch.as_tensor(cm).double()
    return cm.diagonal(), cm.sum(0), cm.sum(1)  # TP, predicted, true (support)


def _ratio(a, b):
    return torch.where(b > 0, a / b.clamp(min=1e-12), torch.zeros_like(a))


def _prf_advice(got, want, case: Case) -> Diagnosis | None:
    """Name the item that is wrong and what it computed instead."""
    if not (isinstance(got, (tuple, list)) and len(got) == 3
            and all(isinstance(x, torch.Tensor) and x.is_floating_point() for x in got)):
        return None
    gp, gr, gf = (x.double() for x in got)
    wp, wr, wf = want
    if any(x.dim() == 0 for x in (gp, gr, gf)) and wp.dim() == 1:
        return Diagnosis("one number for all classes", "you return a single number where one "
                         "value per class is expected: the metrics are per class, vectors of "
                         "shape (C,); don't average or sum over the classes.")
    if all(_close(a, b) for a, b in zip((gp, gr, gf), want)):
        return None
    if _close(gp, wr) and _close(gr, wp) and not _close(wp, wr):
        return Diagnosis("precision and recall swapped", "your precision is the recall and your "
                         "recall the precision: precision = TP / column sum (all PREDICTED as the "
                         "class), recall = TP / row sum (all truly of the class).")
    tp, predicted, support = _prf_parts(case.args[0])
    for name, g, w, den, what in (("precision", gp, wp, predicted, "column (predicted count)"),
                                  ("recall", gr, wr, support, "row (number of examples)")):
        zero = den == 0
        if g.shape == w.shape and bool(zero.any()) and not _close(g[zero], w[zero]) \
                and _close(g[~zero], w[~zero]):
            return Diagnosis(f"{name} where 0 / 0", f"your {name} is {float(g[zero][0]):g} for a "
                             f"class whose {what} is 0; by convention it is 0.0 there: "
                             "torch.where(den > 0, tp / den.clamp(min=1), 0.0).")
    if _close(gp, wp) and _close(gr, wr) and gf.shape == wf.shape and bool(torch.isfinite(gf).all()):
        if _close(gf, (wp + wr) / 2):
            return Diagnosis("F1 as the mean", "your F1 is the arithmetic mean (P + R) / 2; F1 is "
                             "the HARMONIC mean 2PR / (P + R), which is low when either is low.")
        if _close(gf, (wp * wr).sqrt()):
            return Diagnosis("F1 as the geometric mean", "your F1 is sqrt(P R); F1 is the harmonic "
                             "mean 2PR / (P + R).")
        return Diagnosis("F1 wrong", "precision and recall are right, F1 is not: F1 = 2PR / "
                         "(P + R), and 0.0 where P + R = 0.")
    total = float(support.sum())
    for name, g, w in (("precision", gp, wp), ("recall", gr, wr)):
        if _close(g, w) or g.shape != w.shape:
            continue
        if total > 0 and _close(g, tp / total) and not _close(w, tp / total):
            return Diagnosis(f"{name} over all examples", f"your {name} divides TP by all the "
                             "examples; divide by the column sum (predicted as the class) for "
                             "precision and the row sum (truly of the class) for recall.")
        if total > 0 and _close(g, torch.full_like(w, float(tp.sum()) / total)):
            return Diagnosis(f"accuracy as {name}", f"your {name} is the same number for every "
                             "class, the accuracy (trace / total): compute it per class, TP of "
                             "the class over its column sum (precision) or its row sum (recall).")
    return None


def _prf(cm, swap=False, mean_f1=False):
    tp, predicted, support = _prf_parts(cm)
    p, r = _ratio(tp, predicted), _ratio(tp, support)
    if swap:
        p, r = r, p
    f1 = (p + r) / 2 if mean_f1 else _ratio(2 * p * r, p + r)
    return p, r, f1


def _prf_swapped(cm):
    return _prf(cm, swap=True)


def _prf_nan(cm):
    tp, predicted, support = _prf_parts(cm)
    p, r = tp / predicted, tp / support
    return p, r, 2 * p * r / (p + r)


def _prf_arithmetic_f1(cm):
    return _prf(cm, mean_f1=True)


def _prf_micro(cm):
    tp, predicted, support = _prf_parts(cm)
    p = _ratio(tp.sum(), predicted.sum())
    r = _ratio(tp.sum(), support.sum())
    return p, r, _ratio(2 * p * r, p + r)


def _prf_accuracy_recall(cm):
    tp, predicted, support = _prf_parts(cm)
    p = _ratio(tp, predicted)
    r = torch.full_like(p, float(_ratio(tp.sum(), support.sum())))
    return p, r, _ratio(2 * p * r, p + r)


register(Exercise(
    key="precision_recall_f1",
    lesson=LESSON,
    reference=classification.precision_recall_f1,
    cases=_prf_cases,
    outputs=("precision", "recall", "f1"),
    diagnosers=[_prf_advice],
    library_name="lm.classification.precision_recall_f1",
    mistakes=[
        Mistake("precision and recall swapped", _prf_swapped,
                "precision and recall are swapped. Rows are true classes, columns predicted ones: "
                "precision = TP / column sum (cm.sum(dim=0)), recall = TP / row sum (cm.sum(dim=1))."),
        Mistake("nan on zero division", _prf_nan,
                "a class never predicted (or without examples) divides 0 by 0 = nan: return 0.0 "
                "there, torch.where(den > 0, num / den.clamp(min=1), 0.0); the same for F1 where "
                "P + R = 0."),
        Mistake("F1 as the arithmetic mean", _prf_arithmetic_f1,
                "F1 is the HARMONIC mean of precision and recall, 2PR / (P + R), not (P + R) / 2: "
                "it stays low when either of them is low."),
        Mistake("micro instead of per class", _prf_micro,
                "you pool all classes into one number (micro average, which for single-label "
                "classification is the accuracy); return one value per class, vectors of shape (C,)."),
        Mistake("accuracy as recall", _prf_accuracy_recall,
                "your recall is the overall accuracy (trace / total) for every class; the recall "
                "of class c is cm[c, c] / cm[c, :].sum(), the share of class c's examples found."),
    ],
))


# --------------------------------------------------------------------------- most confident mistakes


def _p(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def _mcm_cases() -> list[Case]:
    g = torch.Generator().manual_seed(9)
    two = _p([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.05, 0.95], [0.8, 0.2], [0.45, 0.55],
              [0.2, 0.8], [0.7, 0.3]])
    two_labels = torch.tensor([1, 1, 1, 0, 0, 0, 1, 1])  # wrong: 0 (.9), 2 (.6), 3 (.95), 5 (.55), 7 (.7)
    ties = _p([[0.75, 0.25], [0.25, 0.75], [0.75, 0.25], [0.9, 0.1], [0.25, 0.75], [0.75, 0.25]])
    ties_labels = torch.tensor([1, 0, 0, 0, 0, 1])  # wrong: 0, 1, 4, 5, all at 0.75; 3 right at .9
    many = torch.tensor([[0.75, 0.25], [0.6, 0.4]]).repeat(20, 1)  # (40, 2)
    many_labels = torch.tensor([1, 0]).repeat(20)  # wrong: the even rows (0.75); right: odd (0.6)
    three = _p([[0.5, 0.1, 0.4], [0.1, 0.6, 0.3], [0.2, 0.35, 0.45], [0.7, 0.2, 0.1],
                [0.1, 0.1, 0.8]])
    three_labels = torch.tensor([2, 0, 1, 0, 2])  # wrong: 1 (.6), 0 (.5), 2 (.45)
    big = torch.softmax(3 * torch.randn(300, 5, generator=g), dim=-1)
    big_labels = torch.randint(0, 5, (300,), generator=g)
    return [
        Case("2 classes", (two, two_labels, 3),
             hint="keep the examples whose arg-max class differs from the label, sort them by "
                  "the probability of the PREDICTED class, highest first, and return the first k "
                  "indices."),
        Case("3 classes", (three, three_labels, 5),
             hint="the confidence is the probability of the predicted class (probs.max(dim=-1)"
                  ".values), not of the true class: with 3 classes they order differently."),
        Case("ties", (ties, ties_labels, 3),
             hint="equal confidences keep the lower index first: sort the confidences with "
                  "torch.sort(..., descending=True, stable=True)."),
        Case("many ties", (many, many_labels, 25),
             hint="20 mistakes share one confidence: they must come in index order. torch.sort "
                  "reorders equal values unless stable=True (and topk does not promise an order "
                  "for ties)."),
        Case("k larger than the number of mistakes", (two, two_labels, 8),
             hint="there are only 5 mistakes: return those 5, not k indices (no correct "
                  "predictions to fill up)."),
        Case("no mistakes", (three[3:], three_labels[3:], 3),
             hint="every prediction is right: return an empty LongTensor (shape (0,))."),
        Case("k = 0", (two, two_labels, 0),
             hint="k = 0 asks for nothing: an empty LongTensor."),
        Case("300 examples", (big, big_labels, 10),
             hint="return the indices (into probs) of the 10 most confident wrong predictions, "
                  "most confident first."),
    ]


def _mcm_advice(got, want, case: Case) -> Diagnosis | None:
    """What a wrong selection picked: right predictions, the wrong order, too many."""
    if not isinstance(got, torch.Tensor) or got.is_floating_point() or got.dtype == torch.bool \
            or got.dim() != 1 or torch.equal(got, want):
        return None
    probs, labels, k = case.args
    conf, preds = probs.max(dim=-1)
    idx = got.tolist()
    if any(not 0 <= i < len(labels) for i in idx):
        return None
    wrong_idx = (preds != labels).nonzero().flatten().tolist()
    positions = [wrong_idx.index(i) for i in want.tolist()]
    if idx == positions and idx != want.tolist():
        return Diagnosis("positions among the mistakes", "your numbers are positions in the list "
                         "of mistakes (what sorting conf[wrong] gives), not indices into probs: "
                         "map them back, wrong_idx[order].")
    right = [i for i in idx if int(preds[i]) == int(labels[i])]
    if right:
        return Diagnosis("right predictions included", f"{len(right)} of your indices "
                         f"({', '.join(map(str, right[:3]))}{', ...' if len(right) > 3 else ''}) "
                         "are RIGHT predictions (arg-max == label): keep only the wrong ones, "
                         "then sort those.")
    if len(set(idx)) != len(idx):
        return Diagnosis("repeated indices", "an index comes back twice: each wrong example "
                         "appears once.")
    w = want.tolist()
    if len(idx) > len(w) and idx[:len(w)] == w:
        return Diagnosis("more than k", f"you return {len(idx)} indices; return at most k = {k} "
                         "(the first k after sorting).")
    if sorted(idx) == sorted(w) and len(w) >= 2:
        if idx == w[::-1]:
            return Diagnosis("least confident first", "you return the right examples, least "
                             "confident first: sort by confidence in DESCENDING order.")
        c = conf[got].tolist()
        if all(a >= b for a, b in zip(c, c[1:])):
            return Diagnosis("tie order", "you sort by confidence correctly, but examples with "
                             "EQUAL confidence must keep the lower index first: "
                             "torch.sort(..., descending=True, stable=True).")
        return Diagnosis("wrong order", "you return the right examples in the wrong order: most "
                         "confident first, the confidence being the PREDICTED class's "
                         "probability (probs.max(dim=-1).values).")
    if len(idx) == len(w) and not set(idx) <= set(w):
        truth = probs[torch.arange(len(labels)), labels]
        wrong_idx = torch.tensor(wrong_idx, dtype=torch.long)
        by_true = wrong_idx[torch.sort(truth[wrong_idx], descending=True, stable=True).indices]
        if idx == by_true[:len(idx)].tolist() or idx == by_true.flip(0)[:len(idx)].tolist():
            return Diagnosis("true class's probability", "you rank the mistakes by the "
                             "probability of the TRUE class; the confidence of a prediction is "
                             "the probability of the PREDICTED class, probs.max(dim=-1).values.")
        return Diagnosis("not the most confident", "your indices are wrong predictions, but not "
                         "the most confident ones: rank all the mistakes by the predicted class's "
                         "probability, highest first, then take the first k.")
    return None


def _mcm(probs, labels, k, score=None, only_wrong=True, descending=True, tie_high_first=False,
         cut=True):
    conf, preds = probs.max(dim=-1)
    s = conf if score is None else score
    cand = (preds != labels).nonzero().flatten().tolist() if only_wrong else list(range(len(labels)))
    sign = -1 if descending else 1
    if tie_high_first:
        cand.sort(key=lambda i: (sign * float(s[i]), -i))
    else:
        cand.sort(key=lambda i: sign * float(s[i]))
    out = torch.tensor(cand, dtype=torch.long)
    return out[:k] if cut else out


def _mcm_all_predictions(probs, labels, k):
    return _mcm(probs, labels, k, only_wrong=False)


def _mcm_ascending(probs, labels, k):
    return _mcm(probs, labels, k, descending=False)


def _mcm_true_class(probs, labels, k):
    return _mcm(probs, labels, k, score=probs[torch.arange(len(labels)), labels])


def _mcm_ties_reversed(probs, labels, k):
    return _mcm(probs, labels, k, tie_high_first=True)


def _mcm_ignores_k(probs, labels, k):
    return _mcm(probs, labels, k, cut=False)


register(Exercise(
    key="most_confident_mistakes",
    lesson=LESSON,
    reference=classification.most_confident_mistakes,
    cases=_mcm_cases,
    diagnosers=[_mcm_advice],
    library_name="lm.classification.most_confident_mistakes",
    mistakes=[
        Mistake("right predictions included", _mcm_all_predictions,
                "you rank every example; only the MISTAKES count (probs.argmax(-1) != labels): "
                "select them first, then sort them by confidence."),
        Mistake("least confident first", _mcm_ascending,
                "you sort ascending, so the least confident mistakes come first: sort with "
                "descending=True (stable=True keeps ties in index order)."),
        Mistake("confidence of the true class", _mcm_true_class,
                "you rank by the probability of the TRUE class; a mistake's confidence is the "
                "probability the model gave its PREDICTED class, probs.max(dim=-1).values."),
        Mistake("ties in reverse order", _mcm_ties_reversed,
                "equal confidences come out highest index first; they must keep the lower index "
                "first: sort only the confidences, torch.sort(..., descending=True, stable=True), "
                "not (confidence, index) pairs in reverse."),
        Mistake("k ignored", _mcm_ignores_k,
                "you return every mistake; return at most k of them (the k most confident): "
                "[:k] after sorting."),
    ],
))
