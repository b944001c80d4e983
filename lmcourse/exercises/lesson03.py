"""Checked exercises of lesson 03 (attention)."""

from __future__ import annotations

import math

import torch

from lmcourse import attention
from lmcourse.checker import Case, Diagnosis, Exercise, Mistake, Property
from lmcourse.exercises import register

LESSON = "03_attention"


def _randn(*shape: int, g: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=g) * scale


# --------------------------------------------------------------------------- attention (no mask)


def _attention_cases() -> list[Case]:
    g = torch.Generator().manual_seed(30)
    return [
        Case("one head of 4 tokens", (_randn(4, 8, g=g), _randn(4, 8, g=g), _randn(4, 8, g=g)),
             hint="scores = q @ k^T / sqrt(d_k), softmax over the keys (last dim), then @ v."),
        Case("batch and heads", (_randn(2, 3, 5, 16, g=g), _randn(2, 3, 5, 16, g=g),
                                 _randn(2, 3, 5, 16, g=g)),
             hint="transpose only the last two dims of k: k.transpose(-2, -1)."),
        Case("more keys than queries", (_randn(3, 8, g=g), _randn(6, 8, g=g), _randn(6, 8, g=g)),
             hint="the weights are (T_q, T_k): one row per query, one column per key."),
        Case("d_v different from d_k", (_randn(4, 16, g=g), _randn(5, 16, g=g), _randn(5, 3, g=g)),
             hint="scale by sqrt(d_k), the size of the vectors in the dot product (q.shape[-1])."),
        Case("large scores", (_randn(4, 8, g=g, scale=30.0), _randn(4, 8, g=g, scale=30.0),
                              _randn(4, 8, g=g)),
             hint="use a stable softmax (torch.softmax, or subtract the row maximum first)."),
    ]


def _attention_ref(q, k, v):
    return attention.scaled_dot_product_attention(q, k, v)


def _att_with(q, k, v, scale: float, dim: int = -1):
    return torch.softmax(q @ k.transpose(-2, -1) * scale, dim=dim) @ v


# Properties of attention, tested by running the learner's function on inputs made for them.


def _weights_sum_to_one(call) -> str | None:
    """With every value vector equal to ones, each output is the sum of a query's weights: 1."""
    g = torch.Generator().manual_seed(34)
    q, k = _randn(3, 8, g=g), _randn(5, 8, g=g)
    out = torch.as_tensor(call(q, k, torch.ones(5, 4)))
    if out.shape != (3, 4) or torch.allclose(out.double(), torch.ones(3, 4).double(), atol=1e-5):
        return None
    return ("each query's weights over the keys must sum to 1: softmax over the last dimension of "
            "the scores (dim=-1, one row per query), not over the queries or the whole matrix.")


def _score_scale(call) -> str | None:
    """Two keys whose raw scores differ by 1 and values 0 and 1: the output reveals the scale used."""
    d_k = 16
    q = torch.full((1, d_k), 0.25)
    k = torch.stack([torch.zeros(d_k), torch.full((d_k,), 0.25)])  # raw scores 0 and 1
    v = torch.stack([torch.zeros(3), torch.ones(3)])
    out = torch.as_tensor(call(q, k, v)).double()
    if out.shape != (1, 3) or not torch.allclose(out, out[0, :1].expand(1, 3)):
        return None
    y = float(out[0, 0])
    if not 0 < y < 1:
        return None
    scale = math.log(y / (1 - y))  # what the raw scores were multiplied by
    if math.isclose(scale, 1 / math.sqrt(d_k), rel_tol=1e-3):
        return None
    if math.isclose(scale, 1.0, rel_tol=1e-3):
        how = "you don't scale the scores at all"
    elif math.isclose(scale, 1 / d_k, rel_tol=1e-3):
        how = "you divide the scores by d_k itself"
    elif math.isclose(scale, math.sqrt(d_k), rel_tol=1e-3):
        how = "you multiply the scores by sqrt(d_k) instead of dividing"
    elif scale < 0:
        how = "your scores have the wrong sign"
    else:
        how = f"you divide the scores by {1 / scale:.3g}"
    return (f"{how}: divide q @ k^T by sqrt(d_k), where d_k = q.shape[-1] is the size of the "
            f"vectors in the dot product (here d_k = {d_k}, so by {math.sqrt(d_k):g}), not the number "
            "of keys or the size of the values.")


