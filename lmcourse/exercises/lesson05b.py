"""Checked exercises of lesson 05b (masked-LM pretraining of a small BERT)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from lmcourse import mlm
from lmcourse.checker import Case, Diagnosis, Exercise, Mistake
from lmcourse.exercises import register

LESSON = "05b_pretraining_bert"
IGNORE = mlm.IGNORE_INDEX


# --------------------------------------------------------------------------- the masking rule
#
# A masking is random, so a learner's function cannot reproduce the reference's draws. The check
# runs it on a large batch and compares the *statistics* of what it did with the reference's: the
# rates of `mlm.masking_statistics` (selection rate, 80/10/10 split, ...) within an absolute
# tolerance of 0.05 (their sampling noise is below 0.01), and rules that must hold exactly (special
# tokens untouched, labels -100 or the original token, the same generator seed giving the same
# result). Rates alone can be met by a masking with the wrong structure, so it also measures how
# selections relate: between neighbouring rows at one position, and between neighbouring positions
# of one row. Drawn independently, both are about mlm_probability; the same positions in every
# row, or a fixed pattern, gives something else.


def _batch(n_rows: int, max_len: int, vocab_size: int, n_special: int, seed: int,
           full: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows [CLS] w1 .. wn [SEP] [PAD]..., ids of words drawn from n_special..vocab_size-1."""
    g = torch.Generator().manual_seed(seed)
    pad, cls, sep = 0, 2, 3
    ids = torch.randint(n_special, vocab_size, (n_rows, max_len), generator=g)
    lengths = (torch.full((n_rows,), max_len) if full
               else torch.randint(max_len // 8, max_len + 1, (n_rows,), generator=g))
    special = torch.zeros(n_rows, max_len, dtype=torch.bool)
    for i, n in enumerate(lengths.tolist()):
        ids[i, 0], ids[i, n - 1] = cls, sep
        ids[i, n:] = pad
        special[i, 0] = special[i, n - 1] = True
        special[i, n:] = True
    return ids, special


def _masking_cases() -> list[Case]:
    ids, special = _batch(256, 512, 1000, 5, seed=0)
    full_ids, full_special = _batch(128, 256, 1000, 5, seed=1, full=True)
    bert_ids, bert_special = _batch(256, 256, 30000, 999, seed=2)
    return [
        Case("padded batch at 15%", (ids, special, 4, 1000), dict(mlm_probability=0.15, seed=0),
             hint="select ordinary tokens with probability mlm_probability, never where "
                  "special_tokens_mask is True; of the selected: 80% [MASK], 10% random, 10% kept."),
        Case("no padding at 30%", (full_ids, full_special, 4, 1000), dict(mlm_probability=0.3, seed=1),
             hint="use the mlm_probability argument, not a fixed 0.15."),
        Case("BERT-sized vocabulary with [MASK] = 103", (bert_ids, bert_special, 103, 30000),
             dict(mlm_probability=0.15, seed=2),
             hint="use the mask_token_id and vocab_size arguments; random tokens come from "
                  "range(vocab_size)."),
    ]


def _masking_call(fn: Callable, input_ids: torch.Tensor, special_tokens_mask: torch.Tensor,
                  mask_token_id: int, vocab_size: int, mlm_probability: float, seed: int) -> dict:
    """Run a masking function with a seeded generator and return the statistics of its result."""
    g = torch.Generator().manual_seed(seed)
    out = fn(input_ids, special_tokens_mask, mask_token_id, vocab_size,
             mlm_probability=mlm_probability, generator=g)
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise TypeError(f"return a tuple of two tensors (masked_input_ids, labels), not "
                        f"{type(out).__name__}{' of ' + str(len(out)) if isinstance(out, (tuple, list)) else ''}")
    masked, labels = out
    if not (isinstance(masked, torch.Tensor) and isinstance(labels, torch.Tensor)):
        raise TypeError(f"return two torch tensors, not {type(masked).__name__} and "
                        f"{type(labels).__name__}")
    if masked.dtype != input_ids.dtype or labels.dtype != input_ids.dtype:
        raise TypeError(f"masked_input_ids and labels hold token ids: keep the dtype of input_ids "
                        f"({input_ids.dtype}), not {masked.dtype} and {labels.dtype}")
    if masked.shape != input_ids.shape or labels.shape != input_ids.shape:
        raise ValueError(f"masked_input_ids {tuple(masked.shape)} and labels {tuple(labels.shape)} "
                         f"must both have the shape of input_ids {tuple(input_ids.shape)}")
    stats = mlm.masking_statistics(input_ids, special_tokens_mask, masked, labels, mask_token_id,
                                   vocab_size)
    stats.update(_structure(input_ids, special_tokens_mask, masked, labels))
    g = torch.Generator().manual_seed(seed)
    again = fn(input_ids, special_tokens_mask, mask_token_id, vocab_size,
               mlm_probability=mlm_probability, generator=g)
    stats["same seed, same result"] = bool(
        isinstance(again, tuple) and len(again) == 2
        and torch.equal(torch.as_tensor(again[0]), masked) and torch.equal(torch.as_tensor(again[1]), labels))
    return stats


def _agreement(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor) -> float:
    """P(b | a) over the positions where `valid`: how often b is selected where a is."""
    n = int((a & valid).sum())
    return float((a & b & valid).sum()) / n if n else 0.0


def _structure(input_ids: torch.Tensor, special_tokens_mask: torch.Tensor, masked: torch.Tensor,
               labels: torch.Tensor) -> dict:
    """Rules that hold exactly, and how selections relate across rows and along a row."""
    special = special_tokens_mask.bool()
    ordinary = ~special
    sel = (labels != IGNORE) & ordinary
    return {
        "specials untouched": not bool((special & ((labels != IGNORE) | (masked != input_ids))).any()),
        "labels are -100 or the original": bool(((labels == IGNORE) | (labels == input_ids)).all()),
        "unlabelled tokens unchanged": not bool((~(labels != IGNORE) & ordinary & (masked != input_ids)).any()),
        "same position in the next row": _agreement(sel[:-1], sel[1:], ordinary[:-1] & ordinary[1:]),
        "next position in the row": _agreement(sel[:, :-1], sel[:, 1:], ordinary[:, :-1] & ordinary[:, 1:]),
    }


def _masking_advice(got, want, case: Case) -> Diagnosis | None:
    """Turn the first statistic that is off into advice (the exact rules first: rates computed from
    invalid labels say little)."""
    if not isinstance(got, dict) or set(got) != set(want):
        return None

    def off(key: str) -> bool:
        return got[key] != want[key] if isinstance(want[key], bool) else abs(got[key] - want[key]) > 0.05

    p = case.kwargs.get("mlm_probability", 0.15)
    advice = [
        ("same seed, same result", "two runs with the same generator seed gave different maskings: "
         "your function ignores `generator`. Pass generator=generator to every random draw "
         "(torch.bernoulli, torch.randint, torch.rand) so that a masking can be reproduced."),
        ("labels are -100 or the original", "labels must be -100 at every position that was not "
         "selected and the ORIGINAL token where it was selected; yours hold other values."),
        ("specials untouched", "special tokens ([CLS], [SEP]) or padding were selected or changed: "
         "give every position where special_tokens_mask is True selection probability 0 (and "
         "label -100), whatever its id."),
        ("unlabelled tokens unchanged", "you changed tokens that were not selected (their label is "
         "-100, so nothing teaches the model what they were): replace only selected tokens."),
        ("same position in the next row", f"a position selected in one row is selected in the next "
         f"row {got['same position in the next row']:.0%} of the time; independent draws give "
         f"about {p:.0%}. Draw the selection for the whole batch (shape input_ids.shape), so that "
         "each row gets its own positions, not the same positions in every row."),
        ("next position in the row", f"after a selected token the next one is selected "
         f"{got['next position in the row']:.0%} of the time; independent draws give about {p:.0%}. "
         "Your selection follows a fixed pattern: select each token independently at random "
         "(torch.bernoulli on the full shape)."),
        ("selected_rate", f"{got['selected_rate']:.1%} of the ordinary tokens got a label; "
         f"about {want['selected_rate']:.1%} (mlm_probability) should."),
        ("mask_share", f"of the selected tokens {got['mask_share']:.0%} became [MASK], "
         f"{got['random_share']:.0%} a random token and {got['unchanged_share']:.0%} stayed "
         "unchanged; BERT's rule is 80% / 10% / 10%."),
        ("random_share", f"of the selected tokens {got['mask_share']:.0%} became [MASK], "
         f"{got['random_share']:.0%} a random token and {got['unchanged_share']:.0%} stayed "
         "unchanged; BERT's rule is 80% / 10% / 10%."),
        ("unchanged_share", f"of the selected tokens {got['unchanged_share']:.0%} stayed unchanged; "
         "BERT's rule keeps 10% (80% [MASK], 10% random)."),
        ("labels_are_originals", "labels must hold the original tokens of the selected positions, "
         "taken from input_ids before anything is replaced."),
        ("random_id_mean", "random replacement tokens must be drawn uniformly from the whole "
         "vocabulary: torch.randint(vocab_size, shape, generator=generator)."),
    ]
    for key, text in advice:
        if key in got and off(key):
            return Diagnosis(key, text)
    return None


def _draws(input_ids, special_tokens_mask, p, generator):
    shape = input_ids.shape
    probs = torch.full(shape, float(p)).masked_fill(special_tokens_mask.bool(), 0.0)
    selected = torch.bernoulli(probs, generator=generator).bool()
    to_mask = torch.bernoulli(torch.full(shape, 0.8), generator=generator).bool()
    half = torch.bernoulli(torch.full(shape, 0.5), generator=generator).bool()
    return selected, to_mask, half


def _apply(input_ids, selected, to_mask, to_random, mask_token_id, random_ids):
    masked = torch.where(to_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    return torch.where(to_random, random_ids, masked)


def _mask_specials_too(input_ids, special_tokens_mask, mask_token_id, vocab_size,
                       mlm_probability=0.15, generator=None):
    nothing = torch.zeros_like(special_tokens_mask, dtype=torch.bool)
    return mlm.mask_tokens(input_ids, nothing, mask_token_id, vocab_size, mlm_probability, generator)


def _always_mask(input_ids, special_tokens_mask, mask_token_id, vocab_size,
                 mlm_probability=0.15, generator=None):
    selected, _, _ = _draws(input_ids, special_tokens_mask, mlm_probability, generator)
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE))
    return torch.where(selected, torch.full_like(input_ids, mask_token_id), input_ids), labels


def _labels_everywhere(input_ids, special_tokens_mask, mask_token_id, vocab_size,
                       mlm_probability=0.15, generator=None):
    masked, _ = mlm.mask_tokens(input_ids, special_tokens_mask, mask_token_id, vocab_size,
                                mlm_probability, generator)
    return masked, input_ids.clone()


def _replace_all_tokens(input_ids, special_tokens_mask, mask_token_id, vocab_size,
                        mlm_probability=0.15, generator=None):
    selected, to_mask, half = _draws(input_ids, special_tokens_mask, mlm_probability, generator)
    ordinary = ~special_tokens_mask.bool()
    to_mask = to_mask & ordinary            # 80/10/10 over every ordinary token,
    to_random = half & ordinary & ~to_mask  # not only over the selected 15%
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator)
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE))
    return _apply(input_ids, selected, to_mask, to_random, mask_token_id, random_ids), labels


