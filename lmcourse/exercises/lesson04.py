"""Checked exercises of lesson 04 (the transformer)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch

from lmcourse import transformer as tr
from lmcourse.attention import padding_mask
from lmcourse.checker import Case, Diagnosis, Exercise, Mistake, Property
from lmcourse.exercises import register

LESSON = "04_transformer"


# --------------------------------------------------------------------------- layer norm


def _ln_cases() -> list[Case]:
    g = torch.Generator().manual_seed(40)
    D = 8
    w, b = 1 + 0.5 * torch.randn(D, generator=g), torch.randn(D, generator=g)
    const = torch.randn(3, D, generator=g)
    const[1] = 2.5  # a row with no spread at all
    return [
        Case("one vector", (torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.ones(4), torch.zeros(4), 1e-5),
             hint="subtract the mean of the vector, divide by sqrt(variance + eps)."),
        Case("a batch with gain and bias", (torch.randn(4, D, generator=g), w, b, 1e-5),
             hint="normalise each row over the last dimension, then multiply by weight and add bias."),
        Case("3-D activations", (3 + 5 * torch.randn(2, 3, D, generator=g), w, b, 1e-5),
             hint="work along the last dimension only (keepdim=True), whatever the number of dims."),
        Case("small spread", (1e-2 * torch.randn(2, D, generator=g), w, b, 1e-5),
             hint="eps goes inside the square root: (x - mean) / sqrt(var + eps)."),
        Case("a constant row", (const, w, b, 1e-5),
             hint="a row with variance 0 must give `bias`, not nan: that is what eps is for."),
        Case("large eps", (torch.randn(3, D, generator=g), w, b, 0.5),
             hint="use the eps you are given, inside the square root."),
    ]


def _ln_unbiased(x, w, b, eps):
    return (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True) + eps) * w + b


def _ln_eps_outside(x, w, b, eps):
    mean = x.mean(-1, keepdim=True)
    std = ((x - mean) ** 2).mean(-1, keepdim=True).sqrt()
    return (x - mean) / (std + eps) * w + b


def _ln_no_eps(x, w, b, eps):
    mean = x.mean(-1, keepdim=True)
    return (x - mean) / ((x - mean) ** 2).mean(-1, keepdim=True).sqrt() * w + b


def _ln_dim0(x, w, b, eps):
    mean = x.mean(0, keepdim=True)
    return (x - mean) / torch.sqrt(((x - mean) ** 2).mean(0, keepdim=True) + eps) * w + b


def _ln_everything(x, w, b, eps):
    mean = x.mean()
    return (x - mean) / torch.sqrt(((x - mean) ** 2).mean() + eps) * w + b


def _ln_no_affine(x, w, b, eps):
    return tr.layer_norm(x, None, None, eps)


def _ln_rows(got, want, case: Case) -> Diagnosis | None:
    """Undo the gain and bias, then look at each row: centred? variance 1? or gain and bias swapped?"""
    if not isinstance(got, torch.Tensor) or got.shape != want.shape or not got.is_floating_point():
        return None
    x, w, b, eps = (a.double() if isinstance(a, torch.Tensor) else a for a in case.args)
    g = got.double()
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    n = (x - mean) / torch.sqrt(var + eps)
    if bool((b.abs() > 1e-3).all()) and torch.allclose(g, n * b + w, atol=1e-4):
        return Diagnosis("weight and bias swapped", "weight and bias are swapped: multiply the "
                         "normalised vector by weight (the gain), then add bias.")
    if not bool((w.abs() > 1e-3).all()):
        return None
    u = (g - b) / w  # what the learner's normalisation gave, before the gain and bias
    spread = (var > 1e-3).squeeze(-1)  # rows with a clear spread
    if not spread.any():
        return None
    u, n, var = u[spread], n[spread], var[spread]
    if not torch.allclose(u.mean(-1), torch.zeros(()).double(), atol=1e-3):
        return Diagnosis("not centred", "your normalised rows are not centred (their mean is not 0): "
                         "subtract each row's mean first, x - x.mean(-1, keepdim=True).")
    ratio = (u ** 2).mean(-1) / (n ** 2).mean(-1)
    if torch.allclose(ratio, torch.ones(()).double(), atol=1e-3):
        return None
    D = x.shape[-1]
    note = (f" (yours is exactly (D - 1)/D = {(D - 1) / D:.3g} of it: x.var() and x.std() divide by "
            "D - 1 unless you pass unbiased=False)") if torch.allclose(
                ratio, torch.full((), (D - 1) / D).double(), atol=1e-3) else ""
    return Diagnosis("variance not 1", "your normalised rows have the wrong spread: their variance "
                     f"should be 1{note}. Divide x - mean by the standard deviation sqrt(var + eps), "
                     "with var = ((x - mean)**2).mean(-1, keepdim=True), dividing by D.")


register(Exercise(
    key="layer_norm",
    lesson=LESSON,
    reference=tr.layer_norm,
    cases=_ln_cases,
    diagnosers=[_ln_rows],
    library_name="lm.transformer.layer_norm",
    mistakes=[
        Mistake("unbiased variance", _ln_unbiased,
                "x.var() divides by D - 1 (the unbiased estimate); layer norm divides by D: "
                "use ((x - mean)**2).mean(-1, keepdim=True) or x.var(-1, unbiased=False)."),
        Mistake("eps outside the sqrt", _ln_eps_outside,
                "you add eps to the standard deviation; torch and transformers add it to the "
                "VARIANCE: (x - mean) / sqrt(var + eps). It matters when the spread is small."),
        Mistake("no eps", _ln_no_eps,
                "a row with no spread gives 0 / 0 = nan: add eps to the variance before the sqrt."),
        Mistake("wrong dimension", _ln_dim0,
                "you normalise along dimension 0 (across the batch: that is batch norm); layer "
                "norm normalises each vector over its features, the LAST dimension."),
        Mistake("normalised over everything", _ln_everything,
                "you use one mean and variance for the whole tensor; each vector gets its own: "
                "mean(dim=-1, keepdim=True)."),
        Mistake("no gain or bias", _ln_no_affine,
                "after normalising, scale by `weight` and shift by `bias` (the learned gain and "
                "bias, one per feature)."),
    ],
))


# --------------------------------------------------------------------------- GELU


def _gelu_cases() -> list[Case]:
    g = torch.Generator().manual_seed(41)
    return [
        Case("a few values", (torch.linspace(-4, 4, 17),),
             hint="GELU(x) = x * Phi(x) = 0.5 * x * (1 + erf(x / sqrt(2)))."),
        Case("zero", (torch.zeros(3),), hint="GELU(0) = 0."),
        Case("large magnitudes", (torch.tensor([-60.0, -12.0, 12.0, 60.0]),),
             hint="for large |x| GELU tends to relu: x for x >> 0, 0 for x << 0."),
        Case("a batch", (3 * torch.randn(4, 6, generator=g),),
             hint="GELU works elementwise: any shape in, the same shape out."),
    ]


def _gelu_tanh(x):
    return tr.gelu(x, approximate="tanh")


def _gelu_cdf(got, want, case: Case) -> Diagnosis | None:
    """GELU(x) = x * Phi(x): read the learner's Phi = got / x and compare it with known curves."""
    if not isinstance(got, torch.Tensor) or got.shape != want.shape or not got.is_floating_point():
        return None
    x = case.args[0].double()
    use = (x.abs() > 0.2) & (x.abs() < 5)
    if int(use.sum()) < 3:
        return None
    x, phi = x[use], got.double()[use] / x[use]
    if not bool(((phi > 1e-9) & (phi < 1 - 1e-9)).all()):
        return None
    c = torch.special.ndtri(phi) / x  # phi = Phi(c x)
    if torch.allclose(c, c[0].expand_as(c), rtol=1e-3) and not math.isclose(float(c[0]), 1, rel_tol=1e-3):
        c0 = float(c[0])
        if math.isclose(c0, -1, rel_tol=1e-3):
            return Diagnosis("sign inside", "the sign is flipped inside: Phi(x) = 0.5 * (1 + erf(x / "
                             "sqrt(2))), with a plus; 1 - erf gives Phi(-x).")
        return Diagnosis("argument of erf", f"your Phi(x) is the normal CDF at {c0:.4g} x: the "
                         "argument of erf must be x / sqrt(2), Phi(x) = 0.5 * (1 + erf(x / sqrt(2))).")
    a = torch.logit(phi) / x  # phi = sigmoid(a x)
    if torch.allclose(a, a[0].expand_as(a), rtol=1e-3):
        return Diagnosis("sigmoid", f"your Phi(x) is sigmoid({float(a[0]):.4g} x), an approximation "
                         "(x * sigmoid(x) is SiLU, also called swish); GELU uses the normal CDF, "
                         "0.5 * (1 + erf(x / sqrt(2))).")
    return None


