"""Tests for lmcourse.lm_math, against torch and hand computations."""

import math

import pytest
import torch
import torch.nn.functional as F

from lmcourse import lm_math as M


def _randn(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


# --------------------------------------------------------------------------- softmax


@pytest.mark.parametrize("shape", [(7,), (4, 9), (2, 3, 5)])
@pytest.mark.parametrize("dim", [-1, 0])
def test_softmax_matches_torch(shape, dim):
    x = _randn(*shape, scale=3.0)
    torch.testing.assert_close(M.softmax(x, dim=dim), torch.softmax(x, dim=dim))


def test_softmax_middle_dim():
    x = _randn(2, 3, 5, scale=3.0)
    torch.testing.assert_close(M.softmax(x, dim=1), torch.softmax(x, dim=1))


@pytest.mark.parametrize("offset", [1000.0, -1000.0, 1e30])
def test_softmax_large_logits_are_finite_and_exact(offset):
    x = torch.tensor([[0.0, -1.0, -2.0], [3.0, 1.0, 0.5]]) + offset
    got = M.softmax(x)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, torch.softmax(x, dim=-1))


def test_softmax_rows_on_different_scales():
    x = torch.tensor([[1000.0, 999.0], [-1000.0, -1001.0]])
    want = torch.softmax(torch.tensor([1.0, 0.0]), dim=-1)
    torch.testing.assert_close(M.softmax(x), want.expand(2, 2))


@pytest.mark.parametrize("t", [0.1, 0.5, 2.0, 10.0])
def test_softmax_temperature(t):
    x = _randn(3, 6, scale=2.0)
    torch.testing.assert_close(M.softmax(x, temperature=t), torch.softmax(x / t, dim=-1))


def test_softmax_temperature_limits():
    x = torch.tensor([2.0, 1.0, 0.0])
    cold = M.softmax(x, temperature=1e-3)
    hot = M.softmax(x, temperature=1e4)
    torch.testing.assert_close(cold, torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(hot, torch.full((3,), 1 / 3), atol=1e-3, rtol=0)


@pytest.mark.parametrize("t", [0.0, -1.0])
def test_softmax_rejects_non_positive_temperature(t):
    with pytest.raises(ValueError, match="temperature"):
        M.softmax(torch.zeros(3), temperature=t)


def test_softmax_does_not_modify_input():
    x = _randn(4, 5)
    before = x.clone()
    M.softmax(x, temperature=0.5)
    assert torch.equal(x, before)


# --------------------------------------------------------------------------- log-softmax


@pytest.mark.parametrize("dim", [-1, 0, 1])
def test_log_softmax_matches_torch(dim):
    x = _randn(3, 4, 5, scale=4.0)
    torch.testing.assert_close(M.log_softmax(x, dim=dim), torch.log_softmax(x, dim=dim))


def test_log_softmax_large_logits():
    x = torch.tensor([[1000.0, 0.0, -1000.0]])
    got = M.log_softmax(x)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, torch.log_softmax(x, dim=-1))


# --------------------------------------------------------------------------- cross-entropy