def _random_ten_percent_of_rest(input_ids, special_tokens_mask, mask_token_id, vocab_size,
                                mlm_probability=0.15, generator=None):
    selected, to_mask, _ = _draws(input_ids, special_tokens_mask, mlm_probability, generator)
    to_mask = to_mask & selected
    ten = torch.bernoulli(torch.full(input_ids.shape, 0.1), generator=generator).bool()
    to_random = ten & selected & ~to_mask   # 10% of the remaining 20%: 2% random, 18% kept
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator)
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE))
    return _apply(input_ids, selected, to_mask, to_random, mask_token_id, random_ids), labels


def _labels_from_masked(input_ids, special_tokens_mask, mask_token_id, vocab_size,
                        mlm_probability=0.15, generator=None):
    masked, labels = mlm.mask_tokens(input_ids, special_tokens_mask, mask_token_id, vocab_size,
                                     mlm_probability, generator)
    return masked, torch.where(labels != IGNORE, masked, labels)


def _fixed_fifteen_percent(input_ids, special_tokens_mask, mask_token_id, vocab_size,
                           mlm_probability=0.15, generator=None):
    return mlm.mask_tokens(input_ids, special_tokens_mask, mask_token_id, vocab_size, 0.15, generator)


def _random_from_sequence_length(input_ids, special_tokens_mask, mask_token_id, vocab_size,
                                 mlm_probability=0.15, generator=None):
    selected, to_mask, half = _draws(input_ids, special_tokens_mask, mlm_probability, generator)
    to_mask = to_mask & selected
    to_random = half & selected & ~to_mask
    random_ids = torch.randint(input_ids.shape[-1], input_ids.shape, generator=generator)
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE))
    return _apply(input_ids, selected, to_mask, to_random, mask_token_id, random_ids), labels


