"""GPU paths: the lessons' reference code on a CUDA device (skipped without one), and the same
code paths under CPU bf16 autocast, which runs everywhere."""

import pytest
import torch
import torch.nn.functional as F

import lmcourse as lm
from lmcourse import attention, transformer


def _qkv(device, dtype=torch.float32, B=2, H=4, T=16, D=8):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(B, H, T, D, generator=g).to(device, dtype) for _ in range(3)]


def _tiny_gpt():
    cfg = transformer.GPTConfig(vocab_size=50, block_size=16, d_model=32, n_layers=2, n_heads=4,
                                d_ff=64)
    torch.manual_seed(0)
    return transformer.GPT(cfg)


@pytest.mark.cuda
def test_attention_on_cuda_matches_torch_sdpa():
    dev = lm.get_device()
    q, k, v = _qkv(dev)
    ours = attention.scaled_dot_product_attention(q, k, v, is_causal=True)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert ours.device.type == "cuda"
    assert (ours - ref).abs().max().item() < 1e-5


@pytest.mark.cuda
def test_gpt_on_cuda_matches_cpu_and_runs_under_autocast():
    dev = lm.get_device()
    model = _tiny_gpt().eval()
    ids = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cpu = model(ids)
        gpu = model.to(dev)(ids.to(dev))
        with lm.autocast(dev):
            mixed = model(ids.to(dev))
    assert (gpu.cpu() - cpu).abs().max().item() < 1e-4
    assert mixed.dtype == lm.autocast_dtype(dev)
    assert (mixed.float().cpu() - cpu).abs().max().item() < 0.1


def test_gpt_training_step_under_cpu_bf16_autocast():
    model = _tiny_gpt()
    ids = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(1))
    with lm.autocast("cpu", enabled=True):
        logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, 50), ids[:, 1:].reshape(-1))
    assert logits.dtype == torch.bfloat16 and torch.isfinite(loss)
    loss.backward()
    grad = model.tok_emb.weight.grad
    assert grad is not None and grad.dtype == torch.float32 and torch.isfinite(grad).all()


def test_attention_under_cpu_bf16_autocast_is_close_to_float32():
    q, k, v = _qkv("cpu")
    ref = attention.scaled_dot_product_attention(q, k, v, is_causal=True)
    with lm.autocast("cpu", enabled=True):
        mha = attention.MultiHeadAttention(32, 4)
        x = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(2))
        y = mha(x, is_causal=True)
    assert y.dtype == torch.bfloat16
    lo = attention.scaled_dot_product_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), is_causal=True)
    assert (lo.float() - ref).abs().max().item() < 0.05