register(Exercise(
    key="gelu",
    lesson=LESSON,
    reference=tr.gelu,
    cases=_gelu_cases,
    diagnosers=[_gelu_cdf],
    library_name="lm.transformer.gelu",
    mistakes=[
        Mistake("relu", lambda x: x.clamp_min(0),
                "that is relu (max(0, x)); GELU weights x by the probability Phi(x) that a "
                "standard normal is below x: 0.5 * x * (1 + erf(x / sqrt(2)))."),
        Mistake("tanh approximation", _gelu_tanh,
                "that is the tanh approximation (GPT-2's gelu_new), off by up to about 5e-4; "
                "BERT uses the exact form with erf: 0.5 * x * (1 + erf(x / sqrt(2)))."),
        Mistake("sigmoid approximation", lambda x: x * torch.sigmoid(1.702 * x),
                "x * sigmoid(1.702 x) is only an approximation; use the exact form with erf."),
        Mistake("missing 1/sqrt(2)", lambda x: 0.5 * x * (1 + torch.erf(x)),
                "Phi(x) = 0.5 * (1 + erf(x / sqrt(2))): divide x by sqrt(2) inside erf."),
        Mistake("the CDF alone", lambda x: 0.5 * (1 + torch.erf(x / math.sqrt(2))),
                "that is Phi(x), a probability; GELU multiplies it by x."),
    ],
))


