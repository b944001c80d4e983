"""Tests for decoding: the course GPT's KV cache (lm.attention.KVCache), generation with it, beam search
against transformers' generate(num_beams=...), and the cache's time and memory."""

import itertools

import pytest
import torch
from transformers.utils import logging as hf_logging

from lmcourse import attention as A
from lmcourse import pretraining as pt
from lmcourse.transformer import GPT, GPTConfig, gpt_to_hf

V = 23


@pytest.fixture(autouse=True)
def _quiet_transformers():
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # generate's notes on pad_token_id and generation flags
    yield
    hf_logging.set_verbosity(level)


def tiny_gpt(seed: int = 0, block_size: int = 24, vocab_size: int = V) -> GPT:
    """PyTorch's default initialisation: peaked logits, so beams rarely tie."""
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=vocab_size, block_size=block_size, d_model=32, n_layers=2, n_heads=4,
                    d_ff=64, dropout=0.0, attn_dropout=0.0)
    return GPT(cfg).eval()


def beam_gpt(seed: int = 2) -> GPT:
    """Logits neither flat nor peaked: hypotheses end at EOS after a few tokens or never, and
    the length penalty changes which one wins. Float64: its logits and its transformers copy's
    agree to 1e-15, so a near tie cannot flip a choice."""
    return pt.init_gpt2_weights(tiny_gpt(seed), std=0.5).double()


