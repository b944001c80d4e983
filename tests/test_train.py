"""lmcourse.train: the generic loop against plain arithmetic and transformers' own schedules."""

import math

import matplotlib
import pytest
import safetensors.torch
import torch
from torch import nn
from torch.nn import functional as F
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)
from transformers import Trainer as HFTrainer

import lmcourse as lm
from lmcourse import batching as bt
from lmcourse import checkpoints as ck
from lmcourse import train as tr
from lmcourse.transformer import LayerNorm

matplotlib.use("Agg")

CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a busy CPU two threads wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- tiny problems


class DictData(torch.utils.data.Dataset):
    """A map-style dataset of dicts: x (features) and labels."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


class Regressor(nn.Module):
    """A small MLP that returns the MSE loss as a scalar tensor (no dropout)."""

    def __init__(self, d=4, hidden=16):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x, labels):
        return F.mse_loss(self.net(x).squeeze(-1), labels)


class Classifier(nn.Module):
    """An MLP with dropout and a norm layer that returns {"loss", "logits"}."""

    def __init__(self, d=4, hidden=16, classes=3, p=0.2):
        super().__init__()
        self.inp = nn.Linear(d, hidden)
        self.ln = LayerNorm(hidden)  # a name without "norm": only its type says it is one
        self.drop = nn.Dropout(p)
        self.out = nn.Linear(hidden, classes)
        self.seen_dtype = None

    def forward(self, x, labels=None):
        h = self.inp(x)
        self.seen_dtype = h.dtype  # what autocast produced
        logits = self.out(self.drop(torch.tanh(self.ln(h))))
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


def regression_data(n=64, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, generator=g)
    return DictData(x, x @ w + 0.5)


def classification_data(n=96, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return DictData(x, y)


def cfg_(**kw):
    base = dict(max_steps=10, batch_size=8, lr=1e-2, progress=False, seed=0)
    base.update(kw)
    return tr.TrainConfig(**base)


def tiny_gpt(dropout=0.1):
    lm.seed_everything(0)
    c = GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=4,
                   resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                   bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(c)


def token_data(n=48, T=12, vocab=50, seed=0):
    """A learnable pattern: each sequence counts up from a random start (mod vocab)."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, vocab, (n, 1), generator=g)
    ids = (start + torch.arange(T)) % vocab
    return [{"input_ids": row, "labels": row} for row in ids]


# --------------------------------------------------------------------------- losses and batches


def test_get_loss_accepts_model_output_dict_and_scalar():
    from transformers.modeling_outputs import CausalLMOutput

    t = torch.tensor(2.5)
    assert tr.get_loss(CausalLMOutput(loss=t)) is t
    assert tr.get_loss({"loss": t, "logits": None}) is t
    assert tr.get_loss(t) is t
    with pytest.raises(TypeError, match="not a scalar"):
        tr.get_loss(torch.zeros(3))
    with pytest.raises(TypeError, match="no loss"):
        tr.get_loss({"logits": torch.zeros(3)})


def test_loss_goes_down_on_regression():
    lm.seed_everything(0)
    t = tr.Trainer(Regressor(), cfg_(max_steps=60, lr=3e-2, warmup_steps=5), regression_data(),
                   device=CPU)
    hist = t.train()
    first = sum(r["loss"] for r in hist.train[:5]) / 5
    last = sum(r["loss"] for r in hist.train[-5:]) / 5
    assert len(hist.train) == 60 and last < 0.1 * first


