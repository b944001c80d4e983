"""Course exercises whose checks need more than a comparison: structure of random maskings, inputs
changed in place before statistics are taken, cases exactly at a threshold, properties."""

import pytest
import torch

from lmcourse import checker, mlm
from lmcourse import exercises as registry

EXERCISES = registry.exercises()
IGNORE = mlm.IGNORE_INDEX


def _masking(input_ids, special, mask_token_id, vocab_size, p, generator, select=None):
    """BERT's 80/10/10 rule on a given selection (default: drawn like the reference)."""
    shape = input_ids.shape
    if select is None:
        probs = torch.full(shape, float(p)).masked_fill(special.bool(), 0.0)
        select = torch.bernoulli(probs, generator=generator).bool()
    labels = torch.where(select, input_ids, torch.full_like(input_ids, IGNORE))
    r = torch.rand(shape, generator=generator)
    masked = torch.where(select & (r < 0.8), torch.full_like(input_ids, mask_token_id), input_ids)
    rnd = select & (r >= 0.8) & (r < 0.9)
    random_ids = torch.randint(vocab_size, shape, generator=generator)
    return torch.where(rnd, random_ids, masked), labels


def test_a_masking_drawn_another_way_passes():
    def other_draws(input_ids, special, mask_token_id, vocab_size, mlm_probability=0.15, generator=None):
        return _masking(input_ids, special, mask_token_id, vocab_size, mlm_probability, generator)

    assert registry.evaluate("mlm_masking", other_draws).passed


def test_the_same_positions_in_every_row_are_rejected():
    def same_columns(input_ids, special, mask_token_id, vocab_size, mlm_probability=0.15, generator=None):
        cols = torch.rand(input_ids.shape[-1], generator=generator) < mlm_probability
        select = cols.expand_as(input_ids) & ~special.bool()
        return _masking(input_ids, special, mask_token_id, vocab_size, mlm_probability, generator, select)

    r = registry.evaluate("mlm_masking", same_columns)
    assert r.status == checker.WRONG and "every row" in r.hint


def test_a_fixed_pattern_with_the_right_rate_is_rejected():
    def every_seventh(input_ids, special, mask_token_id, vocab_size, mlm_probability=0.15, generator=None):
        ordinary = ~special.bool()
        step = round(1 / mlm_probability)
        start = torch.randint(step, (input_ids.shape[0], 1), generator=generator)  # rows differ
        select = ordinary & ((ordinary.long().cumsum(-1) + start) % step == 0)
        return _masking(input_ids, special, mask_token_id, vocab_size, mlm_probability, generator, select)

    r = registry.evaluate("mlm_masking", every_seventh)
    assert r.status == checker.WRONG and "pattern" in r.hint


def test_a_selection_that_only_knows_padding_is_rejected():
    def pad_only(input_ids, special, mask_token_id, vocab_size, mlm_probability=0.15, generator=None):
        return _masking(input_ids, input_ids == 0, mask_token_id, vocab_size, mlm_probability, generator)

    r = registry.evaluate("mlm_masking", pad_only)
    assert r.status == checker.WRONG and "[CLS]" in r.hint


def test_ignoring_the_generator_is_rejected():
    def global_rng(input_ids, special, mask_token_id, vocab_size, mlm_probability=0.15, generator=None):
        return _masking(input_ids, special, mask_token_id, vocab_size, mlm_probability, None)

    r = registry.evaluate("mlm_masking", global_rng)
    assert r.status == checker.WRONG and "generator" in r.hint


def test_a_right_masking_that_writes_into_its_input_is_caught_before_the_statistics():
    def in_place(input_ids, special, mask_token_id, vocab_size, mlm_probability=0.15, generator=None):
        masked, labels = _masking(input_ids, special, mask_token_id, vocab_size, mlm_probability, generator)
        input_ids.copy_(masked)  # the masked batch is right; the input is gone
        return input_ids, labels

    r = registry.evaluate("mlm_masking", in_place)
    assert r.status == checker.WRONG and "`input_ids` in place" in r.message
    assert "wrong on" not in r.message  # statistics taken from the restored input: nothing else wrong