register(Exercise(
    key="attention",
    lesson=LESSON,
    reference=_attention_ref,
    cases=_attention_cases,
    properties=[Property("weights that sum to 1 over the keys", _weights_sum_to_one),
                Property("scaled by 1/sqrt(d_k)", _score_scale)],
    library_name="lm.attention.scaled_dot_product_attention",
    mistakes=[
        Mistake("no scaling", lambda q, k, v: _att_with(q, k, v, 1.0),
                "divide the scores by sqrt(d_k): without it their variance grows like d_k and the "
                "softmax saturates (almost one-hot, vanishing gradients)."),
        Mistake("scaled by d_k", lambda q, k, v: _att_with(q, k, v, 1.0 / q.shape[-1]),
                "the scale is 1/sqrt(d_k), not 1/d_k: q.k has variance d_k, so its standard "
                "deviation is sqrt(d_k)."),
        Mistake("softmax over the queries", lambda q, k, v: _att_with(q, k, v, q.shape[-1] ** -0.5, dim=-2),
                "each query's weights over the KEYS must sum to 1: softmax over the last dim "
                "(dim=-1), not dim=-2."),
        Mistake("scaled by sqrt(d_v)", lambda q, k, v: _att_with(q, k, v, v.shape[-1] ** -0.5),
                "scale by sqrt(d_k) = sqrt(q.shape[-1]), the length of the vectors in the dot "
                "product, not by the size of the values."),
        Mistake("weights returned", lambda q, k, v: torch.softmax(
                    q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1),
                "the weights are only half of it: return the weighted average of the values, "
                "weights @ v."),
    ],
))


# --------------------------------------------------------------------------- causal mask


def _causal_cases() -> list[Case]:
    return [
        Case("4 x 4", (4,), hint="query i may see keys 0..i: True on AND below the diagonal."),
        Case("1 x 1", (1,), hint="a single token may attend to itself."),
        Case("3 queries and 5 keys", (3, 5),
             hint="with T_k given, the mask is (T_q, T_k); torch.tril works on rectangles too."),
        Case("5 queries and 2 keys", (5, 2), hint="the mask is (T_q, T_k), True where key <= query."),
    ]


def _causal_ref(T_q, T_k=None):
    return attention.causal_mask(T_q, T_k)


def _ones(T_q, T_k):
    return torch.ones(T_q, T_q if T_k is None else T_k, dtype=torch.bool)


def _diagonal_shift(got, want, case: Case) -> Diagnosis | None:
    """A triangle whose diagonal is shifted: tril(d) with d != 0."""
    if not isinstance(got, torch.Tensor) or got.dtype != torch.bool or got.shape != want.shape \
            or torch.equal(got, want):
        return None
    T_q, T_k = want.shape
    for d in range(-T_q, T_k + 1):
        if d and torch.equal(got, torch.ones(T_q, T_k, dtype=torch.bool).tril(d)):
            how = (f"aligned bottom-right (shifted by T_k - T_q = {d})" if d == T_k - T_q
                   else f"shifted by {d}")
            return Diagnosis("diagonal shifted", f"your triangle's diagonal is {how}: the mask is "
                             "aligned top-left, query i sees keys 0..i whatever T_k is: "
                             "torch.ones(T_q, T_k).tril() with diagonal 0.")
    return None