def test_classification_with_eval_and_metrics_and_custom_loss_fn():
    def accuracy(logits, batches):
        pred = torch.cat([lg.argmax(-1) for lg in logits])
        gold = torch.cat([b["labels"] for b in batches])
        return {"accuracy": (pred == gold).float().mean().item()}

    lm.seed_everything(0)
    data = classification_data()
    t = tr.Trainer(Classifier(), cfg_(max_steps=80, lr=3e-2, eval_every=40), data, data,
                   metrics_fn=accuracy, device=CPU)
    t.train()
    assert [r["step"] for r in t.history.eval] == [40, 80]
    assert t.history.eval[-1]["eval_accuracy"] > 0.8
    assert t.history.eval[-1]["eval_loss"] < t.history.train[0]["loss"]

    # a custom loss_fn(model, batch) gives the same loss as the model's own
    def loss_fn(model, batch):
        out = model(batch["x"])
        return F.cross_entropy(out["logits"].float(), batch["labels"]), out["logits"]

    t2 = tr.Trainer(t.model, t.cfg, data, data, loss_fn=loss_fn, metrics_fn=accuracy, device=CPU)
    assert t2.evaluate() == pytest.approx(t.evaluate(), rel=1e-6)
    # ... also when it returns a dict holding the loss, or the loss alone
    t3 = tr.Trainer(t.model, t.cfg, data, data, loss_fn=lambda m, b: m(**b), metrics_fn=accuracy,
                    device=CPU)
    assert t3.evaluate() == pytest.approx(t.evaluate(), rel=1e-6)
    t4 = tr.Trainer(t.model, t.cfg, data, data, loss_fn=lambda m, b: loss_fn(m, b)[0], device=CPU)
    assert t4.evaluate()["eval_loss"] == pytest.approx(t.evaluate()["eval_loss"], rel=1e-6)


def test_eval_loss_is_the_mean_over_examples():
    """Batches of unequal size (96 = 13 x 7 + 5) are weighted by their number of examples."""
    lm.seed_everything(0)
    data = classification_data()
    model = Classifier().eval()
    t = tr.Trainer(model, cfg_(eval_batch_size=7), data, data, device=CPU)
    with torch.no_grad():
        full = F.cross_entropy(model(data.x)["logits"], data.y).item()
    assert t.evaluate()["eval_loss"] == pytest.approx(full, rel=1e-5)
    assert t.evaluate(DictData(data.x[:10], data.y[:10]))["eval_loss"] != pytest.approx(full)
    capped = tr.Trainer(model, cfg_(eval_batch_size=7, max_eval_batches=2), data, data, device=CPU)
    with torch.no_grad():
        first14 = F.cross_entropy(model(data.x[:14])["logits"], data.y[:14]).item()
    assert capped.evaluate()["eval_loss"] == pytest.approx(first14, rel=1e-5)