# --------------------------------------------------------------------------- blocks

_D, _H, _FF = 16, 4, 24  # a small block: d_model, heads, feed-forward width


def _randomise_layer_norms(block: torch.nn.Module, g: torch.Generator) -> None:
    """Give every LayerNorm a random gain and bias, so that mixing them up shows."""
    with torch.no_grad():
        for m in block.modules():
            if isinstance(m, tr.LayerNorm):
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))


def make_block(kind: str, seed: int = 0) -> tr.EncoderBlock | tr.DecoderBlock:
    """A small encoder ('post_ln') or decoder ('pre_ln') block with fixed random weights, in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # leave the caller's random stream untouched
        torch.manual_seed(seed)  # nn.Linear's initialisation draws from the global generator
        block = tr.EncoderBlock(_D, _H, _FF) if kind == "post_ln" else tr.DecoderBlock(_D, _H, _FF)
    _randomise_layer_norms(block, g)
    return block.eval()


def _with_encoder_block(fn, seed, x, attention_mask):
    mask = padding_mask(attention_mask) if attention_mask is not None else None
    with torch.no_grad():
        return fn(x, make_block("post_ln", seed), mask)


def _with_decoder_block(fn, seed, x):
    with torch.no_grad():
        return fn(x, make_block("pre_ln", seed))


def _block_inputs(seed: int, B: int, T: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(B, T, _D, generator=g)


def _came_out_of(y: torch.Tensor, block: torch.nn.Module) -> str | None:
    """The LayerNorm of `block` whose output `y` is (its rows normalised, then its gain and bias)."""
    for name in ("ln2", "ln1"):
        ln = getattr(block, name)
        with torch.no_grad():
            u = ((y - ln.bias) / ln.weight).double()
        if torch.allclose(u.mean(-1), torch.zeros(()).double(), atol=1e-3) and torch.allclose(
                u.var(-1, unbiased=False), torch.ones(()).double(), atol=1e-2):
            return name
    return None


def _block_of(case: Case, kind: str) -> tr.EncoderBlock | tr.DecoderBlock:
    return make_block(kind, case.args[0])


def _post_ln_output(got, want, case: Case) -> Diagnosis | None:
    if not isinstance(got, torch.Tensor) or got.shape != want.shape:
        return None
    by = _came_out_of(got, _block_of(case, "post_ln"))
    if by is None:
        return Diagnosis("output not normalised", "your output is not normalised: in a post-LN block "
                         "the last step is ln2(x + ffn(x)), so every output vector comes out of ln2.")
    if by == "ln1":
        return Diagnosis("ln1 last", "your output comes out of ln1: ln1 and ln2 are swapped (ln1 "
                         "after the attention's residual sum, ln2 after the feed-forward's).")
    return None


def _pre_ln_output(got, want, case: Case) -> Diagnosis | None:
    if not isinstance(got, torch.Tensor) or got.shape != want.shape:
        return None
    by = _came_out_of(got, _block_of(case, "pre_ln"))
    if by is not None:
        return Diagnosis("output normalised", f"your output is normalised (it comes out of {by}): in "
                         "a pre-LN block the residual stream stays raw, x + attn(ln1(x)) then "
                         "x + ffn(ln2(x)); only the INPUTS of the sub-layers are normalised.")
    return None


def _sublayer_inputs(fn: Callable, kind: str, x: torch.Tensor, mask: torch.Tensor | None) -> dict:
    """What each sub-layer of the block received when fn ran (hooks on ln1, attn, ln2, ffn)."""
    block = make_block(kind, 7)
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name in ("ln1", "attn", "ln2", "ffn"):
        def hook(module, args, kwargs, name=name):
            if name not in seen and args:
                seen[name] = args[0].detach().clone()
        handles.append(getattr(block, name).register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            fn(x.clone(), block, mask) if kind == "post_ln" else fn(x.clone(), block)
    finally:
        for h in handles:
            h.remove()
    return {"seen": seen, "block": block}


def _expected_flow(kind: str, block, x: torch.Tensor, mask) -> list[tuple[str, torch.Tensor, str]]:
    """(sub-layer, the input it should get, how that input is written) in the order data flows."""
    with torch.no_grad():
        if kind == "post_ln":
            a = x + block.attn(x, mask=mask)
            h = block.ln1(a)
            return [("attn", x, "the block's input x"), ("ln1", a, "x + attn(x)"),
                    ("ffn", h, "h = ln1(x + attn(x))"), ("ln2", h + block.ffn(h), "h + ffn(h)")]
        n1 = block.ln1(x)
        a = x + block.attn(n1, is_causal=True)
        return [("ln1", x, "the block's input x"), ("attn", n1, "ln1(x)"),
                ("ln2", a, "x + attn(ln1(x))"), ("ffn", block.ln2(a), "ln2(x + attn(ln1(x)))")]


_SUBLAYER = {"ln1": "ln1", "ln2": "ln2", "attn": "the attention", "ffn": "the feed-forward"}
_UNUSED = {
    ("post_ln", "ln1"): "normalise the attention's residual sum with it: h = ln1(x + attn(x)).",
    ("post_ln", "ln2"): "normalise the feed-forward's residual sum with it: ln2(h + ffn(h)).",
    ("post_ln", "attn"): "the block starts with the attention: x + attn(x, mask=mask).",
    ("post_ln", "ffn"): "after ln1 comes the feed-forward: ln2(h + ffn(h)).",
    ("pre_ln", "ln1"): "pre-LN normalises the input of each sub-layer: the attention gets ln1(x).",
    ("pre_ln", "ln2"): "use ln2 for the feed-forward's input: x + ffn(ln2(x)), with x after the "
                       "attention's residual sum.",
    ("pre_ln", "attn"): "the block starts with the attention: x + attn(ln1(x), is_causal=True).",
    ("pre_ln", "ffn"): "after the attention comes the feed-forward: x + ffn(ln2(x)).",
}


def _data_flow(kind: str) -> Callable[[Callable], str | None]:
    def check(fn: Callable) -> str | None:
        x = _block_inputs(21, 1, 5)
        run = _sublayer_inputs(fn, kind, x, None)
        seen, block = run["seen"], run["block"]
        flow = _expected_flow(kind, block, x, None)
        known = {how: t for _, t, how in flow}
        for name, want, how in flow:
            if name not in seen:
                return f"block.{name} is never called: {_UNUSED[kind, name]}"
            got = seen[name]
            if got.shape != want.shape or not torch.allclose(got, want, atol=1e-5):
                same = next((h for h, t in known.items() if t.shape == got.shape
                             and torch.allclose(got, t, atol=1e-5)), None)
                yours = f"yours gets {same}" if same else "yours gets something else"
                return (f"{_SUBLAYER[name]}'s input should be {how}; {yours}. Follow the block's "
                        "formula in order: " + ("x = ln1(x + attn(x)), then ln2(x + ffn(x))."
                                                 if kind == "post_ln" else
                                                 "x = x + attn(ln1(x)), then x + ffn(ln2(x))."))
        return None
    return check


def _later_tokens_matter(kind: str) -> Callable[[Callable], str | None]:
    """Change the last token: position 0's output must change (encoder) or stay (decoder)."""
    def check(fn: Callable) -> str | None:
        x = _block_inputs(22, 1, 5)
        x2 = x.clone()
        x2[:, -1] = _block_inputs(23, 1, 1)[:, 0]  # a different last token (not a shift: LN would hide it)
        if kind == "post_ln":
            a, b = (_with_encoder_block(fn, 5, t, None) for t in (x, x2))
        else:
            a, b = (_with_decoder_block(fn, 15, t) for t in (x, x2))
        a, b = torch.as_tensor(a), torch.as_tensor(b)
        if a.shape != x.shape or b.shape != x.shape:
            return None
        moved = not torch.allclose(a[:, :-1], b[:, :-1], atol=1e-6)
        if kind == "post_ln" and not moved:
            return ("changing the last token did not change any earlier output: an encoder is "
                    "bidirectional (every token attends to all the others, later ones included); "
                    "don't make its attention causal.")
        if kind == "pre_ln" and moved:
            return ("changing the last token changed the outputs of earlier positions: a decoder "
                    "must not see later tokens (the future). Use causal attention: "
                    "block.attn(..., is_causal=True), True = may attend on and below the diagonal.")
        return None
    return check