register(Exercise(
    key="mlm_masking",
    lesson=LESSON,
    reference=mlm.mask_tokens,
    cases=_masking_cases,
    call=_masking_call,
    diagnosers=[_masking_advice],
    atol=0.05,
    rtol=0.0,
    library_name="lm.mlm.mask_tokens",
    mistakes=[
        Mistake("specials and padding masked", _mask_specials_too,
                "[CLS], [SEP] and padding must never be selected: set their selection probability "
                "to 0 with special_tokens_mask before drawing (probs.masked_fill(special, 0.0))."),
        Mistake("always [MASK]", _always_mask,
                "every selected token became [MASK]. BERT's rule: of the selected tokens 80% become "
                "[MASK], 10% a random token, 10% stay unchanged, so the model cannot rely on seeing "
                "[MASK] (which never appears when it is fine-tuned)."),
        Mistake("labels on every position", _labels_everywhere,
                "labels must be -100 wherever the token was not selected, so the loss counts only "
                "the selected 15%: labels = where(selected, input_ids, -100)."),
        Mistake("80/10/10 applied to all tokens", _replace_all_tokens,
                "you replace tokens that were not selected (they have label -100, so the model is "
                "never told what they were). Apply the 80/10/10 draw to the selected tokens only: "
                "combine each draw with `& selected`."),
        Mistake("random share 10% of the rest", _random_ten_percent_of_rest,
                "only about 2% of the selected tokens became random. After the 80% [MASK], the "
                "remaining 20% split in half: draw with probability 0.5 among them (0.5 x 20% = 10%)."),
        Mistake("labels from the masked input", _labels_from_masked,
                "labels must hold the ORIGINAL tokens (what the model should predict), not the "
                "[MASK]/random ids you put into the input: take them from input_ids before "
                "replacing anything."),
        Mistake("fixed 15%", _fixed_fifteen_percent,
                "use the mlm_probability argument instead of a hard-coded 0.15."),
        Mistake("random ids from the wrong range", _random_from_sequence_length,
                "random replacement tokens must come uniformly from the whole vocabulary: "
                "torch.randint(vocab_size, shape, generator=generator)."),
    ],
))