register(Exercise(
    key="causal_mask",
    lesson=LESSON,
    reference=_causal_ref,
    cases=_causal_cases,
    diagnosers=[_diagonal_shift],
    library_name="lm.attention.causal_mask",
    mistakes=[
        Mistake("strict lower triangle", lambda T_q, T_k=None: _ones(T_q, T_k).tril(-1),
                "a token may attend to ITSELF: keep the diagonal (tril(), not tril(-1)); "
                "otherwise the first token sees nothing at all."),
        Mistake("inverted (True = future)", lambda T_q, T_k=None: _ones(T_q, T_k).triu(1),
                "True means MAY attend: the past and the present (on and below the diagonal), "
                "not the future."),
        Mistake("upper triangle", lambda T_q, T_k=None: _ones(T_q, T_k).triu(),
                "rows are queries, columns are keys: query i sees keys j <= i, the LOWER "
                "triangle (tril)."),
        Mistake("T_k ignored", lambda T_q, T_k=None: _ones(T_q, None).tril(),
                "when T_k is given the mask has T_k columns: torch.ones(T_q, T_k).tril()."),
    ],
))


# --------------------------------------------------------------------------- masked attention


def _masked_cases() -> list[Case]:
    g = torch.Generator().manual_seed(31)
    q, k, v = _randn(2, 5, 8, g=g), _randn(2, 5, 8, g=g), _randn(2, 5, 4, g=g)
    causal = attention.causal_mask(5)
    pad = attention.padding_mask(torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]))[:, 0]  # (B, 1, T)
    fully = torch.ones(4, 6, dtype=torch.bool)
    fully[2] = False  # query 2 may attend to nothing
    return [
        Case("no mask (all True)", (q, k, v, torch.ones(5, 5, dtype=torch.bool)),
             hint="an all-True mask changes nothing: plain scaled dot-product attention."),
        Case("causal mask", (q, k, v, causal),
             hint="put -inf in the scores where the mask is False, BEFORE the softmax."),
        Case("padding mask", (q, k, v, pad),
             hint="the mask broadcasts against the scores (B, T_q, T_k); padded keys get weight 0."),
        Case("padding and causal", (q, k, v, pad & causal),
             hint="True = may attend; combine two masks with &."),
        Case("a fully masked row", (_randn(4, 8, g=g), _randn(6, 8, g=g), _randn(6, 3, g=g), fully),
             hint="a query that may attend to nothing must give zeros, not nan: softmax of a row "
                  "of -inf is 0/0; set such rows to 0 (e.g. torch.where on mask.any(-1))."),
    ]


def _masked_ref(q, k, v, mask):
    return attention.scaled_dot_product_attention(q, k, v, mask=mask)


def _scores(q, k):
    return q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])


def _masked_inverted(q, k, v, mask):
    return torch.softmax(_scores(q, k).masked_fill(mask, float("-inf")), dim=-1) @ v


def _masked_after_softmax(q, k, v, mask):
    return (torch.softmax(_scores(q, k), dim=-1) * mask) @ v


def _masked_zero_fill(q, k, v, mask):
    return torch.softmax(_scores(q, k).masked_fill(~mask, 0.0), dim=-1) @ v


def _masked_big_negative(q, k, v, mask):
    return torch.softmax(_scores(q, k).masked_fill(~mask, -1e9), dim=-1) @ v


def _masked_nan_rows(q, k, v, mask):
    return torch.softmax(_scores(q, k).masked_fill(~mask, float("-inf")), dim=-1) @ v


def _probe_inputs() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(35)
    return _randn(4, 8, g=g), _randn(4, 8, g=g), _randn(4, 3, g=g)


def _mask_rows_are_queries(fn) -> str | None:
    """mask[i, j] says whether query i may see key j: applying mask.T is a different answer."""
    q, k, v = _probe_inputs()
    mask = attention.causal_mask(4)
    out = torch.as_tensor(fn(q, k, v, mask))
    flipped = _masked_ref(q, k, v, mask.T)
    if out.shape == flipped.shape and torch.allclose(out, flipped, atol=1e-5) \
            and not torch.allclose(out, _masked_ref(q, k, v, mask), atol=1e-5):
        return ("you apply the mask transposed: mask[i, j] is query i (row) and key j (column), "
                "the layout of the scores q @ k^T; don't transpose it.")
    return None