def _post_ln_cases() -> list[Case]:
    am = torch.ones(3, 6, dtype=torch.long)
    am[1, 4:] = 0
    am[2, 2:] = 0
    return [
        Case("one sequence", (1, _block_inputs(1, 1, 5), None),
             hint="x = block.ln1(x + block.attn(x, mask=mask)); then x = block.ln2(x + block.ffn(x))."),
        Case("a padded batch", (2, _block_inputs(2, 3, 6), am),
             hint="pass the padding mask to the attention: block.attn(x, mask=mask)."),
        Case("one token", (3, _block_inputs(3, 2, 1), None),
             hint="a single token attends to itself; the block still adds, then normalises."),
        Case("large activations", (4, _block_inputs(4, 2, 4, scale=50.0), None),
             hint="post-LN: the LayerNorm comes AFTER the residual sum, so the output is normalised."),
    ]


def _post_ln_ref(x, block, mask):
    return block(x, mask)


def _post_ln_as_pre_ln(x, block, mask):
    x = x + block.attn(block.ln1(x), mask=mask)
    return x + block.ffn(block.ln2(x))


def _post_ln_no_residual(x, block, mask):
    x = block.ln1(block.attn(x, mask=mask))
    return block.ln2(block.ffn(x))


def _post_ln_norm_branch(x, block, mask):
    x = x + block.ln1(block.attn(x, mask=mask))
    return x + block.ln2(block.ffn(x))