# --------------------------------------------------------------------------- masked accuracy


def _accuracy_cases() -> list[Case]:
    g = torch.Generator().manual_seed(5)
    flat = torch.randn(10, 7, generator=g)
    flat_labels = torch.tensor([3, IGNORE, 0, 6, IGNORE, 2, 2, IGNORE, 5, 1])
    flat_labels[2] = int(flat[2].argmax())  # at least some right
    flat_labels[5] = int(flat[5].argmax())
    batch = torch.randn(3, 6, 11, generator=g)
    batch_labels = torch.full((3, 6), IGNORE)
    batch_labels[0, 1], batch_labels[1, 3], batch_labels[2, 2] = int(batch[0, 1].argmax()), 4, 7
    batch_labels[2, 4] = int(batch[2, 4].argmax())
    square = torch.randn(2, 5, 5, generator=g)
    square_labels = torch.full((2, 5), IGNORE)
    square_labels[0, 0] = int(square[0, 0].argmax())
    square_labels[1, 2] = int(square[1, 2].argmin())
    square_labels[1, 4] = int(square[1, 4].argmax())
    perfect = torch.randn(2, 4, 9, generator=g)
    zeros = torch.randn(4, 3, generator=g)
    zeros[0, 0] = zeros[2, 0] = 5.0  # predicted 0 at rows 0 and 2 (right), 2 at row 3 (wrong)
    zeros[3, 2] = 5.0
    zero_labels = torch.tensor([0, IGNORE, 0, 1])
    return [
        Case("(N x V) logits", (flat, flat_labels),
             hint="predictions are logits.argmax(dim=-1); compare them with the labels where "
                  "labels != -100 only."),
        Case("(B x T x V) batch", (batch, batch_labels),
             hint="argmax over the last dimension (the vocabulary), then keep labels != -100."),
        Case("T == V", (square, square_labels),
             hint="take the argmax over the vocabulary, the LAST dimension (dim=-1)."),
        Case("label 0 is a token", (zeros, zero_labels),
             hint="0 is a real token id: only -100 marks an unlabelled position (labels != -100)."),
        Case("nothing labelled", (perfect, torch.full((2, 4), IGNORE)),
             hint="with no labelled position return 0.0 instead of dividing by zero."),
        Case("every position right", (perfect, perfect.argmax(-1)),
             hint="all predictions are right here: the accuracy is 1.0."),
    ]


