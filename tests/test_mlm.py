"""Tests for lmcourse.mlm: the masking rule (against transformers' collator), the collator, masked
accuracy, a tiny BERT trained with the course Trainer, and the saved checkpoint."""

import math

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer, DataCollatorForLanguageModeling

from lmcourse import config, data, mlm
from lmcourse import tokenization as tk
from lmcourse.train import TrainConfig, Trainer

IGNORE = mlm.IGNORE_INDEX


@pytest.fixture(scope="module")
def sentences():
    return mlm.offline_sentences("train").texts[:1500]


@pytest.fixture(scope="module")
def tokenizer(sentences, tmp_path_factory):
    folder = tmp_path_factory.mktemp("wordpiece")
    tk.save_for_transformers(tk.train_wordpiece(sentences, vocab_size=400), folder)
    return tk.load_tokenizer(folder)


@pytest.fixture(scope="module")
def encoded(tokenizer, sentences):
    return mlm.encode(tokenizer, sentences, max_length=40)


def _batch(tokenizer, encoded, n=400):
    ids = mlm.MLMCollator.from_tokenizer(tokenizer).pad([e["input_ids"] for e in encoded[:n]],
                                                         tokenizer.pad_token_id)  # (B, T)
    return ids, mlm.special_tokens_mask_of(ids, tokenizer.all_special_ids)


# --------------------------------------------------------------------------- masking rule


def test_mask_tokens_equals_transformers_collator_with_the_same_seed(tokenizer, encoded):
    ids, special = _batch(tokenizer, encoded)
    torch.manual_seed(7)
    hf = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)(
        [{"input_ids": e["input_ids"]} for e in encoded[:400]])
    masked, labels = mlm.mask_tokens(ids, special, tokenizer.mask_token_id, len(tokenizer),
                                     generator=torch.Generator().manual_seed(7))
    assert torch.equal(hf["input_ids"], masked)
    assert torch.equal(hf["labels"], labels)


@pytest.mark.parametrize("p", [0.15, 0.4])
def test_masking_statistics_match_transformers_within_tolerance(tokenizer, encoded, p):
    ids, special = _batch(tokenizer, encoded, n=1500)
    torch.manual_seed(1)
    hf = DataCollatorForLanguageModeling(tokenizer, mlm_probability=p)(
        [{"input_ids": e["input_ids"]} for e in encoded[:1500]])
    masked, labels = mlm.mask_tokens(ids, special, tokenizer.mask_token_id, len(tokenizer), p,
                                     generator=torch.Generator().manual_seed(2))  # other draws
    V = len(tokenizer)
    want = mlm.masking_statistics(ids, special, hf["input_ids"], hf["labels"], tokenizer.mask_token_id, V)
    got = mlm.masking_statistics(ids, special, masked, labels, tokenizer.mask_token_id, V)
    assert abs(got["selected_rate"] - p) < 0.01
    assert abs(got["mask_share"] - 0.8) < 0.03
    assert abs(got["random_share"] - 0.1) < 0.03 and abs(got["unchanged_share"] - 0.1) < 0.03
    for k in ("selected_rate", "mask_share", "random_share", "unchanged_share"):
        assert abs(got[k] - want[k]) < 0.03, k
    for k in ("specials_selected", "unlabelled_changed"):
        assert got[k] == want[k] == 0.0
    assert got["labels_are_originals"] == want["labels_are_originals"] == 1.0


def test_specials_and_padding_never_selected_and_labels_ignored_elsewhere(tokenizer, encoded):
    ids, special = _batch(tokenizer, encoded)
    masked, labels = mlm.mask_tokens(ids, special, tokenizer.mask_token_id, len(tokenizer), 0.9,
                                     generator=torch.Generator().manual_seed(0))
    assert (ids == tokenizer.pad_token_id).any() and special.any()
    assert (labels[special] == IGNORE).all()
    assert torch.equal(masked[special], ids[special])
    selected = labels != IGNORE
    assert torch.equal(labels[selected], ids[selected])       # labels are the originals
    assert torch.equal(masked[~selected], ids[~selected])     # unselected inputs untouched
    assert masked.dtype == labels.dtype == ids.dtype and masked.shape == ids.shape