def _post_ln_no_mask(x, block, mask):
    return block(x, None)


def _post_ln_one_residual(x, block, mask):
    x = block.ln1(x + block.attn(x, mask=mask))
    return block.ln2(block.ffn(x))


register(Exercise(
    key="post_ln_block",
    lesson=LESSON,
    reference=_post_ln_ref,
    cases=_post_ln_cases,
    call=_with_encoder_block,
    library_name="lm.transformer.EncoderBlock",
    diagnosers=[_post_ln_output],
    properties=[Property("bidirectional", _later_tokens_matter("post_ln")),
                Property("wired as a post-LN block", _data_flow("post_ln"))],
    mistakes=[
        Mistake("pre-LN order", _post_ln_as_pre_ln,
                "that is the pre-LN (GPT) block. BERT's block is post-LN: add the sub-layer's "
                "output to its input FIRST, then normalise: x = ln1(x + attn(x))."),
        Mistake("no residual", _post_ln_no_residual,
                "each sub-layer's input must be added back (the residual path): "
                "ln1(x + attn(x)), not ln1(attn(x))."),
        Mistake("LN on the branch only", _post_ln_norm_branch,
                "you normalise the sub-layer's output and then add x; post-LN normalises the SUM: "
                "ln1(x + attn(x))."),
        Mistake("mask ignored", _post_ln_no_mask,
                "padding tokens must not be attended to: pass the mask on, "
                "block.attn(x, mask=mask)."),
        Mistake("feed-forward residual missing", _post_ln_one_residual,
                "the feed-forward sub-layer has its own residual path too: ln2(x + ffn(x))."),
    ],
))