def ragged_token_data(n=11, vocab=40, seed=0, every=3):
    """Sequences of 2 to 12 tokens, each with its own number of labelled positions (some none)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        ids = torch.randint(5, vocab, (2 + (i * 7) % 11,), generator=g)
        labels = torch.full_like(ids, -100)
        keep = torch.rand(len(ids), generator=g) < (0.0 if i % every == 0 else 0.2 + 0.07 * i)
        labels[keep] = ids[keep]
        out.append({"input_ids": ids, "labels": labels})
    return out


def pad_collate(examples):
    """Pad input_ids with 0, labels with -100; attention_mask 1 on tokens."""
    T = max(len(e["input_ids"]) for e in examples)
    batch = {"input_ids": torch.zeros(len(examples), T, dtype=torch.long),
             "attention_mask": torch.zeros(len(examples), T, dtype=torch.long),
             "labels": torch.full((len(examples), T), -100, dtype=torch.long)}
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        batch["input_ids"][i, :n], batch["attention_mask"][i, :n] = e["input_ids"], 1
        batch["labels"][i, :n] = e["labels"]
    return batch


def test_eval_loss_per_token_equals_the_whole_eval_set_as_one_batch():
    """MLM-style labels (-100 except at a few positions, some examples with none), uneven batches
    (11 = 3 + 3 + 3 + 2) and padding: eval_loss is the mean over every labelled token."""
    from transformers import BertForMaskedLM

    lm.seed_everything(0)
    model = BertForMaskedLM(BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, intermediate_size=37,
                                       max_position_embeddings=16)).eval()
    data = ragged_token_data()
    with torch.no_grad():
        whole = model(**pad_collate(data)).loss.item()
    for bs in (3, 4, 11):
        t = tr.Trainer(model, cfg_(eval_batch_size=bs), None, data, collate_fn=pad_collate, device=CPU)
        assert t.evaluate()["eval_loss"] == pytest.approx(whole, rel=1e-5), bs
        assert t.last_eval_loss_unit == "token"
    per_example = tr.Trainer(model, cfg_(eval_batch_size=3, eval_loss_per="example"), None, data,
                             collate_fn=pad_collate, device=CPU).evaluate()["eval_loss"]
    assert per_example != pytest.approx(whole, rel=1e-3)  # the old definition is measurably off


def test_eval_loss_per_next_token_for_causal_models_that_shift_labels():
    model = tiny_gpt(dropout=0.0).eval()
    data = ragged_token_data(n=9, every=4)
    for e in data:  # causal LM: labels are the inputs, padding excluded
        e["labels"] = e["input_ids"].clone()
    with torch.no_grad():
        whole = model(**pad_collate(data)).loss.item()
    t = tr.Trainer(model, cfg_(eval_batch_size=2), None, data, collate_fn=pad_collate, device=CPU)
    assert t.evaluate()["eval_loss"] == pytest.approx(whole, rel=1e-5)
    assert t.last_eval_loss_unit == "next_token"
    tok = tr.Trainer(model, cfg_(eval_batch_size=2, eval_loss_per="token"), None, data,
                     collate_fn=pad_collate, device=CPU)
    assert tok.evaluate()["eval_loss"] != pytest.approx(whole, rel=1e-5)


def test_eval_loss_of_sequence_labels_is_per_example():
    data = classification_data(n=20)
    t = tr.Trainer(Classifier().eval(), cfg_(eval_batch_size=6), data, data, device=CPU)
    t.evaluate()
    assert t.last_eval_loss_unit == "example"
    with pytest.raises(TypeError, match="labels"):
        bt.labelled_count({"input_ids": torch.zeros(2, 3)})
    assert bt.labelled_count({"labels": torch.tensor([[1, -100, 2], [-100, -100, 3]])}) == 3
    assert bt.labelled_count({"labels": torch.tensor([[1, -100, 2], [-100, -100, 3]])},
                             shifted=True) == 2


def test_transformers_models_train_unchanged():
    lm.seed_everything(0)
    t = tr.Trainer(tiny_gpt(dropout=0.0), cfg_(max_steps=40, lr=3e-3, warmup_steps=4),
                   token_data(), device=CPU)
    hist = t.train()
    assert hist.train[-1]["loss"] < 0.7 * hist.train[0]["loss"]

    lm.seed_everything(0)
    bert = BertForSequenceClassification(BertConfig(
        vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=32, num_labels=2))
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 40, (32, 10), generator=g)
    labels = (ids[:, 0] < 20).long()
    data = [{"input_ids": i, "attention_mask": torch.ones_like(i), "labels": y}
            for i, y in zip(ids, labels)]
    t = tr.Trainer(bert, cfg_(max_steps=30, lr=3e-3), data, data, device=CPU)
    before = t.evaluate()["eval_loss"]
    t.train()
    assert t.evaluate()["eval_loss"] < 0.5 * before


def test_factory_data_and_position_within_epoch():
    """A factory epoch -> batches works, and epochs advance when it runs dry."""
    data = regression_data(n=32)
    seen = []

    def factory(epoch):
        seen.append(epoch)
        return [{"x": data.x[i:i + 8], "labels": data.y[i:i + 8]} for i in range(0, 32, 8)]

    t = tr.Trainer(Regressor(), cfg_(max_steps=6), factory, device=CPU)
    t.train()
    assert seen == [0, 1] and (t.state.epoch, t.state.batch_in_epoch) == (1, 2)


def test_epoch_order_is_seeded_by_seed_and_epoch():
    a = bt.epoch_order(20, seed=3, epoch=0)
    assert a == bt.epoch_order(20, seed=3, epoch=0) and sorted(a) == list(range(20))
    assert a != bt.epoch_order(20, seed=3, epoch=1) and a != bt.epoch_order(20, seed=4, epoch=0)
    assert bt.epoch_order(5, 0, 0, shuffle=False) == [0, 1, 2, 3, 4]


def test_epochs_sets_total_steps():
    t = tr.Trainer(Regressor(), cfg_(epochs=2.0, batch_size=10, grad_accum_steps=2),
                   regression_data(n=64), device=CPU)
    assert t.total_steps == math.ceil(2 * (64 // 10) / 2)


# --------------------------------------------------------------------------- optimizer pieces


def test_grad_accumulation_equals_one_big_batch():
    data = regression_data(n=64)
    params = []
    for bs, k in ((32, 1), (8, 4)):
        lm.seed_everything(0)
        model = Regressor()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)  # SGD: an update proportional to the grad
        c = cfg_(max_steps=3, batch_size=bs, grad_accum_steps=k, max_grad_norm=None)
        t = tr.Trainer(model, c, data, optimizer=opt, device=CPU)
        t.train()
        params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(params[0], params[1], rtol=1e-5, atol=1e-6)


def tiny_bert_mlm():
    from transformers import BertForMaskedLM

    lm.seed_everything(0)
    return BertForMaskedLM(BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, intermediate_size=37,
                                      max_position_embeddings=16, hidden_dropout_prob=0.0,
                                      attention_probs_dropout_prob=0.0))


def causal_data():
    data = ragged_token_data(n=9, every=4)
    for e in data:  # causal LM: labels are the inputs (the model shifts them), padding excluded
        e["labels"] = e["input_ids"].clone()
    return data


@pytest.mark.parametrize("make_model, make_data, unit", [
    (tiny_bert_mlm, lambda: ragged_token_data(n=9, every=4), "token"),
    (lambda: tiny_gpt(dropout=0.0), causal_data, "next_token"),
])
def test_grad_accumulation_of_token_losses_equals_one_big_batch(make_model, make_data, unit):
    """k micro-batches holding uneven numbers of labelled tokens (some none, padding everywhere)
    are one batch k times larger, also where an epoch's last window is short: 9 examples are
    batches of 6 + 3, or windows of micro-batches (2 + 2 + 2) and (2 + 1). Two epochs."""
    data = make_data()
    runs = {}
    for name, bs, k, per in (("big", 6, 1, "auto"), ("accumulated", 2, 3, "auto"),
                             ("mean of micro-batches", 2, 3, "micro_batch")):
        model = make_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)  # SGD: an update proportional to the grad
        c = cfg_(epochs=2, batch_size=bs, grad_accum_steps=k, max_grad_norm=None, drop_last=False,
                 train_loss_per=per)
        t = tr.Trainer(model, c, data, collate_fn=pad_collate, optimizer=opt, device=CPU)
        assert t.total_steps == 4  # 2 steps per epoch, the second one short
        t.train()
        runs[name] = (t, torch.cat([p.detach().flatten() for p in model.parameters()]))
    big, acc = runs["big"][0], runs["accumulated"][0]
    assert acc.last_train_loss_unit == unit and (acc.state.epoch, acc.state.batch_in_epoch) == (2, 0)
    torch.testing.assert_close(runs["accumulated"][1], runs["big"][1], rtol=1e-5, atol=1e-6)
    assert [r["loss"] for r in acc.history.train] == pytest.approx(
        [r["loss"] for r in big.history.train], rel=1e-6)
    # the loss of a step is the big batch's loss: the mean over all its labelled tokens
    # dividing each micro-batch's mean by k instead is measurably off
    off = (runs["mean of micro-batches"][1] - runs["big"][1]).abs().max().item()
    assert off > 1e-3


def test_accumulation_window_stops_at_the_end_of_an_epoch():
    """5 micro-batches per epoch, k = 2: windows 2 + 2 + 1 in every epoch, also for a factory."""
    data = regression_data(n=40)
    c = cfg_(epochs=2, batch_size=8, grad_accum_steps=2)
    t = tr.Trainer(Regressor(), c, data, device=CPU)
    assert t.total_steps == 6
    positions = []
    t.callbacks.append(lambda tr_, rec: positions.append((tr_.state.epoch, tr_.state.batch_in_epoch)))
    t.train()
    assert positions == [(0, 2), (0, 4), (1, 0), (1, 2), (1, 4), (2, 0)]

    def factory(epoch):
        return [{"x": data.x[i:i + 8], "labels": data.y[i:i + 8]} for i in range(0, 40, 8)]

    f = tr.Trainer(Regressor(), cfg_(max_steps=6, batch_size=8, grad_accum_steps=2), factory,
                   device=CPU)
    seen = []
    f.callbacks.append(lambda tr_, rec: seen.append((tr_.state.epoch, tr_.state.batch_in_epoch)))
    f.train()
    assert seen == positions


def test_a_micro_batch_without_labelled_tokens_weighs_nothing():
    """Its mean loss is nan (0 / 0); the step's loss and gradient are the other micro-batch's."""
    data = ragged_token_data(n=4, every=1)[:2] + ragged_token_data(n=4, every=2)[1:2]
    assert [int((e["labels"] != -100).sum()) for e in data] == [0, 0, 2]
    model = tiny_bert_mlm()
    reference = tiny_bert_mlm()  # the same weights
    t = tr.Trainer(model, cfg_(max_steps=1, batch_size=2, grad_accum_steps=2, shuffle=False,
                               drop_last=False, max_grad_norm=None), data, collate_fn=pad_collate,
                   device=CPU)
    rec = t.train_step()
    loss = reference(**pad_collate(data[2:])).loss
    loss.backward()
    assert rec["loss"] == pytest.approx(loss.item(), rel=1e-6)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        if q.grad is None:
            assert p.grad is None or not p.grad.any(), name
        else:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_clipping_caps_the_gradient_norm():
    lm.seed_everything(0)
    model = Regressor()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    t = tr.Trainer(model, cfg_(max_steps=1, max_grad_norm=0.05, schedule="constant"),
                   regression_data(), optimizer=opt, device=CPU)
    rec = t.train_step()
    step = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.parameters())])
    assert rec["grad_norm"] > 0.5  # the raw gradient is large ...
    assert step.norm().item() == pytest.approx(0.05, rel=1e-4)  # ... the update is capped
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert grads.norm().item() == pytest.approx(0.05, rel=1e-4)


@pytest.mark.parametrize("schedule, hf", [("linear", get_linear_schedule_with_warmup),
                                          ("cosine", get_cosine_schedule_with_warmup)])
def test_schedule_matches_transformers(schedule, hf):
    total, warmup = 20, 5
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    ref = hf(opt, num_warmup_steps=warmup, num_training_steps=total)
    expected = []
    for _ in range(total + 1):
        expected.append(ref.get_last_lr()[0])
        opt.step()
        ref.step()
    ours = [tr.lr_factor(s, total, warmup, schedule) for s in range(total + 1)]
    assert ours == pytest.approx(expected, abs=1e-12)
    assert ours[0] == 0 and ours[warmup] == 1 and ours[total] == pytest.approx(0, abs=1e-12)
    # the trainer's recorded lr follows the same curve, scaled by the peak lr
    t = tr.Trainer(Regressor(), cfg_(max_steps=total, warmup_steps=warmup, schedule=schedule,
                                     lr=0.01), regression_data(), device=CPU)
    t.train()
    assert [r["lr"] for r in t.history.train] == pytest.approx([0.01 * e for e in expected[:total]])


def test_constant_schedule_matches_transformers():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    ref = get_constant_schedule_with_warmup(opt, num_warmup_steps=3)
    for s in range(10):
        assert tr.lr_factor(s, 10, 3, "constant") == pytest.approx(ref.get_last_lr()[0])
        opt.step()
        ref.step()


def test_no_weight_decay_on_biases_and_norms_like_transformers():
    lm.seed_everything(0)
    bert = BertForSequenceClassification(BertConfig(
        vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, num_labels=2))
    assert tr.decay_parameter_names(bert) == HFTrainer.get_decay_parameter_names(None, bert)
    # the course's own LayerNorm (not an nn.LayerNorm) is recognised by its type
    names = tr.decay_parameter_names(Classifier())
    assert names == ["inp.weight", "out.weight"]
    groups = tr.param_groups(Classifier(), 0.1)
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0] and len(groups[1]["params"]) == 4


def test_custom_optimizer_is_used():
    model = Regressor()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    t = tr.Trainer(model, cfg_(max_steps=2, schedule="constant"), regression_data(), optimizer=opt,
                   device=CPU)
    t.train()
    assert t.optimizer is opt and t.history.train[-1]["lr"] == 0.5


# --------------------------------------------------------------------------- early stopping


def _scripted(values):
    it = iter(values)
    return lambda logits, batches: {"score": next(it)}


@pytest.mark.parametrize("mode, values, stop_step", [
    ("min", [5, 4, 4, 4.5, 3, 3], 4),    # best at eval 2, then 2 evaluations without improvement
    ("max", [1, 2, 3, 3, 2, 9], 5),
    ("max", [1, 2, 3, 4, 5, 6], None),   # improves every time: runs to the end
])
def test_early_stopping_after_patience(mode, values, stop_step):
    data = classification_data()
    c = cfg_(max_steps=6, eval_every=1, early_stopping_metric="score", early_stopping_mode=mode,
             early_stopping_patience=2)
    t = tr.Trainer(Classifier(), c, data, data, metrics_fn=_scripted(values), device=CPU)
    t.train()
    if stop_step is None:
        assert not t.state.stopped_early and t.state.step == 6
    else:
        assert t.state.stopped_early and t.state.step == stop_step
        assert len(t.history.eval) == stop_step


def test_restore_best_loads_the_best_weights():
    data = classification_data()
    snapshots = []
    c = cfg_(max_steps=4, eval_every=1, early_stopping_metric="score", early_stopping_mode="max",
             early_stopping_patience=5, restore_best=True)
    t = tr.Trainer(Classifier(), c, data, data, metrics_fn=_scripted([1, 7, 2, 3]), device=CPU,
                   callbacks=[lambda tr_, rec: snapshots.append(tr_.model.out.weight.detach().clone())])
    t.train()
    assert t.state.best_step == 2
    assert torch.equal(t.model.out.weight, snapshots[1])


# --------------------------------------------------------------------------- checkpoints


def _gpt_trainer(tmp_path, n_total):
    c = cfg_(max_steps=n_total, batch_size=4, grad_accum_steps=2, lr=3e-3, warmup_steps=2,
             schedule="cosine", eval_every=3, checkpoint_dir=str(tmp_path), keep_last=2)
    data = token_data(n=40)  # 10 micro-batches per epoch: the run crosses epochs
    return tr.Trainer(tiny_gpt(dropout=0.1), c, data, token_data(n=8, seed=1), device=CPU)


def test_resume_equals_uninterrupted_run(tmp_path):
    n = 7
    straight = _gpt_trainer(tmp_path / "a", 2 * n)
    lm.seed_everything(5)  # the seed dropout starts from
    straight.train()

    first = _gpt_trainer(tmp_path / "b", 2 * n)
    lm.seed_everything(5)
    first.train(steps=n)
    path = first.save_checkpoint()
    assert path.name == f"step-{n:08d}"
    lm.seed_everything(123)  # a different RNG state: the checkpoint must restore the right one

    resumed = _gpt_trainer(tmp_path / "b", 2 * n)  # fresh model and trainer
    assert resumed.load_checkpoint(tmp_path / "b") == path
    assert (resumed.state.epoch, resumed.state.batch_in_epoch) == (1, 4)
    resumed.train()

    assert resumed.state.step == 2 * n
    assert resumed.history.train == straight.history.train
    assert resumed.history.eval == straight.history.eval
    for (name, p), q in zip(straight.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(p, q), name
    # tied weights stay tied after loading from safetensors
    assert resumed.model.lm_head.weight.data_ptr() == resumed.model.transformer.wte.weight.data_ptr()


def test_save_every_keeps_last_k(tmp_path):
    c = cfg_(max_steps=7, checkpoint_dir=str(tmp_path), save_every=2, keep_last=2)
    t = tr.Trainer(Regressor(), c, regression_data(), device=CPU)
    t.train()
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step-00000006", "step-00000007"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    st = safetensors.torch.load_file(tmp_path / "step-00000007" / tr.WEIGHTS_FILE)
    assert torch.equal(st["net.0.weight"], t.model.net[0].weight)


@pytest.mark.parametrize("crash", ["torch.save", "safetensors", "os.replace"])
def test_crash_mid_save_leaves_previous_checkpoint(tmp_path, monkeypatch, crash):
    c = cfg_(max_steps=4, checkpoint_dir=str(tmp_path), keep_last=3)
    t = tr.Trainer(Regressor(), c, regression_data(), device=CPU)
    t.train(steps=2)
    good = t.save_checkpoint()
    weights_at_2 = {k: v.clone() for k, v in t.model.state_dict().items()}
    t.train(steps=1)

    def half_write(original):
        def f(obj, path, *a, **k):
            with open(path, "wb") as fh:
                fh.write(b"half a file")  # some bytes reach the disk, then the process dies
            raise OSError("disk full")
        return f

    if crash == "torch.save":
        monkeypatch.setattr(torch, "save", half_write(torch.save))
    elif crash == "safetensors":
        monkeypatch.setattr(safetensors.torch, "save_model", half_write(None))
    else:
        def boom(src, dst):
            raise OSError("power cut")
        monkeypatch.setattr(ck.os, "replace", boom)
    with pytest.raises(OSError):
        t.save_checkpoint()
    monkeypatch.undo()

    assert ck.latest_checkpoint(tmp_path) == good
    assert [p.name for p in tmp_path.iterdir()] == [good.name]  # no temp folder left behind
    fresh = tr.Trainer(Regressor(), c, regression_data(), device=CPU)
    fresh.load_checkpoint(tmp_path)
    assert fresh.state.step == 2
    for k, v in fresh.model.state_dict().items():
        assert torch.equal(v, weights_at_2[k])


def test_hidden_temp_folder_of_a_killed_save_is_never_latest(tmp_path):
    t = tr.Trainer(Regressor(), cfg_(max_steps=3, checkpoint_dir=str(tmp_path)), regression_data(),
                   device=CPU)
    t.train(steps=1)
    good = t.save_checkpoint()
    (tmp_path / ".tmp-step-00000009-x").mkdir()  # as if a save of step 9 was killed (SIGKILL)
    (tmp_path / ".tmp-step-00000009-x" / tr.WEIGHTS_FILE).write_bytes(b"half")
    assert ck.latest_checkpoint(tmp_path) == good
    t.train(steps=1)
    t.save_checkpoint()
    assert sorted(p.name for p in tmp_path.iterdir()) == [good.name, "step-00000002"]


def test_resaving_a_step_replaces_it_atomically(tmp_path):
    t = tr.Trainer(Regressor(), cfg_(max_steps=2, checkpoint_dir=str(tmp_path)), regression_data(),
                   device=CPU)
    t.train(steps=1)
    p1 = t.save_checkpoint()
    with torch.no_grad():
        t.model.net[0].weight.fill_(3.0)
    assert t.save_checkpoint() == p1
    assert [p.name for p in tmp_path.iterdir()] == [p1.name]
    st = safetensors.torch.load_file(p1 / tr.WEIGHTS_FILE)
    assert torch.all(st["net.0.weight"] == 3.0)


# --------------------------------------------------------------------------- precision, plots


def test_bf16_autocast_on_cpu():
    lm.seed_everything(0)
    data = classification_data()
    t = tr.Trainer(Classifier(), cfg_(max_steps=3, mixed_precision=True), data, data, device=CPU)
    assert t.amp_dtype == torch.bfloat16 and t.scaler is None
    t.train()
    assert t.model.seen_dtype == torch.bfloat16  # the forward ran under autocast
    assert all(math.isfinite(r["loss"]) for r in t.history.train)
    assert t.model.inp.weight.grad.dtype == torch.float32  # master weights and grads stay fp32
    assert math.isfinite(t.evaluate()["eval_loss"])
    off = tr.Trainer(Classifier(), cfg_(max_steps=1), data, device=CPU)
    off.train()
    assert off.amp_dtype is None and off.model.seen_dtype == torch.float32


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_step_with_autocast():
    device = lm.get_device()
    lm.seed_everything(0)
    t = tr.Trainer(tiny_gpt(), cfg_(max_steps=2, lr=1e-3), token_data(), device=device)
    assert t.amp_dtype in (torch.bfloat16, torch.float16)
    assert (t.scaler is not None) == (t.amp_dtype == torch.float16)
    t.train()
    assert next(t.model.parameters()).device.type == device.type
    assert all(math.isfinite(r["loss"]) for r in t.history.train)
    assert t.model.lm_head.weight.grad.dtype == torch.float32


def test_plot_history_returns_a_figure():
    from matplotlib.figure import Figure

    data = classification_data()
    t = tr.Trainer(Classifier(), cfg_(max_steps=4, eval_every=2), data, data, device=CPU)
    fig = t.train().plot()
    assert isinstance(fig, Figure)
    loss_ax, lr_ax = fig.axes
    assert len(loss_ax.lines) == 2 and list(loss_ax.lines[1].get_xdata()) == [2, 4]
    assert list(lr_ax.lines[0].get_ydata()) == [r["lr"] for r in t.history.train]
    matplotlib.pyplot.close(fig)
    fig = t.history.plot(smooth=3)
    raw, smoothed, _ = fig.axes[0].lines
    losses = [r["loss"] for r in t.history.train]
    assert list(raw.get_ydata()) == losses
    assert list(smoothed.get_ydata()) == pytest.approx(tr.moving_average(losses, 3))
    matplotlib.pyplot.close(fig)


def test_moving_average():
    assert tr.moving_average([3.0, 1.0, 2.0, 6.0, 4.0], 2) == [3.0, 2.0, 1.5, 4.0, 5.0]
    assert tr.moving_average([1.0, 2.0], 5) == [1.0, 1.5]


def test_progress_bars_show_the_loss_and_switch_off(capsys):
    data = classification_data()
    tr.Trainer(Classifier(), cfg_(max_steps=3, eval_every=3, progress=True), data, data,
               device=CPU).train()
    err = capsys.readouterr().err
    assert "train" in err and "loss=" in err and "eval" in err
    tr.Trainer(Classifier(), cfg_(max_steps=3, eval_every=3), data, data, device=CPU).train()
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_config_rejects_bad_values():
    with pytest.raises(lm.config.ConfigError, match="schedule"):
        tr.TrainConfig(schedule="exp")
    with pytest.raises(lm.config.ConfigError, match="eval_every"):
        tr.TrainConfig(early_stopping_metric="eval_loss")
    for name in ("eval_every", "save_every", "log_every", "max_eval_batches"):
        with pytest.raises(lm.config.ConfigError, match=f"{name}=0.*at least 1"):
            tr.TrainConfig(**{name: 0})
    with pytest.raises(lm.config.ConfigError, match="eval_loss_per"):
        tr.TrainConfig(eval_loss_per="sentence")


def test_preprocess_logits_keeps_only_what_metrics_need():
    seen = []

    def accuracy_from_ids(kept, batches):
        seen.extend(k.dtype for k in kept)
        pred = torch.cat(kept)
        gold = torch.cat([b["labels"] for b in batches])
        return {"accuracy": (pred == gold).float().mean().item()}

    def accuracy(logits, batches):
        return accuracy_from_ids([lg.argmax(-1) for lg in logits], batches)

    lm.seed_everything(0)
    data = classification_data()
    t = tr.Trainer(Classifier(), cfg_(max_steps=40, lr=3e-2), data, data, metrics_fn=accuracy,
                   device=CPU)
    t.train()
    full = t.evaluate()
    seen.clear()
    t2 = tr.Trainer(t.model, t.cfg, data, data, metrics_fn=accuracy_from_ids, device=CPU,
                    preprocess_logits=lambda logits, batch: logits.argmax(-1))
    assert t2.evaluate() == pytest.approx(full, rel=1e-6)
    assert seen and all(d == torch.int64 for d in seen)  # ids were kept, not float logits