@pytest.mark.parametrize("key, mistake, case_name", [
    ("top_k_filter", "k-th removed too (<= instead of <)", "ties around the k-th value"),
    ("top_k_filter", "exactly k, ties dropped", "ties around the k-th value"),
    ("top_p_filter", "one too many at exactly p (> instead of >=)", "mass reaches p exactly"),
    ("top_p_filter", "drops the token that reaches p exactly (cumsum >= p)", "mass reaches p exactly"),
    ("cross_entropy", "class 0 dropped (> 0 instead of != -100)", "ignored positions (-100)"),
    ("softmax_ce_grad", "class 0 dropped (> 0 instead of != -100)", "ignored positions (-100)"),
    ("masked_accuracy", "label 0 dropped (> 0 instead of != -100)", "label 0 is a token"),
    ("causal_mask", "strict lower triangle", "1 x 1"),
])
def test_threshold_mistakes_are_caught_by_cases_at_the_threshold(key, mistake, case_name):
    ex = EXERCISES[key]
    m = next(m for m in ex.mistakes if m.name == mistake)
    case = next(c for c in ex.get_cases() if c.name == case_name)
    got, want = ex.run(m.fn, case), ex.run(ex.reference, case)
    assert got.kind != "ok" or ex.difference(got.value, want.value, case) is not None, (
        f"{key}: the case {case_name!r} no longer tells {mistake!r} from the reference")


def test_ties_at_the_threshold_keep_every_tied_token():
    ex = EXERCISES["top_k_filter"]
    case = next(c for c in ex.get_cases() if c.name == "ties around the k-th value")
    out = ex.run(ex.reference, case).value
    assert int((out > float("-inf")).sum()) == 5  # two 5s and all three 2s


def test_tied_tokens_at_exactly_p_are_interchangeable():
    def last_of_ties(logits, p):  # keeps the other two of four tied tokens: just as right
        flipped = logits.flip(-1)
        from lmcourse import pretraining
        return pretraining.top_p_filter(flipped, p).flip(-1)

    assert registry.evaluate("top_p_filter", last_of_ties).passed


@pytest.mark.parametrize("key", sorted(k for k, ex in EXERCISES.items() if ex.properties))
def test_every_property_holds_for_the_reference(key):
    ex = EXERCISES[key]
    for p in ex.properties:
        assert p.check(ex.reference) is None, f"{key}: the reference breaks {p.name!r}"


@pytest.mark.parametrize("key", sorted(k for k, ex in EXERCISES.items() if ex.diagnosers))
def test_diagnosers_say_nothing_about_the_reference(key):
    ex = EXERCISES[key]
    for case in ex.get_cases():
        out = ex.run(ex.reference, case).value
        for diagnose in ex.diagnosers:
            assert diagnose(out, out, case) is None, f"{key}: {diagnose.__name__} fires on {case.name!r}"


def _one_ahead(x, block):
    """A pre-LN block whose mask lets each token see one token ahead."""
    ahead = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).tril(1)
    x = x + block.attn(block.ln1(x), mask=ahead)
    return x + block.ffn(block.ln2(x))


@pytest.mark.parametrize("key, fn, words", [
    ("causal_mask", lambda T_q, T_k=None: torch.ones(T_q, T_q if T_k is None else T_k,
                                                      dtype=torch.bool).tril((T_q if T_k is None else T_k) - T_q),
     "aligned bottom-right"),
    ("attention", lambda q, k, v: torch.softmax(q @ k.transpose(-2, -1) / k.shape[-2] ** 0.5, -1) @ v,
     "q.shape[-1]"),
    ("pre_ln_block", lambda x, b: _one_ahead(x, b), "later tokens"),
    ("param_count", lambda V, T, D, L, F: EXERCISES["param_count"].reference(V, T, D, L, F) - L * F,
     "n_layers·d_ff too few"),
])
def test_exercise_diagnoses_name_the_broken_property(key, fn, words):
    r = registry.evaluate(key, fn)
    assert r.status == checker.WRONG and r.mistake == "" and words in r.hint, r.message