class FedLengths(torch.nn.Module):
    """The course GPT, noting how many tokens each call is given."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model, self.cfg, self.fed = model, model.cfg, []

    def forward(self, input_ids, attention_mask=None, cache=None, use_cache=False):
        self.fed.append(input_ids.shape[1])
        return self.model(input_ids, attention_mask, cache=cache, use_cache=use_cache)


# --------------------------------------------------------------------------- the cache


def test_causal_mask_offset_puts_the_queries_last():
    assert torch.equal(A.causal_mask(2, 4, offset=2),
                       torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]).bool())
    assert torch.equal(A.causal_mask(3, offset=0), A.causal_mask(3))


@pytest.mark.parametrize("chunk", [1, 3], ids=["one token a step", "three tokens a step"])
def test_cached_logits_equal_the_full_forward_at_every_step(chunk):
    model = tiny_gpt()
    x = torch.randint(0, V, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(x)  # (B, T, V)
        logits, cache = model(x[:, :5], use_cache=True)
        steps = [logits]
        for t in range(5, 20, chunk):
            logits, cache = model(x[:, t:t + chunk], cache=cache, use_cache=True)
            steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 20 and len(cache.keys) == 2
    assert cache.keys[0].shape == (2, 4, 20, 8)  # (B, H, T, d_head)
    assert cache.nbytes() == pt.kv_cache_bytes(2, 32, 2, 20, 4)


def test_cached_forward_with_padding_mask_equals_the_full_forward():
    model = tiny_gpt()
    x = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(2))
    am = torch.ones(2, 9, dtype=torch.long)
    am[1, :3] = 0  # row 1 is left-padded: its first three keys are hidden from every query
    with torch.no_grad():
        full = model(x, am)
        _, cache = model(x[:, :6], am[:, :6], use_cache=True)
        last, _ = model(x[:, 6:], am, cache=cache, use_cache=True)
    torch.testing.assert_close(last, full[:, 6:], atol=1e-5, rtol=1e-5)


def test_cache_past_the_context_is_refused_and_reorder_picks_rows():
    model = tiny_gpt(block_size=8)
    with torch.no_grad():
        _, cache = model(torch.zeros(3, 8, dtype=torch.long), use_cache=True)
        with pytest.raises(ValueError, match="block_size"):
            model(torch.zeros(3, 1, dtype=torch.long), cache=cache, use_cache=True)
    keys = cache.keys[1].clone()
    cache.reorder_cache(torch.tensor([2, 2, 0, 1]))
    assert torch.equal(cache.keys[1], keys[[2, 2, 0, 1]]) and cache.values[0].shape[0] == 4


def test_forward_without_cache_is_unchanged():
    model = tiny_gpt()
    x = torch.randint(0, V, (2, 7))
    with torch.no_grad():
        plain = model(x)
        cached, cache = model(x, use_cache=True)
    assert isinstance(plain, torch.Tensor) and torch.equal(plain, cached)  # one call: the same sums
    assert isinstance(cache, A.KVCache)


# --------------------------------------------------------------------------- generation with the cache


@pytest.mark.parametrize("make_hf", [False, True], ids=["course-gpt", "transformers-gpt2"])
def test_greedy_with_cache_equals_without(make_hf):
    model = tiny_gpt(block_size=16)
    if make_hf:
        model = gpt_to_hf(model).eval()
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    a = pt.generate(model, prompt, 25, temperature=0.0, use_cache=True)  # past block_size 16
    b = pt.generate(model, prompt, 25, temperature=0.0, use_cache=False)
    assert torch.equal(a, b)


def test_sampling_with_cache_equals_without_under_one_seed():
    model = pt.init_gpt2_weights(tiny_gpt(block_size=16))  # flat distributions: many draws differ
    prompt = torch.tensor([[7, 8], [9, 1]])
    for seed, kw in itertools.product(range(3), (dict(), dict(top_k=5, temperature=0.7), dict(top_p=0.9))):
        a, b = (pt.generate(model, prompt, 24, generator=torch.Generator().manual_seed(seed),
                            use_cache=c, **kw) for c in (True, False))
        assert torch.equal(a, b), (seed, kw)


def test_generate_with_cache_feeds_one_token_a_step_until_the_context_is_full():
    fed = FedLengths(tiny_gpt(block_size=8))
    pt.generate(fed, torch.tensor([1, 2, 3]), 8, temperature=0.0)
    # the prompt, then one token a step while the sequence fits the 8 positions, then its last 8
    # tokens afresh each step (the positions shift, so the cached keys and values no longer fit)
    assert fed.fed == [3, 1, 1, 1, 1, 1, 8, 8]
    fed.fed.clear()
    pt.generate(fed, torch.tensor([1, 2, 3]), 4, temperature=0.0, use_cache=False)
    assert fed.fed == [3, 4, 5, 6]


# --------------------------------------------------------------------------- beam search


def _hf_beams(hf, prompt, n, eos=None, **kw):
    extra = dict(eos_token_id=eos, pad_token_id=eos) if eos is not None else {}
    out = hf.generate(prompt, max_new_tokens=n, do_sample=False, output_scores=True,
                      return_dict_in_generate=True, **extra, **kw)
    return out.sequences, out.sequences_scores


@pytest.mark.parametrize("num_beams, length_penalty", [(2, 1.0), (3, 0.5), (3, 2.0), (4, 1.0), (4, 2.0)])
@pytest.mark.parametrize("eos", [None, 13], ids=["no eos", "eos"])
def test_beam_search_equals_transformers(num_beams, length_penalty, eos):
    model = beam_gpt()
    hf = gpt_to_hf(model).eval()
    for prompt, early_stopping in [([[1, 2, 3]], False), ([[5]], True), ([[9, 9, 1, 0]], "never")]:
        prompt = torch.tensor(prompt)
        kw = dict(num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping)
        want, want_scores = _hf_beams(hf, prompt, 12, eos, num_return_sequences=2, **kw)
        got, scores = pt.beam_search(model, prompt, max_new_tokens=12, eos_token_id=eos,
                                     num_return_sequences=2, return_scores=True, **kw)
        assert torch.equal(got, want), (prompt, kw)
        torch.testing.assert_close(scores, want_scores, atol=1e-6, rtol=1e-6)  # both float32


@pytest.mark.parametrize("prompt, eos, num_beams", [([1, 2, 3], 13, 3), ([2, 14, 6], 20, 2)])
def test_beam_search_stopping_rules_equal_transformers(prompt, eos, num_beams):
    """early_stopping False (stop when the best running beam, scored at its length, cannot win),
    True (stop once num_beams are finished) and "never" (scored at max_new_tokens): cases where
    the three rules give different hypotheses."""
    model = pt.init_gpt2_weights(tiny_gpt(seed=4, block_size=32), std=0.5).double()
    hf = gpt_to_hf(model).eval()
    x = torch.tensor([prompt])
    best = {}
    for early_stopping in (False, True, "never"):
        kw = dict(num_beams=num_beams, length_penalty=2.0, early_stopping=early_stopping)
        want, want_scores = _hf_beams(hf, x, 20, eos, num_return_sequences=num_beams, **kw)
        got, scores = pt.beam_search(model, x, max_new_tokens=20, eos_token_id=eos,
                                     num_return_sequences=num_beams, return_scores=True, **kw)
        assert torch.equal(got, want), early_stopping
        torch.testing.assert_close(scores, want_scores, atol=1e-6, rtol=1e-6)
        best[early_stopping] = got[0]
    assert not torch.equal(best[False], best["never"])  # the rules matter here


def test_beam_search_stops_at_eos_and_length_penalty_matters():
    """The cases above must exercise what they guard: hypotheses that end early, and a ranking
    that changes with the length penalty."""
    model = beam_gpt()
    prompt = torch.tensor([1, 2, 3])
    best = {lp: pt.beam_search(model, prompt, 3, 12, length_penalty=lp, eos_token_id=13)
            for lp in (0.5, 1.0, 2.0)}
    assert best[0.5][-1] == best[1.0][-1] == 13 and len(best[1.0]) < 3 + 12  # ended early, at EOS
    assert len(best[2.0]) == 3 + 12  # a larger penalty favours the long hypothesis


def test_beam_search_on_the_saved_model_and_batches(tmp_path):
    model = tiny_gpt(seed=5)
    hf = pt.load_hf(pt.save_hf(model, tmp_path / "gpt"), device="cpu")
    prompt = torch.tensor([[1, 2, 3], [4, 0, 6]])
    for eos in (None, 7):
        want, _ = _hf_beams(hf, prompt, 10, eos, num_beams=3, num_return_sequences=3)
        assert torch.equal(pt.beam_search(model, prompt, 3, 10, eos_token_id=eos,
                                          num_return_sequences=3), want)


def test_beam_search_with_cache_equals_without_and_one_beam_is_greedy():
    model = tiny_gpt(seed=1, block_size=32)
    prompt = torch.tensor([4, 2])
    a, sa = pt.beam_search(model, prompt, 3, 14, eos_token_id=5, use_cache=True, return_scores=True)
    b, sb = pt.beam_search(model, prompt, 3, 14, eos_token_id=5, use_cache=False, return_scores=True)
    assert torch.equal(a, b) and torch.allclose(sa, sb, atol=1e-5)
    assert torch.equal(pt.beam_search(model, prompt, 1, 14), pt.generate(model, prompt, 14, temperature=0.0))
    fed = FedLengths(model)
    pt.beam_search(fed, prompt, 3, 5)
    assert fed.fed == [2, 1, 1, 1, 1]  # the prompt once, then each beam's new token


def test_beam_search_rejects_bad_arguments():
    model = tiny_gpt()
    with pytest.raises(ValueError, match="num_return_sequences"):
        pt.beam_search(model, torch.tensor([1]), 2, 3, num_return_sequences=3)
    with pytest.raises(ValueError, match="early_stopping"):
        pt.beam_search(model, torch.tensor([1]), 2, 3, early_stopping="sometimes")


# --------------------------------------------------------------------------- time and memory


def test_time_generation_measures_the_cache_as_the_formula_says():
    model = tiny_gpt(block_size=40)
    rows = pt.time_generation(model, prompt_len=4, new_tokens=[4, 12], batch_size=2)
    assert [r.new_tokens for r in rows] == [4, 12]
    assert all(r.same_tokens and r.seconds_cache > 0 and r.seconds_no_cache > 0 for r in rows)
    assert rows[1].cache_bytes == rows[1].formula_bytes == 2 * 2 * 2 * (4 + 12 - 1) * 32 * 4
    assert "speed-up" in pt.format_timings(rows)
    with pytest.raises(ValueError, match="block_size"):
        pt.time_generation(model, prompt_len=4, new_tokens=[40])