def _mask_has_an_effect(fn) -> str | None:
    q, k, v = _probe_inputs()
    masked = torch.as_tensor(fn(q, k, v, attention.causal_mask(4)))
    free = torch.as_tensor(fn(q, k, v, torch.ones(4, 4, dtype=torch.bool)))
    if masked.shape == free.shape and torch.allclose(masked, free, atol=1e-6):
        return ("the mask has no effect: your output is the same as with an all-True mask. Apply "
                "it to the scores before the softmax: scores.masked_fill(~mask, float('-inf')).")
    return None


def _masked_keys_are_unseen(fn) -> str | None:
    """Changing the value of a key a query may not see must not change that query's output."""
    q, k, v = _probe_inputs()
    mask = attention.causal_mask(4)
    v2 = v.clone()
    v2[3] += 10.0  # key 3: only query 3 may see it
    a = torch.as_tensor(fn(q, k, v, mask))
    b = torch.as_tensor(fn(q, k, v2, mask))
    if a.shape == b.shape == (4, 3) and not torch.allclose(a[:3], b[:3], atol=1e-6):
        return ("changing the value of a key that a query may not see changed that query's output: "
                "masked keys must get weight exactly 0. Put -inf in their scores before the "
                "softmax (scores.masked_fill(~mask, float('-inf'))); setting them to 0, or adding "
                "or multiplying by the mask, leaves them some weight.")
    return None


register(Exercise(
    key="masked_attention",
    lesson=LESSON,
    reference=_masked_ref,
    cases=_masked_cases,
    properties=[Property("masked with rows = queries", _mask_rows_are_queries),
                Property("affected by the mask", _mask_has_an_effect),
                Property("blind to masked keys", _masked_keys_are_unseen),
                Property("weights that sum to 1 over the keys", lambda fn: _weights_sum_to_one(
                    lambda q, k, v: fn(q, k, v, torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool)))),
                Property("scaled by 1/sqrt(d_k)", lambda fn: _score_scale(
                    lambda q, k, v: fn(q, k, v, torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool))))],
    library_name="lm.attention.scaled_dot_product_attention",
    mistakes=[
        Mistake("mask inverted", _masked_inverted,
                "True means MAY attend (as in F.scaled_dot_product_attention): fill -inf where "
                "the mask is False, scores.masked_fill(~mask, -inf)."),
        Mistake("mask applied after the softmax", _masked_after_softmax,
                "zeroing weights after the softmax leaves rows that no longer sum to 1: mask the "
                "SCORES with -inf before the softmax."),
        Mistake("masked scores set to 0", _masked_zero_fill,
                "a score of 0 still gets weight exp(0) = 1 after the softmax: fill masked scores "
                "with -inf."),
        Mistake("-1e9 instead of -inf", _masked_big_negative,
                "with -1e9 a fully masked row becomes a uniform average of all values; fill with "
                "-inf and give rows that may attend to nothing an all-zero output."),
        Mistake("nan on fully masked rows", _masked_nan_rows,
                "softmax of a row of -inf is 0/0 = nan: give rows where mask.any(-1) is False "
                "zero weights (torch.where) so the output is 0, not nan."),
    ],
))


# --------------------------------------------------------------------------- split / merge heads


def _split_cases() -> list[Case]:
    g = torch.Generator().manual_seed(32)
    return [
        Case("arange (easy to read)", (torch.arange(2 * 3 * 8, dtype=torch.float32).view(2, 3, 8), 2),
             hint="head h gets features h*d_head .. (h+1)*d_head - 1 of every token."),
        Case("4 heads", (_randn(2, 5, 16, g=g), 4),
             hint="view as (B, T, n_heads, d_head), then transpose(1, 2) -> (B, n_heads, T, d_head)."),
        Case("one head", (_randn(1, 4, 6, g=g), 1), hint="one head: (B, 1, T, D)."),
        Case("T = 1", (_randn(3, 1, 12, g=g), 3), hint="a single token still gets the head axis."),
    ]


