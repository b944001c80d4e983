"""Activation checkpointing (lm.transformer.set_gradient_checkpointing) and its measurement
(lmcourse.memory): the same loss and gradients with and without it, less memory kept."""

import pytest
import torch
from transformers import BertConfig as HFBertConfig
from transformers import BertForMaskedLM, BertModel

import lmcourse as lm
from lmcourse import memory as mem
from lmcourse import train as tr
from lmcourse.transformer import (
    GPT,
    Bert,
    BertConfig,
    GPTConfig,
    is_gradient_checkpointing,
    set_gradient_checkpointing,
)

SIZES = dict(vocab_size=50, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_positions=16,
             dropout=0.2, attn_dropout=0.2)  # dropout on: the recomputation must replay its masks


def course_bert():
    return Bert(BertConfig(**SIZES))


def course_gpt():
    s = {k: v for k, v in SIZES.items() if k != "max_positions"}
    return GPT(GPTConfig(block_size=16, **s))


def hf_bert():
    return BertModel(BertConfig(**SIZES).to_hf(), add_pooling_layer=False)


def hf_bert_mlm():
    return BertForMaskedLM(HFBertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=4, intermediate_size=64,
                                        max_position_embeddings=16))


def loss_of(model, ids):
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    if not isinstance(out, torch.Tensor):
        out = out.logits if hasattr(out, "logits") else out.last_hidden_state
    return out.float().pow(3).mean()


def saved_bytes(model, ids):
    """Bytes of the tensors autograd keeps for the backward pass (distinct storages)."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_of(model, ids)
    return sum(seen.values())


@pytest.mark.parametrize("make", [course_bert, course_gpt, hf_bert, hf_bert_mlm],
                         ids=["course Bert", "course GPT", "BertModel", "BertForMaskedLM"])
def test_checkpointing_gives_the_same_loss_and_gradients(make):
    lm.seed_everything(0)
    ref = make().train()
    ids = torch.randint(1, 50, (3, 16), generator=torch.Generator().manual_seed(1))  # (B, T)
    results = []
    for on in (False, True):
        model = make().train()
        model.load_state_dict(ref.state_dict())
        set_gradient_checkpointing(model, on)
        lm.seed_everything(7)  # the same dropout draws in both runs
        loss = loss_of(model, ids)
        loss.backward()
        results.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()
                                      if p.grad is not None}, saved_bytes(model, ids)))
    (loss0, grads0, kept0), (loss1, grads1, kept1) = results
    assert loss1 == loss0
    assert grads1.keys() == grads0.keys() and len(grads0) > 10
    for name in grads0:
        torch.testing.assert_close(grads1[name], grads0[name], rtol=1e-5, atol=1e-7, msg=name)
    assert kept1 < kept0 / 2  # what the backward pass keeps: block inputs, not activations


def test_switch_off_again_and_models_without_blocks():
    for make in (course_bert, hf_bert_mlm):
        model = set_gradient_checkpointing(make())
        assert is_gradient_checkpointing(model)
        set_gradient_checkpointing(model, False)
        assert not is_gradient_checkpointing(model)
    holder = torch.nn.Sequential(torch.nn.Linear(2, 2), course_gpt())  # a model around one
    set_gradient_checkpointing(holder)
    assert holder[1].gradient_checkpointing and is_gradient_checkpointing(holder)
    with pytest.raises(TypeError, match="torch.utils.checkpoint"):
        set_gradient_checkpointing(torch.nn.Linear(2, 2))


def test_trainer_switches_it_on():
    model = hf_bert_mlm()
    tr.Trainer(model, tr.TrainConfig(gradient_checkpointing=True, progress=False), device="cpu")
    assert is_gradient_checkpointing(model)
    with pytest.raises(TypeError, match="activation checkpointing"):
        tr.Trainer(torch.nn.Linear(2, 2), tr.TrainConfig(gradient_checkpointing=True), device="cpu")


SMALL = mem.StepSpec(d_model=128, n_layers=4, n_heads=4, d_ff=512, seq_len=256, batch_size=4)


def test_checkpointing_lowers_the_peak_memory_of_a_cpu_step():
    """Each setting in a fresh process (peak resident memory): about a third of the memory."""
    r = mem.compare_checkpointing(SMALL, "cpu", repeats=1)
    assert r["with"]["loss"] == pytest.approx(r["without"]["loss"], rel=1e-6)
    assert r["without"]["peak_bytes"] > 40 * 2**20  # the activations of 4 blocks are kept
    assert r["memory_ratio"] < 0.6


@pytest.mark.cuda
def test_checkpointing_lowers_the_peak_cuda_memory():
    device = lm.get_device()
    for model in mem.MODELS:
        spec = mem.StepSpec(model=model, d_model=256, n_layers=4, n_heads=4, d_ff=1024,
                            seq_len=512, batch_size=8)
        r = mem.compare_checkpointing(spec, device, repeats=2)
        assert r["with"]["loss"] == pytest.approx(r["without"]["loss"], rel=1e-5), model
        assert r["memory_ratio"] < 0.6, (model, r)
        assert r["with"]["device"].startswith("cuda")