def test_cross_entropy_matches_torch():
    z = _randn(32, 11, scale=3.0)
    y = torch.randint(0, 11, (32,), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(M.cross_entropy(z, y), F.cross_entropy(z, y))


def test_cross_entropy_large_logits():
    z = torch.tensor([[1000.0, 0.0, -1000.0], [0.0, 1000.0, 0.0]])
    y = torch.tensor([2, 0])
    got = M.cross_entropy(z, y)
    assert torch.isfinite(got)
    torch.testing.assert_close(got, F.cross_entropy(z, y))


@pytest.mark.parametrize("ignore_index", [-100, 3])
def test_cross_entropy_ignore_index(ignore_index):
    z = _randn(10, 6, scale=2.0)
    y = torch.tensor([1, -100, 3, 0, -100, 2, 5, 3, 4, 1])
    if ignore_index != -100:
        y = y.clamp_min(0)
    got = M.cross_entropy(z, y, ignore_index=ignore_index)
    torch.testing.assert_close(got, F.cross_entropy(z, y, ignore_index=ignore_index))
    keep = y != ignore_index
    torch.testing.assert_close(got, F.cross_entropy(z[keep], y[keep]))  # ignored rows: not counted


def test_cross_entropy_all_ignored_is_nan_like_torch():
    z = _randn(4, 5)
    y = torch.full((4,), -100)
    assert torch.isnan(F.cross_entropy(z, y))
    assert torch.isnan(M.cross_entropy(z, y))


def test_cross_entropy_of_uniform_logits_is_log_v():
    z = torch.zeros(5, 8)
    y = torch.tensor([0, 1, 2, 3, 7])
    assert math.isclose(M.cross_entropy(z, y).item(), math.log(8), rel_tol=1e-6)


# --------------------------------------------------------------------------- perplexity and chain rule


@pytest.mark.parametrize("v", [2, 27, 65])
def test_perplexity_of_uniform_is_vocab_size(v):
    lp = torch.full((50,), -math.log(v), dtype=torch.float64)
    assert math.isclose(M.perplexity(lp).item(), v, rel_tol=1e-9)


def test_perplexity_is_exp_of_mean_nll():
    lp = torch.tensor([-0.1, -2.3, -0.7, -1.2])
    assert math.isclose(M.perplexity(lp).item(), math.exp(1.075), rel_tol=1e-6)
    assert M.perplexity(torch.zeros(3)).item() == 1.0


def test_perplexity_does_not_grow_with_length():
    lp = _randn(100).abs().neg()
    assert math.isclose(M.perplexity(lp).item(), M.perplexity(lp.repeat(5)).item(), rel_tol=1e-5)


def test_sequence_log_prob_is_the_sum():
    assert M.sequence_log_prob([-0.5, -1.25, -2.0]) == pytest.approx(-3.75)
    assert M.sequence_log_prob([]) == 0.0
    probs = [0.5, 0.25, 0.1]
    assert math.exp(M.sequence_log_prob(math.log(p) for p in probs)) == pytest.approx(0.0125)


# --------------------------------------------------------------------------- vocabulary


def test_vocab_round_trip():
    text = "hello, world\nhow are you?"
    v = M.Vocab.from_text(text)
    assert v.itos == sorted(set(text)) and len(v) == len(set(text))
    ids = v.encode(text)
    assert ids.dtype == torch.long and ids.shape == (len(text),)
    assert v.decode(ids) == text
    assert v.decode(ids.tolist()) == text
    assert all(v.stoi[c] == i for i, c in enumerate(v.itos))


def test_vocab_unknown_character_error():
    v = M.Vocab.from_text("abc")
    with pytest.raises(KeyError, match=r"not in the vocabulary.*'z'"):
        v.encode("abz")


# --------------------------------------------------------------------------- bigram model


def test_bigram_counts_hand_count():
    v = M.Vocab.from_text("abc")  # a=0, b=1, c=2
    ids = v.encode("abcabba")  # pairs: ab bc ca ab bb ba
    want = torch.tensor([[0, 2, 0],   # a -> b twice
                         [1, 1, 1],   # b -> a, b -> b, b -> c
                         [1, 0, 0]])  # c -> a
    got = M.bigram_counts(ids, len(v))
    assert torch.equal(got, want)
    assert got.sum() == len(ids) - 1


def test_bigram_counts_is_not_transposed():
    ids = torch.tensor([0, 1, 1, 1])  # 0 -> 1 once, 1 -> 1 twice, never 1 -> 0
    got = M.bigram_counts(ids, 2)
    assert got[0, 1] == 1 and got[1, 0] == 0 and got[1, 1] == 2


@pytest.mark.parametrize("alpha", [0.0, 0.1, 1.0, 5.0])
def test_bigram_probs_rows_sum_to_one(alpha):
    counts = torch.randint(0, 9, (6, 6), generator=torch.Generator().manual_seed(3))
    counts[2] = 0  # a previous token never seen
    probs = M.bigram_probs(counts, alpha)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(6, dtype=probs.dtype))
    assert (probs >= 0).all()


def test_bigram_probs_add_alpha_formula():
    counts = torch.tensor([[2, 0], [1, 3]])
    got = M.bigram_probs(counts, alpha=1.0)
    want = torch.tensor([[3 / 4, 1 / 4], [2 / 6, 4 / 6]], dtype=torch.float64)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(M.bigram_probs(counts, alpha=0.0),
                               torch.tensor([[1.0, 0.0], [0.25, 0.75]], dtype=torch.float64))


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_bigram_probs_zero_row_is_uniform(alpha):
    counts = torch.tensor([[0, 0, 0, 0], [1, 2, 3, 4], [0, 0, 5, 0], [0, 0, 0, 0]])
    probs = M.bigram_probs(counts, alpha)
    torch.testing.assert_close(probs[0], torch.full((4,), 0.25, dtype=torch.float64))
    torch.testing.assert_close(probs[3], torch.full((4,), 0.25, dtype=torch.float64))
    assert torch.isfinite(probs).all()


def test_bigram_probs_rejects_negative_alpha():
    with pytest.raises(ValueError, match="alpha"):
        M.bigram_probs(torch.ones(2, 2), alpha=-0.1)


def _toy_model():
    text = "the cat sat on the mat. the hat."
    v = M.Vocab.from_text(text)
    ids = v.encode(text)
    return v, ids, M.bigram_counts(ids, len(v))


def test_bigram_log_probs_and_nll_pick_the_right_entries():
    _, ids, counts = _toy_model()
    probs = M.bigram_probs(counts, alpha=0.5)
    want = torch.tensor([math.log(probs[a, b].item()) for a, b in zip(ids[:-1].tolist(), ids[1:].tolist())],
                        dtype=torch.float64)
    torch.testing.assert_close(M.bigram_log_probs(probs, ids), want)
    assert M.bigram_nll(probs, ids) == pytest.approx(float(-want.mean()), rel=1e-12)


