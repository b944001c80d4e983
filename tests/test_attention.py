"""Tests for lmcourse.attention (and the attention explorer in lmcourse.widgets), against torch."""

import math

import matplotlib.pyplot as plt
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from lmcourse import attention as A
from lmcourse import data, widgets

ATOL = 1e-5


def _qkv(B=2, H=3, T_q=5, T_k=7, d_k=8, d_v=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, T_q, d_k, generator=g), torch.randn(B, H, T_k, d_k, generator=g),
            torch.randn(B, H, T_k, d_v, generator=g))


def _am(lengths, T):
    """A (B, T) 0/1 transformers-style attention mask: 1 for the first `length` tokens."""
    return (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()


# --------------------------------------------------------------------------- scaled dot-product


def test_no_mask_matches_torch():
    q, k, v = _qkv()
    out = A.scaled_dot_product_attention(q, k, v)
    assert out.shape == (2, 3, 5, 4)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), atol=ATOL, rtol=0)


def test_weights_are_the_scaled_softmax():
    q, k, v = _qkv(d_k=64)
    out, w = A.scaled_dot_product_attention(q, k, v, return_weights=True)
    want = torch.softmax(q @ k.transpose(-2, -1) / 8.0, dim=-1)  # sqrt(64) = 8
    torch.testing.assert_close(w, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(out, want @ v, atol=1e-6, rtol=0)


def test_causal_matches_torch():
    q, k, v = _qkv(T_q=6, T_k=6)
    got = A.scaled_dot_product_attention(q, k, v, is_causal=True)
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    # the same through an explicit mask
    got_mask = A.scaled_dot_product_attention(q, k, v, mask=A.causal_mask(6))
    torch.testing.assert_close(got_mask, want, atol=ATOL, rtol=0)


def test_causal_rectangular_matches_torch():
    q, k, v = _qkv(T_q=4, T_k=7)  # torch aligns the causal mask top-left, as we do
    got = A.scaled_dot_product_attention(q, k, v, is_causal=True)
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_padding_matches_torch():
    q, k, v = _qkv(T_q=7, T_k=7)
    mask = A.padding_mask(_am([7, 4], 7))  # (B, 1, 1, T)
    got, w = A.scaled_dot_product_attention(q, k, v, mask=mask, return_weights=True)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    assert torch.all(w[1, :, :, 4:] == 0)  # padded keys get exactly zero weight
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 7), atol=1e-6, rtol=0)


def test_padding_and_causal_combined_match_torch():
    q, k, v = _qkv(T_q=6, T_k=6, seed=1)
    pad = A.padding_mask(_am([6, 3], 6))
    combined = pad & A.causal_mask(6)  # (B, 1, T, T)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=combined)
    torch.testing.assert_close(A.scaled_dot_product_attention(q, k, v, mask=combined), want,
                               atol=ATOL, rtol=0)
    # is_causal together with a padding mask gives the same
    torch.testing.assert_close(A.scaled_dot_product_attention(q, k, v, mask=pad, is_causal=True),
                               want, atol=ATOL, rtol=0)


def test_random_bool_and_float_masks_match_torch():
    q, k, v = _qkv(seed=2)
    g = torch.Generator().manual_seed(3)
    mask = torch.rand(2, 1, 5, 7, generator=g) > 0.4
    mask[..., 0] = True  # every row may attend somewhere (fully masked rows: next test)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(A.scaled_dot_product_attention(q, k, v, mask=mask), want,
                               atol=ATOL, rtol=0)
    additive = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    torch.testing.assert_close(A.scaled_dot_product_attention(q, k, v, mask=additive), want,
                               atol=ATOL, rtol=0)


def test_fully_masked_rows_are_zero_not_nan():
    q, k, v = _qkv(B=1, H=2, T_q=4, T_k=5, seed=4)
    q.requires_grad_(True)
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[1] = False  # query 1 may attend to nothing
    out, w = A.scaled_dot_product_attention(q, k, v, mask=mask, return_weights=True)
    assert torch.isfinite(out).all() and torch.isfinite(w).all()
    assert torch.all(out[:, :, 1] == 0) and torch.all(w[:, :, 1] == 0)
    # the other rows are untouched, and equal torch's
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    keep = [0, 2, 3]
    torch.testing.assert_close(out[:, :, keep], want[:, :, keep], atol=ATOL, rtol=0)
    # a naive softmax gives nan there: the reason for the special case
    naive = torch.softmax((q @ k.transpose(-2, -1)).masked_fill(~mask, float("-inf")), dim=-1)
    assert torch.isnan(naive[:, :, 1]).all()
    out.sum().backward()  # and gradients stay finite
    assert torch.isfinite(q.grad).all()