def test_masking_is_seeded_and_leaves_inputs_alone(tokenizer, encoded):
    ids, special = _batch(tokenizer, encoded, n=50)
    ids0, special0 = ids.clone(), special.clone()
    a = mlm.mask_tokens(ids, special, 4, len(tokenizer), generator=torch.Generator().manual_seed(3))
    b = mlm.mask_tokens(ids, special, 4, len(tokenizer), generator=torch.Generator().manual_seed(3))
    c = mlm.mask_tokens(ids, special, 4, len(tokenizer), generator=torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    assert torch.equal(ids, ids0) and torch.equal(special, special0)


def test_masking_statistics_catch_a_broken_rule():
    ids = torch.randint(5, 100, (64, 64), generator=torch.Generator().manual_seed(0))
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = True
    masked = torch.where(special, ids, torch.full_like(ids, 4))  # everything [MASK]
    stats = mlm.masking_statistics(ids, special, masked, ids.clone(), 4, 100)
    assert stats["selected_rate"] == 1.0 and stats["mask_share"] == 1.0
    assert stats["specials_selected"] == 1.0  # special positions carry labels


# --------------------------------------------------------------------------- collator


def test_collator_pads_masks_and_keeps_premasked_examples(tokenizer, encoded):
    collator = mlm.MLMCollator.from_tokenizer(tokenizer, pad_to_multiple_of=8)
    examples = encoded[:5]
    n = [len(e["input_ids"]) for e in examples]
    torch.manual_seed(0)
    batch = collator(examples)
    T = math.ceil(max(n) / 8) * 8
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert all(v.shape == (5, T) and v.dtype == torch.long for v in batch.values())
    for i, k in enumerate(n):
        assert batch["attention_mask"][i, :k].all() and not batch["attention_mask"][i, k:].any()
        assert (batch["input_ids"][i, k:] == tokenizer.pad_token_id).all()
        assert (batch["labels"][i, k:] == IGNORE).all()
        assert batch["labels"][i, 0] == IGNORE and batch["labels"][i, k - 1] == IGNORE  # [CLS] [SEP]
    fixed = mlm.fixed_masks(examples, collator, torch.Generator().manual_seed(0))
    assert fixed == mlm.fixed_masks(examples, collator, torch.Generator().manual_seed(0))
    padded = collator(fixed)
    for i, e in enumerate(fixed):
        assert padded["input_ids"][i, :len(e["input_ids"])].tolist() == e["input_ids"]
        assert padded["labels"][i, :len(e["labels"])].tolist() == e["labels"]
    with pytest.raises(ValueError, match="labels"):
        collator([fixed[0], examples[1]])


def test_length_grouped_batches_cover_everything_with_little_padding(encoded):
    lengths = [len(e["input_ids"]) for e in encoded]
    batches = mlm.length_grouped_batches(lengths, 16, seed=0, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches == mlm.length_grouped_batches(lengths, 16, seed=0, epoch=0)
    assert batches != mlm.length_grouped_batches(lengths, 16, seed=0, epoch=1)

    def padding(bs):
        return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in bs)

    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()
    random_batches = [order[i:i + 16] for i in range(0, len(order), 16)]
    assert padding(batches) < 0.5 * padding(random_batches)


# --------------------------------------------------------------------------- accuracy


def test_masked_accuracy_on_hand_made_logits():
    logits = torch.full((2, 3, 4), -1.0)
    logits[0, 0, 2] = logits[0, 1, 1] = logits[0, 2, 3] = 5.0   # predictions 2 1 3
    logits[1, 0, 0] = logits[1, 1, 0] = logits[1, 2, 2] = 5.0   # predictions 0 0 2
    labels = torch.tensor([[2, IGNORE, 0], [IGNORE, 0, 1]])      # right: (0,0), (1,1)
    assert mlm.masked_accuracy(logits, labels) == 0.5
    assert mlm.masked_accuracy(logits, torch.full((2, 3), IGNORE)) == 0.0
    assert mlm.masked_accuracy(logits, logits.argmax(-1)) == 1.0
    pooled = mlm.mlm_metrics([logits[:1], logits[1:]], [{"labels": labels[:1]}, {"labels": labels[1:]}])
    assert pooled == {"masked_accuracy": 0.5}
    # pooled, not a mean of batch accuracies: 1/2 right and 0/1 right pool to 1/3
    lopsided = torch.tensor([[2, 1, IGNORE], [IGNORE, IGNORE, 1]])
    got = mlm.mlm_metrics([logits[:1], logits[1:]], [{"labels": lopsided[:1]}, {"labels": lopsided[1:]}])
    assert got["masked_accuracy"] == pytest.approx(2 / 3)


# --------------------------------------------------------------------------- training and saving


@pytest.fixture(scope="module")
def trained(tokenizer, encoded):
    config.seed_everything(0)
    model = mlm.small_bert(tokenizer, d_model=32, n_layers=2, n_heads=2, max_positions=40)
    collator = mlm.MLMCollator.from_tokenizer(tokenizer)
    train = encoded[:256]
    valid = mlm.fixed_masks(encoded[:64], collator, torch.Generator().manual_seed(1))  # seen sentences: fast to learn
    cfg = TrainConfig(max_steps=40, batch_size=32, lr=3e-3, warmup_steps=4, eval_every=20,
                      progress=False)
    trainer = Trainer(model, cfg, mlm.grouped_batches(train, collator, 32, seed=0), valid,
                      collate_fn=collator, metrics_fn=mlm.mlm_metrics, device="cpu")
    before = trainer.evaluate()
    trainer.train()
    return model, before, trainer.history


def test_tiny_bert_trained_with_the_course_trainer_learns(trained, tokenizer):
    model, before, history = trained
    assert before["eval_loss"] == pytest.approx(math.log(len(tokenizer)), abs=0.7)
    after = history.eval[-1]
    assert after["step"] == 40 and len(history.eval) == 2
    assert after["eval_loss"] < before["eval_loss"] - 0.5
    assert after["eval_masked_accuracy"] > before["eval_masked_accuracy"]


def test_saved_checkpoint_reloads_with_from_pretrained(trained, tokenizer, tmp_path):
    model, _, _ = trained
    folder = mlm.save_pretrained_bert(model, tokenizer, tmp_path / "bert")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    reloaded = AutoModelForMaskedLM.from_pretrained(folder).eval()
    tok2 = AutoTokenizer.from_pretrained(folder)
    texts = ["The committee met in Paris on Monday .", "Shares rose 3 percent ."]
    enc, enc2 = tokenizer(texts, padding=True, return_tensors="pt"), tok2(texts, padding=True, return_tensors="pt")
    assert torch.equal(enc["input_ids"], enc2["input_ids"]) and tok2.mask_token_id == 4
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**enc).logits, reloaded(**enc2).logits)
    again, tok3 = mlm.load_pretrained_bert(folder, device="cpu")
    with torch.no_grad():
        assert torch.equal(again(**enc).logits, reloaded(**enc2).logits)
    with pytest.raises(FileNotFoundError, match="lesson 05b"):
        mlm.load_pretrained_bert(tmp_path / "nothing")


