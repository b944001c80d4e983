"""Tests for lmcourse.classification: confusion matrix and metrics, pooling, the bag-of-words baseline."""

import math

import pytest
import torch

from lmcourse import classification as C
from lmcourse import data
from lmcourse.lm_math import IGNORE_INDEX

# ------------------------------------------------------------------ confusion matrix and metrics


def test_confusion_matrix_rows_are_true_columns_predicted():
    labels = torch.tensor([0, 0, 1, 1, 1, 2, IGNORE_INDEX])
    preds = torch.tensor([0, 1, 1, 1, 0, 1, 2])
    cm = C.confusion_matrix(preds, labels, num_classes=3)
    assert cm.tolist() == [[1, 1, 0],   # true 0: one right, one called 1
                           [1, 2, 0],   # true 1: two right, one called 0
                           [0, 1, 0]]   # true 2: called 1; the ignored position is not counted
    assert C.confusion_matrix([[1, 0]], [[1, 1]], 2).tolist() == [[0, 0], [1, 1]]  # any shape, lists
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        C.confusion_matrix(torch.tensor([0]), torch.tensor([2]), 2)
    with pytest.raises(ValueError, match="preds must lie"):
        C.confusion_matrix(torch.tensor([-1]), torch.tensor([0]), 2)
    with pytest.raises(ValueError, match="differ in size"):
        C.confusion_matrix(torch.tensor([0, 1]), torch.tensor([0]), 2)


# Rows true, columns predicted; class 2 is never predicted. Worked by hand:
#   support 6, 5, 3 (14 in all); predicted 8, 6, 0; TP 5, 3, 0
#   precision 5/8, 3/6, 0 (never predicted: 0/0 -> 0.0)   recall 5/6, 3/5, 0/3
#   F1 = 2TP / (2TP + FP + FN): 10/14 = 5/7, 6/11, 0 (P + R = 0 -> 0.0)
#   accuracy 8/14; macro P (5/8 + 1/2) / 3 = 3/8; macro R (5/6 + 3/5) / 3 = 43/90;
#   macro F1 (5/7 + 6/11) / 3 = 97/231; weighted P (6 * 5/8 + 5 * 1/2) / 14 = 25/56;
#   weighted R = accuracy = 8/14; weighted F1 (6 * 5/7 + 5 * 6/11) / 14 = 270/539
HAND_CM = [[5, 1, 0],
           [2, 3, 0],
           [1, 2, 0]]


def test_report_matches_hand_computation():
    r = C.classification_report(torch.tensor(HAND_CM), names=["neg", "neu", "pos"])
    approx = pytest.approx
    assert r.accuracy == approx(8 / 14)
    assert r.precision == approx([5 / 8, 1 / 2, 0.0])
    assert r.recall == approx([5 / 6, 3 / 5, 0.0])
    assert r.f1 == approx([5 / 7, 6 / 11, 0.0])
    assert r.support == [6, 5, 3]
    assert r.macro == approx({"precision": 3 / 8, "recall": 43 / 90, "f1": 97 / 231})
    assert r.weighted == approx({"precision": 25 / 56, "recall": 8 / 14, "f1": 270 / 539})
    assert all(not math.isnan(v) for v in r.precision + r.recall + r.f1)
    text = str(r)
    assert "neu" in text and "macro avg" in text and "0.5714" in text


def test_report_class_without_examples_and_errors():
    # true class 1 has no examples but is predicted once: precision 0/1, recall 0/0 -> 0.0
    r = C.classification_report([[2, 1], [0, 0]])
    assert r.precision == pytest.approx([1.0, 0.0]) and r.recall == pytest.approx([2 / 3, 0.0])
    assert r.f1 == pytest.approx([0.8, 0.0]) and r.names == ["0", "1"]
    with pytest.raises(ValueError, match="empty"):
        C.classification_report(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="square"):
        C.classification_report(torch.zeros(2, 3))


def test_report_agrees_with_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (300,), generator=g)
    preds = torch.where(torch.rand(300, generator=g) < 0.6, labels, torch.randint(0, 3, (300,), generator=g))
    r = C.classification_report(C.confusion_matrix(preds, labels, 4))
    p, rec, f, s = metrics.precision_recall_fscore_support(labels, preds, labels=[0, 1, 2, 3], zero_division=0)
    assert r.precision == pytest.approx(p.tolist()) and r.recall == pytest.approx(rec.tolist())
    assert r.f1 == pytest.approx(f.tolist()) and r.support == s.tolist()
    for avg in ("macro", "weighted"):
        p, rec, f, _ = metrics.precision_recall_fscore_support(labels, preds, labels=[0, 1, 2, 3],
                                                               average=avg, zero_division=0)
        assert getattr(r, avg) == pytest.approx({"precision": p, "recall": rec, "f1": f})
    assert r.accuracy == pytest.approx(metrics.accuracy_score(labels, preds))


# ------------------------------------------------------------------ pooling