def _pre_ln_cases() -> list[Case]:
    return [
        Case("one sequence", (11, _block_inputs(11, 1, 5)),
             hint="x = x + block.attn(block.ln1(x), is_causal=True); then x + block.ffn(block.ln2(x))."),
        Case("a batch", (12, _block_inputs(12, 2, 7)),
             hint="each position may attend to itself and earlier positions only: is_causal=True."),
        Case("one token", (13, _block_inputs(13, 3, 1)),
             hint="with one token, causal and full attention agree; look at the residual sums."),
        Case("large activations", (14, _block_inputs(14, 2, 4, scale=50.0)),
             hint="pre-LN: the residual path carries x unnormalised; only the sub-layer's input "
                  "is normalised."),
    ]


def _pre_ln_ref(x, block):
    return block(x)


def _pre_ln_as_post_ln(x, block):
    x = block.ln1(x + block.attn(x, is_causal=True))
    return block.ln2(x + block.ffn(x))


def _pre_ln_not_causal(x, block):
    x = x + block.attn(block.ln1(x))
    return x + block.ffn(block.ln2(x))


def _pre_ln_normalised_residual(x, block):
    h = block.ln1(x)
    x = h + block.attn(h, is_causal=True)
    h = block.ln2(x)
    return h + block.ffn(h)


def _pre_ln_no_residual(x, block):
    x = block.attn(block.ln1(x), is_causal=True)
    return block.ffn(block.ln2(x))


register(Exercise(
    key="pre_ln_block",
    lesson=LESSON,
    reference=_pre_ln_ref,
    cases=_pre_ln_cases,
    call=_with_decoder_block,
    library_name="lm.transformer.DecoderBlock",
    diagnosers=[_pre_ln_output],
    properties=[Property("causal", _later_tokens_matter("pre_ln")),
                Property("wired as a pre-LN block", _data_flow("pre_ln"))],
    mistakes=[
        Mistake("post-LN order", _pre_ln_as_post_ln,
                "that is the post-LN (BERT) block. GPT's block is pre-LN: normalise the sub-layer's "
                "INPUT and leave the residual path alone: x = x + attn(ln1(x))."),
        Mistake("not causal", _pre_ln_not_causal,
                "a decoder must not look at later tokens: block.attn(..., is_causal=True)."),
        Mistake("residual from the normalised input", _pre_ln_normalised_residual,
                "add the sub-layer's output to the RAW x, not to ln1(x): the residual path "
                "carries x through unchanged."),
        Mistake("no residual", _pre_ln_no_residual,
                "each sub-layer's output is ADDED to its input: x = x + attn(ln1(x))."),
    ],
))


# --------------------------------------------------------------------------- parameter count


def _gpt_count_ref(vocab_size, block_size, d_model, n_layers, d_ff):
    return tr.gpt_param_count(tr.GPTConfig(vocab_size=vocab_size, block_size=block_size,
                                           d_model=d_model, n_layers=n_layers, d_ff=d_ff))


def _count_variant(ln=True, final_ln=True, bias=True, n_attn=4, pos=True, head=False, ff=None):
    def count(V, T, D, L, F):
        F = ff * D if ff else F
        attn = n_attn * D * D + (n_attn * D if bias else 0)
        ffn = 2 * D * F + ((F + D) if bias else 0)
        block = attn + ffn + (4 * D if ln else 0)
        return (V * D + (T * D if pos else 0) + L * block + (2 * D if ln and final_ln else 0)
                + (V * D if head else 0))
    return count


# The parts of a GPT parameter count, as functions of (V, T, D, L, F) = (vocab_size, block_size,
# d_model, n_layers, d_ff), each with what it counts.
_TERMS = [
    ("V·D", lambda V, T, D, L, F: V * D, "a vocab_size x D matrix (the token embedding; the LM head "
     "is tied to it)"),
    ("block_size·D", lambda V, T, D, L, F: T * D, "the position embeddings, one D-sized row per "
     "position"),
    ("n_layers·D²", lambda V, T, D, L, F: L * D * D, "D x D matrices in every block (attention has "
     "4: q, k, v and the output projection)"),
    ("n_layers·D·d_ff", lambda V, T, D, L, F: L * D * F, "feed-forward matrices in every block "
     "(there are 2: D x d_ff and d_ff x D)"),
    ("n_layers·D", lambda V, T, D, L, F: L * D, "D-sized vectors in every block: the biases of the "
     "projections (q, k, v, out, fc2) and the gain and the bias of each LayerNorm"),
    ("n_layers·d_ff", lambda V, T, D, L, F: L * F, "fc1's bias, d_ff numbers in every block"),
    ("D", lambda V, T, D, L, F: D, "D-sized vectors outside the blocks (the final LayerNorm has a "
     "gain and a bias)"),
]
_PROBE_SIZES = [(10, 8, 4, 1, 16), (100, 16, 8, 0, 32), (100, 16, 32, 3, 37), (7, 5, 3, 2, 11),
                (13, 4, 6, 3, 5), (29, 9, 5, 4, 23)]