def test_gradients_match_torch():
    q, k, v = _qkv(seed=5)
    mask = A.padding_mask(_am([7, 5], 7))
    ours = [t.clone().requires_grad_(True) for t in (q, k, v)]
    ref = [t.clone().requires_grad_(True) for t in (q, k, v)]
    A.scaled_dot_product_attention(*ours, mask=mask).square().sum().backward()
    F.scaled_dot_product_attention(*ref, attn_mask=mask).square().sum().backward()
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-4, rtol=1e-4)


def test_dropout_only_when_asked():
    q, k, v = _qkv(seed=6)
    torch.manual_seed(0)
    dropped = A.scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    assert not torch.allclose(dropped, A.scaled_dot_product_attention(q, k, v))


# --------------------------------------------------------------------------- masks


def test_causal_mask_values():
    assert torch.equal(A.causal_mask(3), torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]]).bool())
    assert torch.equal(A.causal_mask(2, 4), torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0]]).bool())
    assert A.causal_mask(4).dtype == torch.bool


def test_padding_mask_shape_and_values():
    m = A.padding_mask(torch.tensor([[1, 1, 0], [1, 0, 0]]))
    assert m.shape == (2, 1, 1, 3) and m.dtype == torch.bool
    assert m[:, 0, 0].tolist() == [[True, True, False], [True, False, False]]


# --------------------------------------------------------------------------- heads


def test_split_heads_gives_each_head_a_contiguous_slice():
    x = torch.arange(2 * 3 * 8, dtype=torch.float32).view(2, 3, 8)
    s = A.split_heads(x, 4)  # (B, H, T, 2)
    assert s.shape == (2, 4, 3, 2)
    for h in range(4):
        assert torch.equal(s[:, h], x[:, :, 2 * h:2 * h + 2])


def test_split_merge_round_trip():
    x = torch.randn(3, 5, 12)
    assert torch.equal(A.merge_heads(A.split_heads(x, 3)), x)
    y = torch.randn(2, 4, 6, 5)
    assert torch.equal(A.split_heads(A.merge_heads(y), 4), y)
    with pytest.raises(ValueError, match="divisible"):
        A.split_heads(x, 5)


# --------------------------------------------------------------------------- multi-head attention


@pytest.fixture
def mha_pair():
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    return ref, A.MultiHeadAttention.from_torch(ref).eval()


def test_mha_matches_torch_without_mask(mha_pair):
    ref, ours = mha_pair
    x = torch.randn(2, 6, 32)
    want, want_w = ref(x, x, x, average_attn_weights=False)
    got, got_w = ours(x, return_weights=True)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    torch.testing.assert_close(got_w, want_w, atol=ATOL, rtol=0)


def test_mha_matches_torch_with_padding(mha_pair):
    ref, ours = mha_pair
    x = torch.randn(2, 6, 32)
    am = _am([6, 3], 6)
    want, _ = ref(x, x, x, key_padding_mask=am == 0)  # torch: True = ignore
    got = ours(x, mask=A.padding_mask(am))              # ours: True = may attend
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_mha_matches_torch_causal_and_combined(mha_pair):
    ref, ours = mha_pair
    x = torch.randn(2, 6, 32)
    future = ~A.causal_mask(6)  # torch's bool attn_mask: True = not allowed
    want, _ = ref(x, x, x, attn_mask=future, is_causal=True)
    torch.testing.assert_close(ours(x, is_causal=True), want, atol=ATOL, rtol=0)
    am = _am([6, 4], 6)
    want, _ = ref(x, x, x, attn_mask=future, key_padding_mask=am == 0)
    got = ours(x, mask=A.padding_mask(am), is_causal=True)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_mha_without_bias_and_parameter_count():
    torch.manual_seed(1)
    ref = nn.MultiheadAttention(16, 2, bias=False, batch_first=True)
    ours = A.MultiHeadAttention.from_torch(ref)
    assert ours.q_proj.bias is None
    x = torch.randn(1, 5, 16)
    torch.testing.assert_close(ours(x), ref(x, x, x)[0], atol=ATOL, rtol=0)
    d = 32
    assert sum(p.numel() for p in A.MultiHeadAttention(d, 4).parameters()) == 4 * d * d + 4 * d