def test_bigram_nll_equals_cross_entropy_of_log_table():
    _, ids, counts = _toy_model()
    probs = M.bigram_probs(counts, alpha=0.1)
    logits = probs.log()[ids[:-1]]  # (T-1, V)
    assert M.bigram_nll(probs, ids) == pytest.approx(F.cross_entropy(logits, ids[1:]).item(), rel=1e-9)


def test_bigram_nll_unsmoothed_on_unseen_pair_is_inf():
    v, _, counts = _toy_model()
    probs = M.bigram_probs(counts, alpha=0.0)
    assert math.isfinite(M.bigram_nll(probs, v.encode("the cat")))
    assert math.isinf(M.bigram_nll(probs, v.encode("tc")))  # t -> c never occurs


def test_sample_bigram_reproducible_with_seeded_generator():
    _, _, counts = _toy_model()
    probs = M.bigram_probs(counts, alpha=1.0)
    a = M.sample_bigram(probs, 0, 50, generator=torch.Generator().manual_seed(7))
    b = M.sample_bigram(probs, 0, 50, generator=torch.Generator().manual_seed(7))
    c = M.sample_bigram(probs, 0, 50, generator=torch.Generator().manual_seed(8))
    assert a == b and a != c
    assert len(a) == 51 and a[0] == 0 and all(isinstance(i, int) for i in a)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_sample_bigram_unsmoothed_only_observed_transitions(temperature):
    _, ids, counts = _toy_model()
    probs = M.bigram_probs(counts, alpha=0.0)
    out = M.sample_bigram(probs, int(ids[0]), 300, generator=torch.Generator().manual_seed(0),
                          temperature=temperature)
    assert all(counts[a, b] > 0 for a, b in zip(out[:-1], out[1:]))


def test_sample_bigram_follows_the_table():
    probs = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    out = M.sample_bigram(probs, 0, 6, generator=torch.Generator().manual_seed(0))
    assert out == [0, 1, 2, 0, 1, 2, 0]


def test_sample_bigram_frequencies_match_probabilities():
    probs = torch.tensor([[0.8, 0.2], [0.8, 0.2]], dtype=torch.float64)
    out = M.sample_bigram(probs, 0, 4000, generator=torch.Generator().manual_seed(0))
    frac = sum(out[1:]) / 4000
    assert abs(frac - 0.2) < 0.03


def test_sample_bigram_low_temperature_is_greedy():
    probs = torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3], [0.2, 0.2, 0.6]], dtype=torch.float64)
    out = M.sample_bigram(probs, 0, 20, generator=torch.Generator().manual_seed(0), temperature=0.01)
    assert out[:4] == [0, 1, 0, 1]


# --------------------------------------------------------------------------- split and units


@pytest.mark.parametrize("frac", [0.1, 0.25, 0.5])
def test_train_val_split_sizes(frac):
    text = "".join(chr(97 + i % 26) for i in range(1000))
    train, val = M.train_val_split(text, frac)
    assert train + val == text
    assert len(train) == int(1000 * (1 - frac)) and len(val) == 1000 - len(train)


@pytest.mark.parametrize("frac", [0.0, 1.0, -0.1])
def test_train_val_split_rejects_bad_fraction(frac):
    with pytest.raises(ValueError, match="val_fraction"):
        M.train_val_split("abcdef", frac)


@pytest.mark.parametrize("v", [1, 2, 8, 65])
def test_entropy_of_uniform_is_log2_v(v):
    assert M.entropy_bits(torch.full((v,), 1 / v)).item() == pytest.approx(math.log2(v))


def test_entropy_bits_edge_cases():
    assert M.entropy_bits(torch.tensor([0.0, 1.0, 0.0])).item() == 0.0  # 0 log 0 = 0, no nan
    assert M.entropy_bits(torch.tensor([0.5, 0.25, 0.25])).item() == pytest.approx(1.5)
    rows = M.entropy_bits(torch.tensor([[0.5, 0.5], [1.0, 0.0]]))
    torch.testing.assert_close(rows, torch.tensor([1.0, 0.0], dtype=torch.float64))


def test_nats_to_bits():
    assert M.nats_to_bits(math.log(2)) == pytest.approx(1.0)
    assert M.nats_to_bits(math.log(65)) == pytest.approx(math.log2(65))


def test_perplexity_from_loss_is_perplexity_of_the_mean_log_prob():
    lp = -torch.rand(50, generator=torch.Generator().manual_seed(0)) * 4
    assert math.isclose(M.perplexity_from_loss(float(-lp.mean())), M.perplexity(lp).item(), rel_tol=1e-6)
    assert M.perplexity_from_loss(math.log(65)) == pytest.approx(65.0)