def test_saving_over_a_checkpoint_is_atomic(trained, tokenizer, tmp_path, monkeypatch):
    """A save that dies halfway (the tokenizer fails after the weights were written) leaves the
    previous checkpoint complete and unchanged, and no half folder under the name."""
    model, _, _ = trained
    folder = mlm.save_pretrained_bert(model, tokenizer, tmp_path / "bert")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # a different model, so a half-written save would show

    def dies(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(type(tokenizer), "save_pretrained", dies)
    with pytest.raises(OSError, match="disk full"):
        mlm.save_pretrained_bert(model, tokenizer, folder)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["bert"]  # no temp folder left behind
    with torch.no_grad():
        for p in model.parameters():
            p.sub_(1.0)


def test_fill_mask_and_blanks(trained, tokenizer, sentences):
    model, _, _ = trained
    blanks = mlm.make_blanks(tokenizer, sentences, n=4, generator=torch.Generator().manual_seed(0), max_words=20)
    assert len(blanks) == 4
    for text, word in blanks:
        assert 6 <= len(text.split()) <= 20
        assert text.count(tokenizer.mask_token) == 1 and len(tokenizer.tokenize(word)) == 1
        assert text.replace(tokenizer.mask_token, word) in sentences
    top = mlm.fill_mask(model, tokenizer, [t for t, _ in blanks], top_k=3)
    assert [len(t) for t in top] == [3] * 4
    for row in top:
        probs = [p for _, p in row]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    with pytest.raises(ValueError, match="MASK"):
        mlm.fill_mask(model, tokenizer, ["no blank here"])


def test_default_checkpoint_dir(monkeypatch, tmp_path):
    monkeypatch.setenv(data.ENV_CACHE, str(tmp_path))
    monkeypatch.setenv(config.ENV_MODE, "smoke")
    assert mlm.default_checkpoint_dir() == tmp_path / "checkpoints" / "bert-mlm-conll" / "smoke"
    assert mlm.default_checkpoint_dir(mode="full").name == "full"
    assert mlm.default_checkpoint_dir("x", root=tmp_path / "r", mode="quick") == tmp_path / "r" / "x" / "quick"


# --------------------------------------------------------------------------- data


def test_news_sentences_falls_back_offline_and_says_so(monkeypatch, capsys):
    monkeypatch.delenv(config.ENV_DATA_DIR, raising=False)
    train, valid = mlm.news_sentences("train"), mlm.news_sentences("valid")
    assert not train.news and "offline" in train.source and "offline stand-in" in capsys.readouterr().out
    assert len(train.texts) > 1000 and len(valid.texts) > 100
    assert not set(train.texts) & set(valid.texts)


def test_news_sentences_reads_conll_when_present():
    if config.data_dir_from_env() is None or not (config.data_dir_from_env() / "conll2003").is_dir():
        pytest.skip("no CoNLL-2003 data in $LMCOURSE_DATA_DIR")
    train = mlm.news_sentences("train")
    assert train.news and train.source == "CoNLL-2003 train" and len(train.texts) > 10_000
    assert all(t == " ".join(t.split()) for t in train.texts[:100])


def test_metrics_from_kept_ids_equal_metrics_from_logits():
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(2, 5, 9, generator=g), torch.randn(3, 4, 9, generator=g)]
    labels = [torch.randint(0, 9, (2, 5), generator=g), torch.randint(0, 9, (3, 4), generator=g)]
    for lab in labels:
        lab[torch.rand(lab.shape, generator=g) < 0.5] = IGNORE
    batches = [{"labels": lab} for lab in labels]
    kept = [mlm.predicted_ids(lg) for lg in logits]
    assert kept[0].shape == (2, 5) and kept[0].dtype == torch.long
    assert mlm.mlm_metrics(kept, batches) == mlm.mlm_metrics(logits, batches)


def test_context_free_baselines():
    M, F = 4, 7  # [MASK] id, the most frequent token
    examples = [
        {"input_ids": [2, M, 9, 11, 3], "labels": [IGNORE, 7, 9, 12, IGNORE]},  # masked, kept, random
        {"input_ids": [2, M, M, 3], "labels": [IGNORE, 8, 7, IGNORE]},
    ]
    # labelled: 7 (shown [MASK]), 9 (shown 9), 12 (shown 11), 8 ([MASK]), 7 ([MASK])
    base = mlm.context_free_baselines(examples, most_frequent_id=F, mask_token_id=M)
    assert base["most_frequent"] == pytest.approx(2 / 5)  # the two 7s
    assert base["copy_visible"] == pytest.approx(3 / 5)   # the two 7s and the visible 9