def _count_terms(fn: Callable) -> str | None:
    """Explain the learner's count minus the right one as a few of the terms above."""
    diffs = []
    for sizes in _PROBE_SIZES:
        got = fn(*sizes)
        if not isinstance(got, (int, float)) or isinstance(got, bool):
            return None
        diffs.append(got - _gpt_count_ref(*sizes))
    if not any(diffs):
        return None
    values = [[f(*sizes) for sizes in _PROBE_SIZES] for _, f, _ in _TERMS]
    coefficients = [c for c in range(-4, 5) if c]
    for n_terms in (1, 2, 3):
        for chosen in itertools.combinations(range(len(_TERMS)), n_terms):
            for coefs in itertools.product(coefficients, repeat=n_terms):
                if all(sum(c * values[t][j] for c, t in zip(coefs, chosen)) == d
                       for j, d in enumerate(diffs)):
                    parts = [(c, _TERMS[t]) for c, t in zip(coefs, chosen)]
                    sign = parts[0][0] > 0
                    if all((c > 0) == sign for c, _ in parts):
                        amount = " + ".join(f"{abs(c)}·{name}" if abs(c) != 1 else name
                                            for c, (name, _, _) in parts)
                        what = "; ".join(f"{name}: {meaning}" for _, (name, _, meaning) in parts)
                        return (f"you count {amount} {'too many' if sign else 'too few'} "
                                f"({what}).")
                    terms = ", ".join(f"{c:+d}·{name}" for c, (name, _, _) in parts)
                    return f"your count is off by {terms}: look at those parts of the model."
    return None


register(Exercise(
    key="param_count",
    lesson=LESSON,
    reference=_gpt_count_ref,
    cases=[
        Case("tiny", (10, 8, 4, 1, 16), hint="count each matrix, each bias, each LayerNorm once."),
        Case("no blocks", (100, 16, 8, 0, 32),
             hint="with no blocks: token and position embeddings and the final LayerNorm."),
        Case("d_ff not 4 d_model", (100, 16, 32, 3, 37),
             hint="the feed-forward has D x d_ff + d_ff + d_ff x D + D parameters."),
        Case("GPT-2 small", (50257, 1024, 768, 12, 3072),
             hint="GPT-2 small has 124,439,808 parameters."),
    ],
    atol=0.0,
    rtol=0.0,  # a count is exact: GPT-2 small's final LayerNorm is 1e-5 of the total
    library_name="lm.transformer.gpt_param_count",
    properties=[Property("counting every part once", _count_terms)],
    mistakes=[
        Mistake("tied head counted twice", _count_variant(head=True),
                "the LM head is tied: it IS the token-embedding matrix, so it adds no parameters."),
        Mistake("no biases", _count_variant(bias=False),
                "every nn.Linear of GPT-2 has a bias: D per projection, d_ff for fc1."),
        Mistake("LayerNorms missing", _count_variant(ln=False),
                "each LayerNorm has a gain and a bias (2 D): two per block, plus the final one."),
        Mistake("final LayerNorm missing", _count_variant(final_ln=False),
                "a pre-LN model ends with one more LayerNorm (ln_f) before the head: 2 D more."),
        Mistake("attention without its output projection", _count_variant(n_attn=3),
                "attention has FOUR D x D projections: q, k, v and the output projection."),
        Mistake("position embeddings missing", _count_variant(pos=False),
                "GPT learns a position embedding: block_size x D parameters."),
        Mistake("d_ff taken as 4 d_model", _count_variant(ff=4),
                "use the d_ff you are given; 4 d_model is only GPT-2's choice."),
    ],
))
