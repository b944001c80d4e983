"""Tests for lmcourse.peft_layers: LoRA against peft's, adapters, parameter counts."""

import copy
import math

import pytest
import torch
import torch.nn as nn
import transformers

from lmcourse import peft_layers as pl

peft = pytest.importorskip("peft")
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

D, LAYERS, R, ALPHA = 32, 2, 4, 8


def tiny_bert(seed=0, cls=transformers.BertModel, **kwargs):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=D, num_hidden_layers=LAYERS,
                                  num_attention_heads=2, intermediate_size=64,
                                  max_position_embeddings=64, **kwargs)
    return cls(cfg).eval()


def inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    return ids, mask


def test_lora_forward_is_the_formula():
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(2, 5, 6, generator=g), torch.randn(3, 6, generator=g), torch.randn(3, generator=g)
    a, bb = torch.randn(2, 6, generator=g), torch.randn(3, 2, generator=g)
    want = x @ w.T + b + (ALPHA / 2) * x @ (bb @ a).T
    torch.testing.assert_close(pl.lora_forward(x, w, b, a, bb, ALPHA), want)
    torch.testing.assert_close(pl.lora_forward(x, w, None, a, bb, ALPHA), want - b)


def test_lora_linear_starts_as_base_and_merges():
    g = torch.Generator().manual_seed(0)
    base = nn.Linear(6, 3)
    ref = copy.deepcopy(base)
    layer = pl.LoRALinear(base, r=2, alpha=ALPHA, generator=g)
    x = torch.randn(4, 6, generator=g)
    torch.testing.assert_close(layer(x), ref(x), rtol=0, atol=0)  # B = 0: the base model exactly
    assert torch.equal(layer.lora_B, torch.zeros(3, 2))
    bound = 1 / math.sqrt(6)  # kaiming_uniform(a=sqrt(5)) on fan_in 6
    assert layer.lora_A.abs().max() <= bound and layer.lora_A.abs().max() > 0.5 * bound
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == ["lora_A", "lora_B"]
    with torch.no_grad():
        layer.lora_B.normal_(generator=g)
    unmerged = layer(x)
    torch.testing.assert_close(unmerged, pl.lora_forward(x, ref.weight, ref.bias, layer.lora_A,
                                                         layer.lora_B, ALPHA))
    assert not torch.allclose(unmerged, ref(x))
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer.base.weight, ref.weight + ALPHA / 2 * layer.lora_B @ layer.lora_A)
    torch.testing.assert_close(layer(x), unmerged, atol=1e-6, rtol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, ref.weight, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(layer(x), unmerged, atol=1e-6, rtol=1e-5)


def test_lora_gradients_reach_only_a_and_b():
    g = torch.Generator().manual_seed(0)
    layer = pl.LoRALinear(nn.Linear(6, 3), r=2, alpha=4, generator=g)
    with torch.no_grad():
        layer.lora_B.normal_(generator=g)
    layer(torch.randn(5, 6, generator=g)).pow(2).sum().backward()
    assert layer.base.weight.grad is None and layer.base.bias.grad is None
    assert layer.lora_A.grad.abs().sum() > 0 and layer.lora_B.grad.abs().sum() > 0


def _copy_peft_weights(peft_model, ours):
    """Give both models the same nonzero A and B (B random, so the update is not zero)."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in peft_model.modules():
            if isinstance(m, peft.tuners.lora.Linear):
                m.lora_B["default"].weight.normal_(generator=g)
    assert pl.copy_lora_from_peft(peft_model, ours) > 0


@pytest.mark.parametrize("targets", [("query", "value"), ("query", "key", "value", "dense")])
def test_apply_lora_equals_peft(targets):
    base = tiny_bert()
    ours = copy.deepcopy(base)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(
        r=R, lora_alpha=ALPHA, target_modules=list(targets), lora_dropout=0.0)).eval()
    names = pl.apply_lora(ours, targets, r=R, alpha=ALPHA)
    assert len(names) == sum(1 for n in theirs.named_modules()
                             if isinstance(n[1], peft.tuners.lora.Linear))
    assert pl.count_parameters(ours) == theirs.get_nb_trainable_parameters()
    ids, mask = inputs()
    with torch.no_grad():
        plain = base(ids, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(ours(ids, attention_mask=mask).last_hidden_state, plain,
                                   rtol=0, atol=0)  # B = 0: no change yet
    _copy_peft_weights(theirs, ours)
    with torch.no_grad():
        want = theirs(input_ids=ids, attention_mask=mask).last_hidden_state
        got = ours(ids, attention_mask=mask).last_hidden_state
        assert (want - plain).abs().max() > 1e-2  # the update changes the output
        assert (got - want).abs().max() <= 1e-6
        assert pl.merge_lora(ours) == len(names)
        assert (ours(ids, attention_mask=mask).last_hidden_state - want).abs().max() <= 1e-5


def test_apply_lora_trainable_count_and_head():
    model = tiny_bert(cls=transformers.BertForTokenClassification, num_labels=9)
    total = sum(p.numel() for p in model.parameters())
    pl.apply_lora(model, ("query", "value"), r=R, alpha=ALPHA, train_also=("classifier",))
    lora = LAYERS * 2 * pl.lora_parameters(D, D, R)
    assert lora == LAYERS * 2 * R * (D + D) == 1024
    assert pl.count_parameters(model) == (lora + D * 9 + 9, total + lora)
    with pytest.raises(ValueError, match="linear layers are named"):
        pl.apply_lora(tiny_bert(), ("q_proj",))


def test_adapter_starts_as_identity_and_inserts_into_bert():
    g = torch.Generator().manual_seed(0)
    a = pl.Adapter(D, 8, generator=g)
    x = torch.randn(2, 5, D, generator=g)
    assert torch.equal(a(x), x)
    assert sum(p.numel() for p in a.parameters()) == pl.adapter_parameters(D, 8) == 2 * D * 8 + 8 + D
    with torch.no_grad():
        a.up.weight.normal_(generator=g)
    assert not torch.allclose(a(x), x)

    base = tiny_bert()
    model = copy.deepcopy(base)
    names = pl.add_adapters(model, 8, generator=g)
    assert names == [f"encoder.layer.{i}.output.dense" for i in range(LAYERS)]
    ids, mask = inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(ids, attention_mask=mask).last_hidden_state,
                                   base(ids, attention_mask=mask).last_hidden_state, rtol=0, atol=0)
    assert pl.count_parameters(model)[0] == LAYERS * pl.adapter_parameters(D, 8)
    with torch.no_grad():
        model.encoder.layer[1].output.dense.adapter.up.weight.normal_(generator=g)
        changed = model(ids, attention_mask=mask).last_hidden_state
    assert not torch.allclose(changed, base(ids, attention_mask=mask).last_hidden_state)
    both = pl.add_adapters(copy.deepcopy(base), 8, places=("output", "attention"))
    assert len(both) == 2 * LAYERS


@pytest.mark.parametrize("hidden", [None, 16])
def test_prefix_tuning_count_equals_peft(hidden):
    model = tiny_bert(cls=transformers.BertForTokenClassification, num_labels=2)
    extra = {"prefix_projection": True, "encoder_hidden_size": hidden} if hidden else {}
    pm = peft.get_peft_model(model, peft.PrefixTuningConfig(
        task_type="TOKEN_CLS", num_virtual_tokens=5, **extra))
    prefix = sum(p.numel() for n, p in pm.named_parameters() if p.requires_grad and "prompt_encoder" in n)
    assert pl.prefix_tuning_parameters(LAYERS, D, 5, hidden) == prefix
    assert pl.prefix_tuning_parameters(12, 768, 20) == 20 * 12 * 2 * 768