def _acc_counts_ignored(logits, labels):
    return float((logits.argmax(-1) == labels).float().mean())


def _acc_wrong_dim(logits, labels):
    keep = labels != IGNORE
    pred = logits.argmax(1)
    return float((pred[keep] == labels[keep]).sum()) / max(int(keep.sum()), 1)


def _acc_count(logits, labels):
    keep = labels != IGNORE
    return float((logits.argmax(-1)[keep] == labels[keep]).sum())


def _acc_drops_label_zero(logits, labels):
    keep = labels > 0
    return float((logits.argmax(-1)[keep] == labels[keep]).sum()) / max(int(keep.sum()), 1)


def _acc_no_guard(logits, labels):
    keep = labels != IGNORE
    return (logits.argmax(-1)[keep] == labels[keep]).float().mean()


register(Exercise(
    key="masked_accuracy",
    lesson=LESSON,
    reference=mlm.masked_accuracy,
    cases=_accuracy_cases,
    library_name="lm.mlm.masked_accuracy",
    mistakes=[
        Mistake("counts unlabelled positions", _acc_counts_ignored,
                "positions with label -100 were not masked and carry no prediction target: leave "
                "them out of both the count of right answers and the number you divide by."),
        Mistake("argmax over the wrong dimension", _acc_wrong_dim,
                "the prediction at each position is the argmax over the vocabulary, the last "
                "dimension: logits.argmax(dim=-1)."),
        Mistake("count instead of fraction", _acc_count,
                "divide the number of right predictions by the number of labelled positions."),
        Mistake("label 0 dropped (> 0 instead of != -100)", _acc_drops_label_zero,
                "0 is a real token id: only -100 marks an unlabelled position. Keep labels != -100; "
                "labels > 0 also drops every position whose label is token 0."),
        Mistake("no guard for zero labels", _acc_no_guard,
                "with no labelled position the mean of an empty tensor is nan: return 0.0 then."),
    ],
))
