"""Checked exercises of lesson 04 (the transformer)."""

from __future__ import annotations

import math

import torch

from lmcourse import transformer as tr
from lmcourse.attention import padding_mask
from lmcourse.checker import Case, Exercise, Mistake, register

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


register(Exercise(
    key="layer_norm",
    lesson=LESSON,
    reference=tr.layer_norm,
    cases=_ln_cases,
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


register(Exercise(
    key="gelu",
    lesson=LESSON,
    reference=tr.gelu,
    cases=_gelu_cases,
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