def test_masked_mean_pool_against_a_loop():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(4, 5, 3, generator=g)  # (B, T, D)
    mask = torch.tensor([[1, 1, 1, 1, 1],
                         [1, 1, 0, 0, 0],
                         [0, 0, 0, 0, 0],   # all padding
                         [1, 0, 1, 0, 1]])  # holes (left and middle padding)
    expected = torch.zeros(4, 3)
    for b in range(4):
        count = 0
        for t in range(5):
            if mask[b, t]:
                expected[b] += hidden[b, t]
                count += 1
        if count:
            expected[b] /= count
    pooled = C.masked_mean_pool(hidden, mask)
    assert pooled.shape == (4, 3)
    torch.testing.assert_close(pooled, expected)
    assert torch.equal(pooled[2], torch.zeros(3))  # zeros, not nan
    torch.testing.assert_close(C.masked_mean_pool(hidden, mask.bool()), expected)


def test_cls_pool_takes_the_first_token():
    hidden = torch.arange(24.0).view(2, 4, 3)  # (B, T, D)
    assert C.cls_pool(hidden).tolist() == [[0.0, 1.0, 2.0], [12.0, 13.0, 14.0]]


# ------------------------------------------------------------------ bag of words

SENTENCES = ["The film is not good", "a good good film", "not bad at all"]


def test_bag_of_words_vocabulary():
    bag = C.BagOfWords().fit(SENTENCES)
    # most frequent first (good 3, film 2, not 2), ties in alphabetical order
    assert list(bag.vocab)[:3] == ["good", "film", "not"] and len(bag) == 9
    assert C.BagOfWords(min_count=2).fit(SENTENCES).vocab == {"good": 0, "film": 1, "not": 2}
    bigrams = C.BagOfWords(bigrams=True).fit(SENTENCES)
    # 10 distinct bigrams: the film, film is, is not, not good, a good, good good, good film,
    # not bad, bad at, at all
    assert "not good" in bigrams.vocab and "good good" in bigrams.vocab and len(bigrams) == 9 + 10
    assert C.BagOfWords(bigrams=True).tokens("Not  GOOD") == ["not", "good", "not good"]


@pytest.mark.parametrize("weighting, expected", [
    ("count", [2.0, 1.0, 0.0]),
    ("tf", [2 / 4, 1 / 4, 0.0]),
    ("binary", [1.0, 1.0, 0.0]),
])
def test_bag_of_words_vectors(weighting, expected):
    bag = C.BagOfWords(min_count=2, weighting=weighting).fit(SENTENCES)  # good, film, not
    x = bag.transform(["good film , good", "unknown words only"], dense=True)
    assert x.tolist() == [expected, [0.0, 0.0, 0.0]]
    sparse = bag.transform(["good film , good", "unknown words only"])
    assert sparse.is_sparse and torch.equal(sparse.to_dense(), x)


def test_bow_classifier_is_a_linear_model_on_the_vectors():
    bag = C.BagOfWords(bigrams=True, weighting="tf").fit(SENTENCES)
    model = C.BowClassifier(bag, num_classes=3)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.weight.weight.copy_(torch.randn(len(bag), 3, generator=g))
        model.bias.copy_(torch.randn(3, generator=g))
    texts = SENTENCES + ["nothing known", "good not good"]
    ids, weights, _ = bag.encode(texts)
    x = bag.transform(texts, dense=True)  # (N, V)
    torch.testing.assert_close(model(ids, weights), x @ model.weight.weight + model.bias)
    assert model.predict(texts).tolist() == (x @ model.weight.weight + model.bias).argmax(-1).tolist()


def test_bow_baseline_learns_the_synthetic_sample_deterministically():
    rows = data.synthetic_sst2()
    train, dev = rows["train"], rows["validation"]
    args = ([t for _, t in train], [lb for lb, _ in train], [t for _, t in dev], [lb for lb, _ in dev])
    first = C.train_bow_classifier(*args, epochs=10, lr=0.05)
    again = C.train_bow_classifier(*args, epochs=10, lr=0.05)
    assert first.dev_accuracy > 0.7, first.dev_accuracy
    assert first.losses[-1] < first.losses[0]
    assert again.dev_accuracy == first.dev_accuracy and again.losses == first.losses
    assert torch.equal(again.model.weight.weight, first.model.weight.weight)
    other = C.train_bow_classifier(*args, epochs=10, lr=0.05, seed=7)
    assert other.losses != first.losses  # the seed sets the order of the batches


def test_bow_errors():
    with pytest.raises(ValueError, match="weighting"):
        C.BagOfWords(weighting="tfidf")
    with pytest.raises(RuntimeError, match="fit"):
        C.BagOfWords().encode(["x"])
    with pytest.raises(ValueError, match="2 train sentences but 1 labels"):
        C.train_bow_classifier(["a b", "c"], [0], ["a"], [0])
    with pytest.raises(ValueError, match="1 dev sentences but 2 labels"):
        C.train_bow_classifier(["a b", "c"], [0, 1], ["a"], [0, 1])
    bag = C.BagOfWords().fit(["a b"])
    assert C.BowClassifier(bag).predict([]).shape == (0,)