def test_mha_dropout_follows_train_and_eval():
    torch.manual_seed(2)
    m = A.MultiHeadAttention(16, 4, dropout=0.5)
    x = torch.randn(2, 5, 16)
    m.eval()
    assert torch.equal(m(x), m(x))
    m.train()
    assert not torch.allclose(m(x), m.eval()(x))


# --------------------------------------------------------------------------- positions


def test_sinusoidal_known_values():
    pe = A.sinusoidal_positions(50, 16)
    assert pe.shape == (50, 16) and pe.dtype == torch.float32
    assert torch.equal(pe[0], torch.tensor([0.0, 1.0] * 8))
    assert pe[1, 0].item() == pytest.approx(math.sin(1.0), abs=1e-6)
    assert pe[1, 1].item() == pytest.approx(math.cos(1.0), abs=1e-6)
    p, i, d = 7, 3, 16  # the pair (2i, 2i+1) turns at 1 / 10000^(2i/d)
    angle = p / 10000 ** (2 * i / d)
    assert pe[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
    assert pe[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    assert A.sinusoidal_positions(4, 5).shape == (4, 5)  # odd d_model works too


def test_sinusoidal_dot_products_depend_on_offset_only():
    pe = A.sinusoidal_positions(40, 32).double()
    sim = pe @ pe.T
    torch.testing.assert_close(sim.diagonal(3)[:10], sim.diagonal(3)[10:20], atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- explorer (widgets)


@pytest.fixture
def agg():
    old = plt.get_backend()
    plt.switch_backend("Agg")
    yield
    plt.close("all")
    plt.switch_backend(old)


def test_plot_attention_returns_a_figure(agg):
    w = torch.softmax(torch.randn(3, 4), dim=-1)
    fig = widgets.plot_attention(w, ["a", "b", "c"], ["w", "x", "y", "z"], title="t")
    assert isinstance(fig, Figure)
    with pytest.raises(ValueError, match="shape"):
        widgets.plot_attention(w, ["a", "b"])


def test_random_explorer_runs_headless(agg):
    fn = widgets.random_attention_fn(d_model=16, n_heads=2, n_layers=2)
    tokens, maps = fn("the cat sat on the mat")
    assert tokens[1] == "cat" and maps.shape == (2, 2, 6, 6)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 2, 6), atol=1e-6, rtol=0)
    assert torch.equal(fn("the cat sat on the mat")[1], maps)  # deterministic
    assert isinstance(widgets.plot_heads(maps, tokens, layer=1, ncols=2), Figure)
    box = widgets.attention_explorer(fn, ["the cat sat", "a dog"], layer=1, head=1)
    pick, sliders, _ = box.children
    assert pick.options == ("the cat sat", "a dog")
    assert [s.max for s in sliders.children] == [1, 1]
    pick.value = "a dog"  # redraws without error


def test_hf_attention_matches_our_attention_on_a_tiny_bert():
    """BERT's self-attention weights equal ours given its q/k/v projections and padding mask."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64)
    torch.manual_seed(0)
    bert = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    bert.config._attn_implementation = "eager"
    ids = torch.randint(0, 50, (2, 7))
    am = _am([7, 4], 7)
    with torch.no_grad():
        out = bert(input_ids=ids, attention_mask=am, output_attentions=True,
                   output_hidden_states=True)
        sa = bert.encoder.layer[0].attention.self
        h = out.hidden_states[0]  # (B, T, D), the input of layer 0
        q, k, v = (A.split_heads(lin(h), 4) for lin in (sa.query, sa.key, sa.value))
        _, w = A.scaled_dot_product_attention(q, k, v, mask=A.padding_mask(am),
                                              return_weights=True)
    torch.testing.assert_close(w, out.attentions[0], atol=ATOL, rtol=0)


def test_pretrained_bert_explorer_if_installed():
    if data.packaged_bert_dir() is None:
        pytest.skip(f"{data.OFFLINE_BERT} is not installed")
    model, tok, source = widgets.load_explorer_model("cpu")
    tokens, maps = widgets.hf_attention_fn(model, tok)("Attention is all you need.")
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert maps.shape == (model.config.num_hidden_layers, model.config.num_attention_heads,
                          len(tokens), len(tokens))
    torch.testing.assert_close(maps.sum(-1), torch.ones(maps.shape[:-1]), atol=1e-5, rtol=0)