def _split_no_transpose(x, n_heads):
    B, T, D = x.shape
    return x.reshape(B, n_heads, T, D // n_heads)


def _split_heads_last(x, n_heads):
    B, T, D = x.shape
    return x.view(B, T, D // n_heads, n_heads).permute(0, 3, 1, 2)


def _split_no_swap(x, n_heads):
    B, T, D = x.shape
    return x.view(B, T, n_heads, D // n_heads)


register(Exercise(
    key="split_heads",
    lesson=LESSON,
    reference=attention.split_heads,
    cases=_split_cases,
    library_name="lm.attention.split_heads",
    mistakes=[
        Mistake("reshape without transpose", _split_no_transpose,
                "reshaping (B, T, D) straight to (B, n_heads, T, d_head) mixes tokens: view as "
                "(B, T, n_heads, d_head) first, then transpose(1, 2)."),
        Mistake("heads interleaved", _split_heads_last,
                "each head takes a CONTIGUOUS slice of d_head features: view(B, T, n_heads, "
                "d_head), not view(B, T, d_head, n_heads)."),
        Mistake("no transpose at all", _split_no_swap,
                "the result must be (B, n_heads, T, d_head) so attention runs per head over T: "
                "transpose(1, 2)."),
    ],
))


def _merge_cases() -> list[Case]:
    g = torch.Generator().manual_seed(33)
    return [
        Case("arange (easy to read)", (torch.arange(2 * 2 * 3 * 4, dtype=torch.float32).view(2, 2, 3, 4),),
             hint="token t's features are head 0's d_head values, then head 1's, ..."),
        Case("4 heads", (_randn(2, 4, 5, 8, g=g),),
             hint="transpose(1, 2) -> (B, T, n_heads, d_head), then reshape to (B, T, D)."),
        Case("one head", (_randn(1, 1, 4, 6, g=g),), hint="one head: (B, T, d_head)."),
        Case("split then merge", (attention.split_heads(_randn(2, 3, 12, g=g), 3),),
             hint="merge_heads must undo split_heads exactly."),
    ]


def _merge_no_transpose(x):
    B, H, T, d = x.shape
    return x.reshape(B, T, H * d)


def _merge_head_last(x):
    B, H, T, d = x.shape
    return x.permute(0, 2, 3, 1).reshape(B, T, H * d)


def _merge_view(x):
    B, H, T, d = x.shape
    return x.transpose(1, 2).view(B, T, H * d)


register(Exercise(
    key="merge_heads",
    lesson=LESSON,
    reference=attention.merge_heads,
    cases=_merge_cases,
    library_name="lm.attention.merge_heads",
    mistakes=[
        Mistake("reshape without transpose", _merge_no_transpose,
                "reshaping (B, n_heads, T, d_head) straight to (B, T, D) mixes tokens: "
                "transpose(1, 2) first, then reshape."),
        Mistake("heads interleaved", _merge_head_last,
                "put each head's d_head features side by side (head 0's block, then head 1's): "
                "transpose(1, 2) to (B, T, n_heads, d_head), not (B, T, d_head, n_heads)."),
        Mistake("view after transpose", _merge_view,
                "after transpose the tensor is not contiguous, so .view fails: use .reshape (or "
                ".contiguous().view)."),
    ],
))


# --------------------------------------------------------------------------- sinusoidal positions


def _pos_cases() -> list[Case]:
    return [
        Case("4 positions with d = 4", (4, 4),
             hint="position 0 is [0, 1, 0, 1, ...]: sin on even dims, cos on odd dims."),
        Case("10 positions with d = 16", (10, 16),
             hint="the frequency of the pair (2i, 2i+1) is 1 / 10000^(2i/d_model)."),
        Case("d = 2", (5, 2), hint="with d_model = 2 there is one pair: sin(p), cos(p)."),
        Case("64 positions with d = 32", (64, 32), hint="positions count from 0."),
    ]


def _pe_with(T, d, exponent, swap=False, start=0, concat=False):
    pos = torch.arange(start, start + T, dtype=torch.float64)[:, None]
    i = torch.arange(d // 2, dtype=torch.float64)
    angle = pos / 10000.0 ** exponent(i, d)
    a, b = (torch.cos(angle), torch.sin(angle)) if swap else (torch.sin(angle), torch.cos(angle))
    if concat:
        return torch.cat([a, b], dim=-1).float()
    return torch.stack([a, b], dim=-1).reshape(T, d).float()  # interleave: a0 b0 a1 b1 ...


def _two_i(i, d):
    return 2 * i / d


def _frequencies(got, want, case: Case) -> Diagnosis | None:
    """Read each pair's angle at position 1 off the learner's table: sin and cos of one angle each."""
    if not isinstance(got, torch.Tensor) or got.shape != want.shape or not got.is_floating_point():
        return None
    g = got.double()
    T, d = g.shape
    if T < 2 or d < 2 or not torch.allclose(g[0], want[0].double(), atol=1e-5):
        return None  # position 0 is wrong: the case's hint says what it must be
    s, c = g[:, 0::2][:, : d // 2], g[:, 1::2][:, : d // 2]
    if not torch.allclose(s ** 2 + c ** 2, torch.ones_like(s), atol=1e-4):
        return Diagnosis("pairs of one angle", "dims 2i and 2i+1 must be the sine and the cosine of "
                         "the SAME angle, p / 10000^(2i/d_model): both dims of a pair share one "
                         "frequency, with i the index of the pair.")
    omega = torch.atan2(s[1], c[1])  # the angle of each pair at position 1
    i = torch.arange(d // 2, dtype=torch.float64)
    expected = 10000.0 ** (-2 * i / d)
    bad = ~torch.isclose(omega, expected, rtol=1e-4, atol=1e-6)
    if not bad.any():
        return None
    use = (i > 0) & (omega > 0) & (omega < 1)
    if use.sum() >= 1:
        base = omega[use] ** (-d / (2 * i[use]))
        if torch.allclose(base, base[0].expand_as(base), rtol=1e-3):
            return Diagnosis("base", f"your frequencies use the base {float(base[0]):.4g}; the formula "
                             "uses 10000: the angle of pair i is p / 10000^(2i/d_model).")
    j = int(bad.nonzero()[0])
    return Diagnosis("frequencies", f"the frequency of pair {j} is wrong: at position 1 its angle "
                     f"should be 1 / 10000^({2 * j}/{d}) = {float(expected[j]):.3g}, yours is "
                     f"{float(omega[j]):.3g}. The frequencies fall from 1 (pair 0) towards 1/10000: "
                     "divide the position by 10000^(2i/d_model).")


register(Exercise(
    key="sinusoidal_positions",
    lesson=LESSON,
    reference=attention.sinusoidal_positions,
    cases=_pos_cases,
    diagnosers=[_frequencies],
    library_name="lm.attention.sinusoidal_positions",
    mistakes=[
        Mistake("sin and cos swapped", lambda T, d: _pe_with(T, d, _two_i, swap=True),
                "sin goes on the EVEN dims (0, 2, ...) and cos on the odd ones: position 0 is "
                "[0, 1, 0, 1, ...]."),
        Mistake("exponent i/d", lambda T, d: _pe_with(T, d, lambda i, d: i / d),
                "the pair index i enters as 2i/d_model: frequencies 1/10000^(2i/d), so the last "
                "pair's wavelength reaches about 10000 * 2*pi."),
        Mistake("halves instead of interleaved", lambda T, d: _pe_with(T, d, _two_i, concat=True),
                "interleave the two: dim 2i is sin, dim 2i+1 is cos of the SAME angle, not all "
                "sines then all cosines."),
        Mistake("positions from 1", lambda T, d: _pe_with(T, d, _two_i, start=1),
                "positions count from 0 (torch.arange(T)): the first row is [0, 1, 0, 1, ...]."),
        Mistake("exponent with +1", lambda T, d: _pe_with(T, d, lambda i, d: (2 * i + 1) / d),
                "both dims of a pair share one frequency, 1/10000^(2i/d_model) with i the pair "
                "index; don't use the odd dim's own index."),
    ],
))
