"""Tests for lmcourse.pretraining: next-token data, the loss, sampling filters, generation, saving."""

import math

import pytest
import torch
from torch.utils.data import default_collate
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from lmcourse import pretraining as pt
from lmcourse import train as tr
from lmcourse.transformer import GPT, GPTConfig, gpt_to_hf

CPU = torch.device("cpu")
V = 23


def tiny_gpt(seed: int = 0, block_size: int = 16, vocab_size: int = V) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=vocab_size, block_size=block_size, d_model=32, n_layers=2, n_heads=4,
                    d_ff=64, dropout=0.0, attn_dropout=0.0)
    return GPT(cfg).eval()


def tiny_hf(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=V, n_positions=16, n_embd=32, n_layer=2, n_head=4,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg).eval()


def argmax_rollout(model, ids: torch.Tensor, n: int, block: int) -> torch.Tensor:
    x = ids[None]
    with torch.no_grad():
        for _ in range(n):
            logits = pt.logits_of(model(x[:, -block:]))
            x = torch.cat([x, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return x[0]


# --------------------------------------------------------------------------- data


def test_causal_lm_targets_shift_by_one():
    ids = torch.arange(12).view(2, 6)
    x, y = pt.causal_lm_targets(ids)
    assert x.shape == y.shape == (2, 5)
    assert torch.equal(y, x + 1)  # consecutive ids: each target is the next token


def test_block_dataset_windows():
    ids = torch.arange(100, 130)
    ds = pt.BlockDataset(ids, block_size=8)
    assert len(ds) == 30 - 8  # every start s with s + 9 <= 30
    for i in (0, 5, len(ds) - 1, -1):
        ex = ds[i]
        s = i % len(ds)
        assert torch.equal(ex["input_ids"], ids[s:s + 8])
        assert torch.equal(ex["labels"], ids[s + 1:s + 9])
    with pytest.raises(IndexError):
        ds[len(ds)]
    val = pt.BlockDataset(ids, block_size=8, stride=8)
    assert len(val) == 3 and torch.equal(val[2]["input_ids"], ids[16:24])
    batch = default_collate([ds[0], ds[1]])
    assert batch["input_ids"].shape == batch["labels"].shape == (2, 8)
    with pytest.raises(ValueError):
        pt.BlockDataset(ids[:8], block_size=8)


def test_char_data_split_and_roundtrip():
    text = "hello world, hello there\n" * 40
    d = pt.char_data(text, val_fraction=0.1)
    assert len(d.train_ids) + len(d.val_ids) == len(text)
    assert d.vocab.decode(torch.cat([d.train_ids, d.val_ids])) == text
    train, val = d.datasets(8)
    assert val.stride == 8 and train.stride == 1


def test_causal_lm_loss_matches_transformers_shifted_loss():
    hf = tiny_hf()
    g = torch.Generator().manual_seed(0)
    window = torch.randint(0, V, (3, 11), generator=g)
    x, y = pt.causal_lm_targets(window)
    loss, logits = pt.causal_lm_loss(hf, {"input_ids": x, "labels": y})
    with torch.no_grad():
        want = hf(input_ids=window, labels=window).loss  # transformers shifts inside
    assert logits.shape == (3, 10, V)
    assert torch.allclose(loss, want, atol=1e-5)
    # the course GPT through gpt_to_hf's weights gives the same loss
    model = tiny_gpt()
    ref = gpt_to_hf(model)
    with torch.no_grad():
        assert torch.allclose(pt.causal_lm_loss(model, {"input_ids": x, "labels": y})[0],
                              ref(input_ids=window, labels=window).loss, atol=1e-5)


def test_init_gpt2_weights_gives_uniform_first_loss():
    model = pt.init_gpt2_weights(tiny_gpt(vocab_size=65))
    assert abs(model.tok_emb.weight.std().item() - 0.02) < 0.003
    out = model.blocks[0].attn.out_proj.weight.std().item()
    assert abs(out - 0.02 / math.sqrt(4)) < 0.003  # 2 blocks: std / sqrt(2 * 2)
    assert model.blocks[1].ffn.fc1.bias.abs().max() == 0 and torch.all(model.ln_f.weight == 1)
    x, y = pt.causal_lm_targets(torch.randint(0, 65, (4, 17)))
    with torch.no_grad():
        loss, _ = pt.causal_lm_loss(model, {"input_ids": x, "labels": y})
    assert abs(loss.item() - math.log(65)) < 0.05


# --------------------------------------------------------------------------- filters


def test_top_k_filter_matches_transformers():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, V, generator=g)
    for k in (1, 3, V, V + 5):
        got = pt.top_k_filter(logits, k)
        want = TopKLogitsWarper(top_k=k)(None, logits.clone())
        assert torch.equal(got.isfinite(), want.isfinite())
        assert torch.equal(got[got.isfinite()], logits[got.isfinite()])
        assert (got.isfinite().sum(-1) == min(k, V)).all()


def test_top_k_filter_keeps_ties_and_sets_minus_inf():
    got = pt.top_k_filter(torch.tensor([4.0, 1.0, 3.0, 3.0, 0.0]), 2)
    assert got.tolist() == [4.0, -math.inf, 3.0, 3.0, -math.inf]


@pytest.mark.parametrize("p, kept", [
    (0.3, [1]),               # the top token alone (0.5) reaches p
    (0.6, [1, 3]),            # 0.5 + 0.2 crosses 0.6: the crossing token stays
    (0.84, [1, 3, 4]),        # 0.85
    (0.9, [1, 3, 4, 0]),      # 0.95
    (1.0, [0, 1, 2, 3, 4]),
])
def test_top_p_filter_keeps_the_nucleus(p, kept):
    probs = torch.tensor([0.1, 0.5, 0.05, 0.2, 0.15])  # shuffled so the mask must be unsorted
    got = pt.top_p_filter(probs.log(), p)
    assert sorted(torch.nonzero(got.isfinite()).flatten().tolist()) == sorted(kept)
    assert torch.equal(got[got.isfinite()], probs.log()[got.isfinite()])


def test_top_p_filter_matches_transformers():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(6, V, generator=g) * 3
    for p in (0.05, 0.5, 0.8, 0.95):
        got = pt.top_p_filter(logits, p)
        want = TopPLogitsWarper(top_p=p)(None, logits.clone())
        assert torch.equal(got.isfinite(), want.isfinite())


# --------------------------------------------------------------------------- generation


@pytest.mark.parametrize("make", [tiny_gpt, tiny_hf], ids=["course-gpt", "transformers-gpt2"])
def test_greedy_is_deterministic_argmax_rollout(make):
    model = make()
    prompt = torch.tensor([1, 2, 3])
    a = pt.generate(model, prompt, 20, temperature=0.0)
    b = pt.generate(model, prompt, 20, temperature=0.0)
    assert torch.equal(a, b) and a.shape == (23,) and torch.equal(a[:3], prompt)
    assert torch.equal(a, argmax_rollout(model, prompt, 20, block=16))  # past block_size: cropped


def test_greedy_equals_transformers_generate():
    hf = tiny_hf()
    prompt = torch.tensor([[5, 6, 7]])
    want = hf.generate(prompt, max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert torch.equal(pt.generate(hf, prompt, 10, temperature=0.0), want)


def test_generate_batch_and_train_mode_restored():
    model = tiny_gpt().train()
    out = pt.generate(model, torch.tensor([[1, 2], [3, 4]]), 4, temperature=0.0)
    assert out.shape == (2, 6) and model.training


@pytest.mark.parametrize("make", [tiny_gpt, tiny_hf], ids=["course-gpt", "transformers-gpt2"])
def test_seeded_sampling_is_reproducible(make):
    model = make()
    prompt = torch.tensor([4, 5])

    def sample(seed, **kw):
        return pt.generate(model, prompt, 15, generator=torch.Generator().manual_seed(seed), **kw)

    assert torch.equal(sample(0), sample(0))
    assert torch.equal(sample(3, top_k=5, top_p=0.9), sample(3, top_k=5, top_p=0.9))
    assert not torch.equal(sample(0), sample(1))


def test_low_temperature_approaches_greedy():
    model = tiny_gpt()
    prompt = torch.tensor([1, 2, 3])
    greedy = pt.generate(model, prompt, 20, temperature=0.0)
    cold = pt.generate(model, prompt, 20, temperature=1e-4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(cold, greedy)
    hot = pt.generate(model, prompt, 20, temperature=5.0, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(hot, greedy)


def _next_token_samples(model, prompt, n=300, **kw):
    ids = prompt.repeat(n, 1)  # n copies: n independent draws of the next token
    out = pt.generate(model, ids, 1, generator=torch.Generator().manual_seed(0), **kw)
    with torch.no_grad():
        logits = pt.next_token_logits(model, prompt[None])[0]
    return out[:, -1], logits


def test_top_k_sampling_stays_in_the_top_k():
    model = pt.init_gpt2_weights(tiny_gpt())  # small logits: every token is likely enough
    drawn, logits = _next_token_samples(model, torch.tensor([1, 2, 3]), top_k=3)
    allowed = set(torch.topk(logits, 3).indices.tolist())
    assert set(drawn.tolist()) <= allowed and len(set(drawn.tolist())) == 3


def test_top_p_sampling_stays_in_the_nucleus():
    model = pt.init_gpt2_weights(tiny_gpt())
    drawn, logits = _next_token_samples(model, torch.tensor([7, 8]), top_p=0.5)
    probs, order = torch.softmax(logits, -1).sort(descending=True)
    n_keep = int((probs.cumsum(0) - probs < 0.5).sum())
    assert set(drawn.tolist()) <= set(order[:n_keep].tolist())
    unfiltered, _ = _next_token_samples(model, torch.tensor([7, 8]))
    assert len(set(unfiltered.tolist())) > n_keep  # without top-p the tail does get drawn


def test_course_gpt_and_its_transformers_copy_sample_the_same():
    model = tiny_gpt()
    hf = gpt_to_hf(model).eval()
    prompt = torch.tensor([3, 1, 4])
    for kw in (dict(temperature=0.0), dict(top_k=5), dict(top_p=0.8, temperature=0.7)):
        a = pt.generate(model, prompt, 20, generator=torch.Generator().manual_seed(0), **kw)
        b = pt.generate(hf, prompt, 20, generator=torch.Generator().manual_seed(0), **kw)
        assert torch.equal(a, b), kw


# --------------------------------------------------------------------------- saving and training


def test_saved_checkpoint_reloads_with_identical_logits(tmp_path):
    model = pt.init_gpt2_weights(tiny_gpt())
    folder = pt.save_hf(model, tmp_path / "gpt")
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert isinstance(hf, GPT2LMHeadModel) and pt.context_length(hf) == 16
    x = torch.randint(0, V, (2, 16))
    with torch.no_grad():
        assert torch.allclose(hf(x).logits, model(x), atol=1e-5)
    prompt = torch.tensor([1, 2])
    assert torch.equal(pt.generate(model, prompt, 12, temperature=0.0),
                       pt.generate(pt.load_hf(folder), prompt, 12, temperature=0.0))


def test_tiny_training_run_lowers_the_loss():
    text = "to be or not to be, that is the question. " * 60
    d = pt.char_data(text)
    train, val = d.datasets(16)
    torch.manual_seed(0)
    model = pt.init_gpt2_weights(GPT(GPTConfig(vocab_size=len(d.vocab), block_size=16, d_model=32,
                                               n_layers=2, n_heads=4, d_ff=64, dropout=0.0,
                                               attn_dropout=0.0)))
    sampler = pt.SampleCallback(d.vocab.decode, d.vocab.encode("to "), every=30, max_new_tokens=10,
                                show=False)
    cfg = tr.TrainConfig(max_steps=60, batch_size=16, lr=3e-3, warmup_steps=5, schedule="cosine",
                         eval_every=30, max_eval_batches=2, progress=False)
    t = tr.Trainer(model, cfg, train, val, loss_fn=pt.causal_lm_loss, device=CPU, callbacks=[sampler])
    h = t.train()
    assert abs(h.train[0]["loss"] - math.log(len(d.vocab))) < 0.1  # starts at uniform guessing
    assert h.eval[-1]["eval_loss"] < h.eval[0]["eval_loss"] < h.train[0]["loss"] - 0.5
    assert h.eval[-1]["eval_loss"] < math.log(len(d.vocab)) - 1.0
    assert [s for s, _ in sampler.samples] == [30, 60]
    assert all(text.startswith("to ") for _, text in sampler.samples)


def test_generate_rejects_bad_arguments():
    model = tiny_gpt()
    with pytest.raises(ValueError):
        pt.generate(model, torch.tensor([1]), 3, temperature=-1.0)
    with pytest.raises(ValueError):
        pt.top_p_filter(torch.zeros(3), 0.0)
    with pytest.raises(ValueError):
        pt.top_k_filter(torch.zeros(3), 0)
