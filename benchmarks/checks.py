"""How well the exercise checks catch wrong answers they were never shown, and how specific their advice is.

    python benchmarks/checks.py [--verbose]

A held-out set of plausible wrong answers, written the way a learner errs (off by one, wrong axis,
a forgotten mask, a wrong scale, a list or a numpy array instead of a tensor, changing an input in
place, a half-finished function, ...). None of them is in an exercise's catalog of mistakes, and
none may be added there: the point is to measure the checks on answers they were not tuned on.
Each wrong answer names what good advice must mention (a regular expression matched against the
verdict's text, the failing case's name left out). A set of correct alternative implementations
(other formulas, other dtypes, a Python float for a 0-d tensor) must all pass.

Prints: how many wrong answers are rejected, how many get advice about their actual mistake, how
many correct alternatives pass, and the misses by exercise. tests/test_checker_benchmark.py asserts
the rates stay at or above 99% rejected and 70% specific advice, with no correct answer rejected.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lmcourse import attention  # noqa: E402
from lmcourse import exercises as course_exercises  # noqa: E402

IGNORE = -100
NEG_INF = -math.inf


@dataclass
class Wrong:
    """A held-out wrong answer and what advice about it must mention."""

    key: str
    fn: Callable
    expect: str                # regular expression, searched case-insensitively in the verdict
    fresh: bool = False        # written after the checker's diagnostics, never used to tune them


@dataclass
class Right:
    """A correct alternative implementation: it must pass."""

    key: str
    fn: Callable


WRONG: list[Wrong] = []
RIGHT: list[Right] = []


def wrong(key: str, expect: str, fresh: bool = False) -> Callable[[Callable], Callable]:
    def add(fn: Callable) -> Callable:
        WRONG.append(Wrong(key, fn, expect, fresh))
        return fn
    return add


def right(key: str) -> Callable[[Callable], Callable]:
    def add(fn: Callable) -> Callable:
        RIGHT.append(Right(key, fn))
        return fn
    return add


IN_PLACE = r"in place|in-place"
PARTLY = r"partly|some of the checks|some checks"
LIST = r"\blist\b"
NUMPY = r"numpy"


# --------------------------------------------------------------------------- 00 normalize


@wrong("normalize", LIST)
def normalize_tolist(counts):
    return (counts.double() / counts.sum(-1, keepdim=True)).tolist()


@wrong("normalize", r"dim|axis|row|column")
def normalize_axis0(counts):
    counts = counts.double()
    return counts / counts.sum(0, keepdim=True)


@wrong("normalize", r"keepdim")
def normalize_no_keepdim(counts):
    counts = counts.double()
    return counts / counts.sum(-1)


@wrong("normalize", r"100|factor|times|sum to 1|sums? to")
def normalize_percent(counts):
    counts = counts.double()
    return 100 * counts / counts.sum(-1, keepdim=True)


@wrong("normalize", IN_PLACE + r"|convert|\.double\(\)|\.float\(\)|integer")
def normalize_in_place(counts):
    return counts.div_(counts.sum(-1, keepdim=True))


@wrong("normalize", r"factor|times|sum to 1|sums? to|\bmean\b")
def normalize_by_mean(counts):
    counts = counts.double()
    return counts / counts.mean(-1, keepdim=True)


@right("normalize")
def normalize_float32(counts):
    counts = counts.float()
    return counts / counts.sum(dim=-1, keepdim=True)


# --------------------------------------------------------------------------- 01 softmax


@wrong("softmax", r"bool|dtype|true/false")
def softmax_argmax_bool(x):
    return x == x.amax(-1, keepdim=True)


@wrong("softmax", r"dim|axis|last|row|column")
def softmax_cols_after_row_max(x):
    e = (x - x.amax(-1, keepdim=True)).exp()
    return e / e.sum(0, keepdim=True)


@wrong("softmax", r"keepdim|broadcast|shape")
def softmax_max_no_keepdim(x):
    e = (x - x.max(-1).values).exp()
    return e / e.sum(-1, keepdim=True)


@wrong("softmax", LIST)
def softmax_list_of_rows(x):
    if x.dim() == 1:
        return torch.softmax(x, -1)
    return [torch.softmax(row, -1) for row in x]


@wrong("softmax", IN_PLACE)
def softmax_in_place(x):
    x -= x.amax(-1, keepdim=True)
    x.exp_()
    return x / x.sum(-1, keepdim=True)


@wrong("softmax", PARTLY)
def softmax_only_2d(x):
    if x.dim() > 2:
        raise NotImplementedError
    return torch.softmax(x, -1)


@wrong("softmax", NUMPY)
def softmax_numpy(x):
    a = x.numpy()
    e = np.exp(a - a.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@wrong("softmax", r"max|overflow|nan|inf")
def softmax_min_subtracted(x):
    e = (x - x.amin(-1, keepdim=True)).exp()
    return e / e.sum(-1, keepdim=True)


@right("softmax")
def softmax_torch(x):
    return F.softmax(x, dim=-1)


# --------------------------------------------------------------------------- 01 cross-entropy


@wrong("cross_entropy", r"-100|ignore")
def ce_index_with_minus_100(logits, targets):
    logp = torch.log_softmax(logits, -1)
    return -logp[torch.arange(len(targets)), targets].mean()


@wrong("cross_entropy", r"mean|average|shape|single number|scalar|one number")
def ce_per_example(logits, targets):
    keep = targets != IGNORE
    return -torch.log_softmax(logits, -1)[keep, targets[keep]]


@wrong("cross_entropy", r"log2|base|factor|times|bits|nats|1\.44")
def ce_bits(logits, targets):
    keep = targets != IGNORE
    return -(torch.log_softmax(logits, -1)[keep, targets[keep]] / math.log(2)).mean()


# Replaces a held-out answer (targets > 0) that became a catalogued mistake.
@wrong("cross_entropy", r"log.?softmax|log-probabilit|probabilit|normali")
def ce_nll_of_raw_logits(logits, targets):
    keep = targets != IGNORE
    return -logits[keep, targets[keep]].mean()


@wrong("cross_entropy", r"large|overflow|underflow|log-softmax|clamp|stable|max")
def ce_clamped_log_of_softmax(logits, targets):
    keep = targets != IGNORE
    p = torch.softmax(logits, -1).clamp_min(1e-12)
    return -p.log()[keep, targets[keep]].mean()


@wrong("cross_entropy", r"dim|dimension|last|axis")
def ce_lse_over_batch(logits, targets):
    keep = targets != IGNORE
    z = logits - logits.amax(-1, keepdim=True)
    logp = z - z.exp().sum(0, keepdim=True).log()
    return -logp[keep, targets[keep]].mean()


@wrong("cross_entropy", PARTLY)
def ce_no_ignore_support(logits, targets):
    if (targets == IGNORE).any():
        raise NotImplementedError("ignore_index")
    return -torch.log_softmax(logits, -1)[torch.arange(len(targets)), targets].mean()


@right("cross_entropy")
def ce_torch(logits, targets):
    return F.cross_entropy(logits, targets)


@right("cross_entropy")
def ce_python_float(logits, targets):
    return F.cross_entropy(logits, targets).item()


# --------------------------------------------------------------------------- 01 perplexity


@wrong("perplexity", r"geometric|order|before|inverse")
def ppl_mean_of_inverse_probs(log_probs):
    return torch.exp(-log_probs).mean()


@wrong("perplexity", r"number of tokens|len\(|count|divide by|one (too )?(few|many)|off by one")
def ppl_off_by_one_count(log_probs):
    return torch.exp(-log_probs.sum() / (len(log_probs) - 1))


@wrong("perplexity", r"sign|minus|negative|>= ?1")
def ppl_minus_outside(log_probs):
    return -log_probs.mean().exp()


@wrong("perplexity", r"base|natural log|10 \*\*|not 10")
def ppl_base_10(log_probs):
    return 10 ** (-log_probs.mean())


@wrong("perplexity", IN_PLACE)
def ppl_in_place(log_probs):
    log_probs.neg_()
    return log_probs.mean().exp()


@wrong("perplexity", r"round|whole|integer|\bint\b")
def ppl_rounded(log_probs):
    return round(float(torch.exp(-log_probs.mean())))


@right("perplexity")
def ppl_math(log_probs):
    return math.exp(-float(log_probs.mean()))


# --------------------------------------------------------------------------- 01 smoothed bigram


@wrong("smoothed_bigram", r"keepdim|broadcast|column")
def bigram_no_keepdim(counts, alpha):
    s = counts.double() + alpha
    return s / s.sum(1)


@wrong("smoothed_bigram", r"\blog")
def bigram_log_probs(counts, alpha):
    s = counts.double() + alpha
    return (s / s.sum(1, keepdim=True)).log()


@wrong("smoothed_bigram", r"transpos|swapped|columns")
def bigram_transposed(counts, alpha):
    s = counts.double() + alpha
    return (s / s.sum(1, keepdim=True)).T


@wrong("smoothed_bigram", IN_PLACE + r"|convert|\.double\(\)|\.float\(\)|integer")
def bigram_add_in_place(counts, alpha):
    counts.add_(alpha)
    return counts / counts.sum(1, keepdim=True)


@wrong("smoothed_bigram", NUMPY)
def bigram_numpy(counts, alpha):
    s = counts.numpy().astype(float) + alpha
    return s / s.sum(1, keepdims=True)


@wrong("smoothed_bigram", r"alpha you are given|given alpha|alpha argument|not 1|hard-coded|hard coded|fixed")
def bigram_laplace_always(counts, alpha):
    s = counts.double() + 1
    return s / s.sum(1, keepdim=True)


@right("smoothed_bigram")
def bigram_float32(counts, alpha):
    s = counts.float() + alpha
    return s / s.sum(dim=-1, keepdim=True)


# --------------------------------------------------------------------------- 01 bigram sequence log-probability


@wrong("bigram_sequence_log_prob", r"extra|start|T-1|one transition|too many|off by")
def seq_with_start_transition(probs, ids):
    return probs[ids[0], ids[0]].log() + probs[ids[:-1], ids[1:]].log().sum()


@wrong("bigram_sequence_log_prob", r"sign|minus|negative")
def seq_negative(probs, ids):
    return -probs[ids[:-1], ids[1:]].log().sum()


@wrong("bigram_sequence_log_prob", r"sum|shape|single|scalar|one number")
def seq_not_summed(probs, ids):
    return probs[ids[:-1], ids[1:]].log()


@wrong("bigram_sequence_log_prob", LIST + r"|sum")
def seq_list(probs, ids):
    return [probs[a, b].log() for a, b in zip(ids[:-1], ids[1:])]


@wrong("bigram_sequence_log_prob", r"index|pairs|previous|next|shape")
def seq_rows_only(probs, ids):
    return probs[ids].log().sum()


@wrong("bigram_sequence_log_prob", PARTLY)
def seq_no_single_token(probs, ids):
    if len(ids) < 2:
        raise NotImplementedError
    return probs[ids[:-1], ids[1:]].log().sum()


@right("bigram_sequence_log_prob")
def seq_python_float(probs, ids):
    return float(sum(math.log(probs[a, b]) for a, b in zip(ids[:-1].tolist(), ids[1:].tolist())))


# --------------------------------------------------------------------------- 02 softmax + CE gradient


def _onehot(logits, targets):
    y = torch.zeros_like(logits)
    keep = targets != IGNORE
    rows = keep.nonzero().squeeze(-1)
    y[rows, targets[rows]] = 1.0
    return y, keep


@wrong("softmax_ce_grad", r"-100|ignored|rows? .*(zero|0)")
def grad_ignore_not_zeroed(logits, targets):
    y, keep = _onehot(logits, targets)
    return (torch.softmax(logits, -1) - y) / keep.sum()


@wrong("softmax_ce_grad", r"-100|ignore|negative")
def grad_f_one_hot(logits, targets):
    y = F.one_hot(targets, logits.shape[-1]).to(logits.dtype)
    return (torch.softmax(logits, -1) - y) / len(targets)


@wrong("softmax_ce_grad", r"dim|dimension|last|axis|sum to")
def grad_softmax_dim0(logits, targets):
    y, keep = _onehot(logits, targets)
    return (torch.softmax(logits, 0) - y) * keep[:, None] / keep.sum()


@wrong("softmax_ce_grad", r"factor|times|too (small|large|big)")
def grad_divided_by_v(logits, targets):
    y, keep = _onehot(logits, targets)
    return (torch.softmax(logits, -1) - y) * keep[:, None] / logits.shape[1]


@wrong("softmax_ce_grad", r"shape|gradient|\(N, V\)")
def grad_returns_loss(logits, targets):
    return F.cross_entropy(logits, targets)


@wrong("softmax_ce_grad", r"probabilit|logits instead|not the logits|apply softmax")
def grad_logits_not_probs(logits, targets):
    y, keep = _onehot(logits, targets)
    return (logits - y) * keep[:, None] / keep.sum()


@wrong("softmax_ce_grad", r"stable|max|overflow|nan|inf")
def grad_naive_softmax(logits, targets):
    y, keep = _onehot(logits, targets)
    p = logits.exp() / logits.exp().sum(-1, keepdim=True)
    return (p - y) * keep[:, None] / keep.sum()


@right("softmax_ce_grad")
def grad_autograd(logits, targets):
    z = logits.detach().clone().requires_grad_(True)
    F.cross_entropy(z, targets).backward()
    return z.grad


# --------------------------------------------------------------------------- 02 manual backward pass


def _backward(params, cache, ids, targets, **change):
    dlogits = torch.softmax(cache["logits"], -1)
    dlogits[torch.arange(len(targets)), targets] -= 1
    dlogits = dlogits / len(targets)
    dW2 = cache["h"].T @ dlogits
    db2 = dlogits.sum(0)
    dh = dlogits @ params["W2"].T
    da = dh * change.get("tanh", lambda h: 1 - h ** 2)(cache["h"])
    dW1 = cache["x"].T @ da
    db1 = da.sum(0)
    dx = da @ params["W1"].T
    dE = torch.zeros_like(params["E"]).index_add_(0, ids, dx)
    out = {"E": dE, "W1": dW1, "b1": db1, "W2": dW2, "b2": db2}
    out.update(change.get("replace", lambda o, loc: {})(out, locals()))
    return out


@wrong("mlp_backward", r"W2\'\]: shape|W2.{0,40}transpos|transpos.{0,40}W2")
def mlp_dw2_transposed(params, cache, ids, targets):
    return _backward(params, cache, ids, targets,
                     replace=lambda o, loc: {"W2": loc["dlogits"].T @ cache["h"]})


@wrong("mlp_backward", r"missing")
def mlp_forgot_e(params, cache, ids, targets):
    out = _backward(params, cache, ids, targets)
    del out["E"]
    return out


@wrong("mlp_backward", r"b1\'\]: shape|b1.{0,40}sum|sum.{0,40}b1")
def mlp_b1_not_summed(params, cache, ids, targets):
    return _backward(params, cache, ids, targets, replace=lambda o, loc: {"b1": loc["da"]})


@wrong("mlp_backward", r"tanh\'|1 - h\^2|1 - h ?\*\* ?2|derivative")
def mlp_tanh_squared_wrong(params, cache, ids, targets):
    return _backward(params, cache, ids, targets, tanh=lambda h: (1 - h) ** 2)


@wrong("mlp_backward", r"E\'\]: shape|index_add|rows of E")
def mlp_de_is_dx(params, cache, ids, targets):
    return _backward(params, cache, ids, targets, replace=lambda o, loc: {"E": loc["dx"]})


@wrong("mlp_backward", r"dict")
def mlp_tuple(params, cache, ids, targets):
    g = _backward(params, cache, ids, targets)
    return g["E"], g["W1"], g["b1"], g["W2"], g["b2"]


@wrong("mlp_backward", r"W2\'\]|\bW2\b.{0,60}(wrong|factor|times)")
def mlp_dw2_extra_mean(params, cache, ids, targets):
    return _backward(params, cache, ids, targets,
                     replace=lambda o, loc: {"W2": loc["dW2"] / len(targets)})


@right("mlp_backward")
def mlp_autograd(params, cache, ids, targets):
    p = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    a = p["E"][ids] @ p["W1"] + p["b1"]
    logits = torch.tanh(a) @ p["W2"] + p["b2"]
    F.cross_entropy(logits, targets).backward()
    return {k: v.grad for k, v in p.items()}


# --------------------------------------------------------------------------- 02 numerical gradient


@wrong("numerical_grad", IN_PLACE + r"|restore|put back")
def numgrad_perturbs_input(f, x, eps=1e-6):
    grad = torch.zeros_like(x, dtype=torch.float64)
    flat = x.view(-1)
    for i in range(flat.numel()):
        flat[i] += eps
        plus = float(f(x))
        flat[i] -= 2 * eps
        minus = float(f(x))
        grad.view(-1)[i] = (plus - minus) / (2 * eps)
    return grad


@wrong("numerical_grad", LIST)
def numgrad_list(f, x, eps=1e-6):
    x = x.detach().double().clone()
    out = []
    for i in range(x.numel()):
        old = x.view(-1)[i].item()
        x.view(-1)[i] = old + eps
        plus = float(f(x))
        x.view(-1)[i] = old - eps
        minus = float(f(x))
        x.view(-1)[i] = old
        out.append((plus - minus) / (2 * eps))
    return out


@wrong("numerical_grad", r"shape")
def numgrad_flat(f, x, eps=1e-6):
    x = x.detach().double().clone()
    grad = torch.zeros(x.numel(), dtype=torch.float64)
    for i in range(x.numel()):
        old = x.view(-1)[i].item()
        x.view(-1)[i] = old + eps
        plus = float(f(x))
        x.view(-1)[i] = old - eps
        minus = float(f(x))
        x.view(-1)[i] = old
        grad[i] = (plus - minus) / (2 * eps)
    return grad


@wrong("numerical_grad", r"one entry|one at a time|each entry|every entry|single entry")
def numgrad_all_at_once(f, x, eps=1e-6):
    x = x.detach().double()
    return torch.full_like(x, (float(f(x + eps)) - float(f(x - eps))) / (2 * eps))


@wrong("numerical_grad", r"parenthes|factor|times|precedence|too (small|large)")
def numgrad_precedence(f, x, eps=1e-6):
    x = x.detach().double().clone()
    grad = torch.zeros_like(x)
    for i in range(x.numel()):
        old = x.view(-1)[i].item()
        x.view(-1)[i] = old + eps
        plus = float(f(x))
        x.view(-1)[i] = old - eps
        minus = float(f(x))
        x.view(-1)[i] = old
        grad.view(-1)[i] = (plus - minus) / 2 * eps
    return grad


@wrong("numerical_grad", PARTLY)
def numgrad_no_scalars(f, x, eps=1e-6):
    if x.dim() == 0:
        raise NotImplementedError("0-d")
    return _numgrad_ok(f, x, eps)


def _numgrad_ok(f, x, eps):
    x = x.detach().double().clone()
    grad = torch.zeros_like(x)
    for i in range(x.numel()):
        old = x.view(-1)[i].item()
        x.view(-1)[i] = old + eps
        plus = float(f(x))
        x.view(-1)[i] = old - eps
        minus = float(f(x))
        x.view(-1)[i] = old
        grad.view(-1)[i] = (plus - minus) / (2 * eps)
    return grad


# --------------------------------------------------------------------------- 02 AdamW


def _adamw(param, grad, m, v, step, lr, betas, eps, weight_decay):
    b1, b2 = betas
    param = param * (1 - lr * weight_decay)
    m = b1 * m + (1 - b1) * grad
    v = b2 * v + (1 - b2) * grad ** 2
    m_hat, v_hat = m / (1 - b1 ** step), v / (1 - b2 ** step)
    return param - lr * m_hat / (v_hat.sqrt() + eps), m, v


@wrong("adamw_step", r"tuple|three|\(param, m, v\)|3 items")
def adamw_param_only(param, grad, m, v, step, lr, betas, eps, weight_decay):
    return _adamw(param, grad, m, v, step, lr, betas, eps, weight_decay)[0]


@wrong("adamw_step", r"tuple|stack")
def adamw_stacked(param, grad, m, v, step, lr, betas, eps, weight_decay):
    return torch.stack(_adamw(param, grad, m, v, step, lr, betas, eps, weight_decay))


@wrong("adamw_step", r"bias.correct|beta1 ?\*\* ?step|beta1\^t|\bt\b|step count|off by one")
def adamw_step_minus_one(param, grad, m, v, step, lr, betas, eps, weight_decay):
    b1, b2 = betas
    param = param * (1 - lr * weight_decay)
    m = b1 * m + (1 - b1) * grad
    v = b2 * v + (1 - b2) * grad ** 2
    t = max(step - 1, 1)
    return param - lr * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps), m, v


@wrong("adamw_step", r"square|g\^2|g ?\*\* ?2|grad ?\*\* ?2|item 2|\bv\b is|second moment")
def adamw_v_not_squared(param, grad, m, v, step, lr, betas, eps, weight_decay):
    b1, b2 = betas
    param = param * (1 - lr * weight_decay)
    m = b1 * m + (1 - b1) * grad
    v = b2 * v + (1 - b2) * grad.abs()
    return param - lr * (m / (1 - b1 ** step)) / ((v / (1 - b2 ** step)).sqrt() + eps), m, v


@wrong("adamw_step", IN_PLACE)
def adamw_in_place(param, grad, m, v, step, lr, betas, eps, weight_decay):
    b1, b2 = betas
    param.mul_(1 - lr * weight_decay)
    m.mul_(b1).add_((1 - b1) * grad)
    v.mul_(b2).add_((1 - b2) * grad ** 2)
    return param - lr * (m / (1 - b1 ** step)) / ((v / (1 - b2 ** step)).sqrt() + eps), m, v


@wrong("adamw_step", r"item 1|\bm\b is|first moment|returned m|bias-corrected")
def adamw_returns_m_hat(param, grad, m, v, step, lr, betas, eps, weight_decay):
    b1, b2 = betas
    new, m, v = _adamw(param, grad, m, v, step, lr, betas, eps, weight_decay)
    return new, m / (1 - b1 ** step), v


@wrong("adamw_step", r"betas? (swapped|order)|beta1 and beta2|beta1, beta2 = betas|swap")
def adamw_betas_swapped(param, grad, m, v, step, lr, betas, eps, weight_decay):
    return _adamw(param, grad, m, v, step, lr, betas[::-1], eps, weight_decay)


@right("adamw_step")
def adamw_torch(param, grad, m, v, step, lr, betas, eps, weight_decay):
    p = param.clone()
    m2, v2 = m.clone(), v.clone()
    b1, b2 = betas
    p.mul_(1 - lr * weight_decay)
    m2.mul_(b1).add_(grad, alpha=1 - b1)
    v2.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    denom = (v2 / (1 - b2 ** step)).sqrt().add_(eps)
    p.addcdiv_(m2, denom, value=-lr / (1 - b1 ** step))
    return p, m2, v2


# --------------------------------------------------------------------------- 03 attention


@wrong("attention", r"q\.shape\[-1\]|size of the vectors|not the number|scaled? (too|by)|scale factor|temperature|sharper|flatter")
def att_scale_by_length(q, k, v):
    return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(k.shape[-2]), -1) @ v


@wrong("attention", r"transpose\(-2, -1\)|transpose|last two|shape|\.T\b|dims")
def att_k_dot_t(q, k, v):
    return torch.softmax(q @ k.T / math.sqrt(q.shape[-1]), -1) @ v


@wrong("attention", r"tuple|weights|one tensor")
def att_returns_pair(q, k, v):
    w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), -1)
    return w @ v, w


@wrong("attention", r"each query|sum to 1|rows? of weights|normali[sz]ed (over|along)|whole")
def att_softmax_everything(q, k, v):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return torch.softmax(s.flatten(), 0).view_as(s) @ v


@wrong("attention", NUMPY)
def att_numpy(q, k, v):
    s = q.numpy() @ np.swapaxes(k.numpy(), -1, -2) / math.sqrt(q.shape[-1])
    w = np.exp(s - s.max(-1, keepdims=True))
    return (w / w.sum(-1, keepdims=True)) @ v.numpy()


@wrong("attention", r"divide.{0,20}instead|multipl|scale factor|scaled? (too|by)|sharp|temperature|factor")
def att_multiplied_by_sqrt(q, k, v):
    return torch.softmax(q @ k.transpose(-2, -1) * math.sqrt(q.shape[-1]), -1) @ v


@right("attention")
def att_torch(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


# --------------------------------------------------------------------------- 03 causal mask


@wrong("causal_mask", r"bool|dtype|float")
def causal_float(T_q, T_k=None):
    return torch.ones(T_q, T_q if T_k is None else T_k).tril()


@wrong("causal_mask", r"bool|dtype|-inf")
def causal_additive(T_q, T_k=None):
    T_k = T_q if T_k is None else T_k
    return torch.zeros(T_q, T_k).masked_fill(~torch.ones(T_q, T_k, dtype=torch.bool).tril(), NEG_INF)


@wrong("causal_mask", r"bool|dtype|int")
def causal_int(T_q, T_k=None):
    return torch.ones(T_q, T_q if T_k is None else T_k, dtype=torch.int64).tril()


@wrong("causal_mask", r"transpos|\(T_q, T_k\)|shape")
def causal_keys_by_queries(T_q, T_k=None):
    T_k = T_q if T_k is None else T_k
    return torch.arange(T_q)[None, :] >= torch.arange(T_k)[:, None]


@wrong("causal_mask", LIST)
def causal_nested_list(T_q, T_k=None):
    T_k = T_q if T_k is None else T_k
    return [[j <= i for j in range(T_k)] for i in range(T_q)]


@wrong("causal_mask", NUMPY)
def causal_numpy(T_q, T_k=None):
    return np.tril(np.ones((T_q, T_q if T_k is None else T_k), dtype=bool))


@wrong("causal_mask", r"align|top-left|offset|shift|bottom-right")
def causal_bottom_right(T_q, T_k=None):
    T_k = T_q if T_k is None else T_k
    return torch.ones(T_q, T_k, dtype=torch.bool).tril(T_k - T_q)


@right("causal_mask")
def causal_arange(T_q, T_k=None):
    T_k = T_q if T_k is None else T_k
    return torch.arange(T_k)[None, :] <= torch.arange(T_q)[:, None]


# --------------------------------------------------------------------------- 03 masked attention


def _scores(q, k):
    return q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])


# Replaces matt_multiplied (scores * mask): its outputs are those of a catalogued mistake.
@wrong("masked_attention", r"each query|sum to 1|last|keys")
def matt_softmax_over_queries(q, k, v, mask):
    w = torch.softmax(_scores(q, k).masked_fill(~mask, NEG_INF), -2).nan_to_num(0.0)
    return w @ v


@wrong("masked_attention", r"\badd|\+ mask|1 and 0")
def matt_added(q, k, v, mask):
    return torch.softmax(_scores(q, k) + mask, -1) @ v


# Replaces matt_full_rows_mean (the mean of v for rows that see nothing): a catalogued mistake's outputs.
@wrong("masked_attention", r"sqrt|scale|d_k")
def matt_no_scale(q, k, v, mask):
    w = torch.softmax((q @ k.transpose(-2, -1)).masked_fill(~mask, NEG_INF), -1)
    return torch.where(mask.any(-1, keepdim=True), w, torch.zeros_like(w)) @ v


@wrong("masked_attention", r"transpos")
def matt_mask_transposed(q, k, v, mask):
    s = _scores(q, k)
    mask = mask.transpose(-2, -1).expand(s.shape) if mask.shape[-1] == mask.shape[-2] else mask
    w = torch.softmax(s.masked_fill(~mask, NEG_INF), -1)
    return torch.where(mask.any(-1, keepdim=True), w, torch.zeros_like(w)) @ v


@wrong("masked_attention", r"ignor|not appl|no effect|unmasked|as if there were no mask|mask (is|was) not used")
def matt_mask_ignored(q, k, v, mask):
    return torch.softmax(_scores(q, k), -1) @ v


@wrong("masked_attention", PARTLY)
def matt_only_2d_masks(q, k, v, mask):
    if mask.dim() > 2:
        raise NotImplementedError("batched masks")
    return attention.scaled_dot_product_attention(q, k, v, mask=mask)


@right("masked_attention")
def matt_nan_to_num(q, k, v, mask):
    w = torch.softmax(_scores(q, k).masked_fill(mask.logical_not(), NEG_INF), -1)
    return torch.nan_to_num(w, nan=0.0) @ v


# --------------------------------------------------------------------------- 03 split / merge heads


@wrong("split_heads", r"shape|transpos|\(B, n_heads, T, d_head\)")
def split_permute_wrong(x, n_heads):
    B, T, D = x.shape
    return x.reshape(B, T, n_heads, D // n_heads).permute(0, 2, 3, 1)


@wrong("split_heads", r"tuple|list|one tensor|stack")
def split_chunks(x, n_heads):
    return x.chunk(n_heads, dim=-1)


@wrong("split_heads", r"shape|transpose\(1, ?2\)")
def split_transpose_1_3(x, n_heads):
    B, T, D = x.shape
    return x.view(B, T, n_heads, D // n_heads).transpose(1, 3)


@wrong("split_heads", r"shape")
def split_roles_swapped(x, n_heads):
    B, T, D = x.shape
    return x.view(B, T, D // n_heads, n_heads).transpose(1, 2)


@wrong("split_heads", PARTLY)
def split_no_single_head(x, n_heads):
    if n_heads == 1:
        raise NotImplementedError
    B, T, D = x.shape
    return x.view(B, T, n_heads, D // n_heads).transpose(1, 2)


@wrong("split_heads", NUMPY)
def split_numpy(x, n_heads):
    B, T, D = x.shape
    return x.numpy().reshape(B, T, n_heads, D // n_heads).transpose(0, 2, 1, 3)


@right("split_heads")
def split_stack(x, n_heads):
    return torch.stack(x.chunk(n_heads, dim=-1), dim=1)


@wrong("merge_heads", r"transpose\(1, ?2\)|order|interleav|transpos")
def merge_transpose_2_3(x):
    B, H, T, d = x.shape
    return x.transpose(2, 3).reshape(B, T, H * d)


@wrong("merge_heads", r"shape")
def merge_cat_dim1(x):
    return torch.cat(x.unbind(1), dim=1)


@wrong("merge_heads", r"shape|sum")
def merge_sum(x):
    return x.sum(1)


@wrong("merge_heads", LIST)
def merge_list(x):
    return [x[:, :, t].flatten(1) for t in range(x.shape[2])]


@wrong("merge_heads", r"shape|mean|average")
def merge_mean(x):
    return x.mean(1)


@right("merge_heads")
def merge_cat(x):
    return torch.cat([x[:, h] for h in range(x.shape[1])], dim=-1)


# --------------------------------------------------------------------------- 03 sinusoidal positions


def _pe(T, d, base=10000.0, exponent=None, multiply=False, rows=None):
    pos = torch.arange(T if rows is None else rows, dtype=torch.float64)[:, None]
    two_i = torch.arange(0, d, 2, dtype=torch.float64)
    e = two_i / d if exponent is None else exponent
    angle = pos * base ** e if multiply else pos / base ** e
    pe = torch.zeros(len(pos), d, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle)
    return pe.float()


@wrong("sinusoidal_positions", r"base|1000\b|wavelength|too (fast|slow)|frequencies are")
def pe_base_1000(T, d):
    return _pe(T, d, base=1000.0)


@wrong("sinusoidal_positions", r"exponent|pair index|both dims of a pair|same frequency|shares?")
def pe_dim_index_exponent(T, d):
    pos = torch.arange(T, dtype=torch.float64)[:, None]
    angle = pos / 10000.0 ** (torch.arange(d, dtype=torch.float64) / d)
    pe = torch.where(torch.arange(d) % 2 == 0, torch.sin(angle), torch.cos(angle))
    return pe.float()


@wrong("sinusoidal_positions", r"shape|rows|positions")
def pe_one_row_too_many(T, d):
    return _pe(T, d, rows=T + 1)


@wrong("sinusoidal_positions", r"transpos|shape")
def pe_transposed(T, d):
    return _pe(T, d).T


@wrong("sinusoidal_positions", r"divide|multipl|inverse|grow")
def pe_multiplied(T, d):
    return _pe(T, d, multiply=True)


@wrong("sinusoidal_positions", LIST)
def pe_list(T, d):
    return _pe(T, d).tolist()


@right("sinusoidal_positions")
def pe_float64(T, d):
    return _pe(T, d).double()


# --------------------------------------------------------------------------- 04 layer norm


@wrong("layer_norm", r"unbiased|D - 1|correction|eps outside|standard deviation")
def ln_std_plus_eps(x, w, b, eps):
    return (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + eps) * w + b


@wrong("layer_norm", r"swap|weight and bias|bias and weight|roles")
def ln_weight_bias_swapped(x, w, b, eps):
    return F.layer_norm(x, x.shape[-1:], b, w, eps)


@wrong("layer_norm", r"keepdim|broadcast|shape")
def ln_no_keepdim(x, w, b, eps):
    mean = x.mean(-1)
    var = ((x - x.mean(-1, keepdim=True)) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * w + b


@wrong("layer_norm", r"eps")
def ln_fixed_eps(x, w, b, eps):
    return F.layer_norm(x, x.shape[-1:], w, b, 1e-5)


@wrong("layer_norm", r"standard deviation|square root of|not the variance|sqrt of the variance|by the variance")
def ln_divides_by_variance(x, w, b, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / (var + eps) * w + b


@wrong("layer_norm", IN_PLACE)
def ln_in_place(x, w, b, eps):
    x -= x.mean(-1, keepdim=True)
    return x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + eps) * w + b


@wrong("layer_norm", r"center|centre|mean is not|did not subtract|forgot .*mean|mean 0")
def ln_rms_norm(x, w, b, eps):
    return x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + eps) * w + b


@right("layer_norm")
def ln_torch(x, w, b, eps):
    return F.layer_norm(x, x.shape[-1:], w, b, eps)


# --------------------------------------------------------------------------- 04 GELU


@wrong("gelu", r"sigmoid|silu|swish|approximation")
def gelu_silu(x):
    return x * torch.sigmoid(x)


@wrong("gelu", r"scale inside|divide x by sqrt|argument of erf|inside erf")
def gelu_over_two(x):
    return 0.5 * x * (1 + torch.erf(x / 2))


@wrong("gelu", r"sign|minus|flipped|1 - erf")
def gelu_one_minus(x):
    return 0.5 * x * (1 - torch.erf(x / math.sqrt(2)))


@wrong("gelu", LIST)
def gelu_list(x):
    return [0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.flatten().tolist()]


@wrong("gelu", IN_PLACE)
def gelu_in_place(x):
    cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    return x.mul_(cdf)


@wrong("gelu", r"half|factor|times|twice|2x")
def gelu_no_half(x):
    return x * (1 + torch.erf(x / math.sqrt(2)))


@right("gelu")
def gelu_torch(x):
    return F.gelu(x)


# --------------------------------------------------------------------------- 04 blocks


@wrong("post_ln_block", r"none")
def post_mask_inverted(x, block, mask=None):
    x = block.ln1(x + block.attn(x, mask=~mask))
    return block.ln2(x + block.ffn(x))


@wrong("post_ln_block", r"not normali[sz]ed|output .*normali|ln2 .*(after|sum)|normali[sz]e the sum|mean 0|pre-ln")
def post_ffn_pre_ln(x, block, mask=None):
    x = block.ln1(x + block.attn(x, mask=mask))
    return x + block.ffn(block.ln2(x))


@wrong("post_ln_block", r"swap|ln1 and ln2|ln2 and ln1|order of")
def post_norms_swapped(x, block, mask=None):
    x = block.ln2(x + block.attn(x, mask=mask))
    return block.ln1(x + block.ffn(x))


@wrong("post_ln_block", r"feed-forward.{0,40}(input|output of)|ffn.{0,20}(input|h\b)|after the attention")
def post_ffn_on_block_input(x, block, mask=None):
    h = block.ln1(x + block.attn(x, mask=mask))
    return block.ln2(h + block.ffn(x))


@wrong("post_ln_block", r"causal|bidirectional|later tokens|future")
def post_causal(x, block, mask=None):
    x = block.ln1(x + block.attn(x, mask=mask, is_causal=True))
    return block.ln2(x + block.ffn(x))


@wrong("post_ln_block", r"tuple|one tensor")
def post_returns_pair(x, block, mask=None):
    h = block.ln1(x + block.attn(x, mask=mask))
    return block.ln2(h + block.ffn(h)), h


@wrong("pre_ln_block", r"invert|future|later|earlier")
def pre_mask_inverted(x, block):
    T = x.shape[1]
    x = x + block.attn(block.ln1(x), mask=~attention.causal_mask(T))
    return x + block.ffn(block.ln2(x))


@wrong("pre_ln_block", r"ln1 twice|ln2 (before|for) the (feed|ffn)|wrong (layer ?norm|ln)|ln1 .*(feed|ffn)")
def pre_ln1_twice(x, block):
    x = x + block.attn(block.ln1(x), is_causal=True)
    return x + block.ffn(block.ln1(x))


@wrong("pre_ln_block", r"residual (path|stream) .*(raw|unnormali)|final|output .*normali|not normali|extra")
def pre_final_norm(x, block):
    x = x + block.attn(block.ln1(x), is_causal=True)
    return block.ln2(x + block.ffn(block.ln2(x)))


@wrong("pre_ln_block", r"ln1\(x\) .*attn|normali[sz]e .*input|before the attention|attention input")
def pre_attn_unnormalised(x, block):
    x = x + block.attn(x, is_causal=True)
    return x + block.ffn(block.ln2(x))


@wrong("pre_ln_block", IN_PLACE)
def pre_in_place(x, block):
    x += block.attn(block.ln1(x), is_causal=True)
    x += block.ffn(block.ln2(x))
    return x


@wrong("pre_ln_block", LIST)
def pre_list(x, block):
    out = []
    for row in x:
        row = row[None]
        row = row + block.attn(block.ln1(row), is_causal=True)
        out.append((row + block.ffn(block.ln2(row)))[0])
    return out


# --------------------------------------------------------------------------- 04 parameter count


def _count(V, T, D, L, F, ln_vec=2, ffn_bias=True, pos_rows=None, ln_per_block=2, blocks=None,
           attn_bias=True):
    attn = 4 * D * D + (4 * D if attn_bias else 0)
    ffn = 2 * D * F + ((F + D) if ffn_bias else D)
    block = attn + ffn + ln_per_block * ln_vec * D
    pos = (T if pos_rows is None else pos_rows) * D
    n = L if blocks is None else blocks
    return V * D + pos + n * block + ln_vec * D


@wrong("param_count", r"2 ?D|\(2L ?\+ ?1\)|per LayerNorm|gain and (a )?bias")
def count_ln_without_bias(V, T, D, L, F):
    return _count(V, T, D, L, F, ln_vec=1)


@wrong("param_count", r"d_ff|fc1|\bF\b")
def count_no_fc1_bias(V, T, D, L, F):
    return _count(V, T, D, L, F, ffn_bias=False)


@wrong("param_count", r"block_size|too many.{0,30}\bD\b|\bD\b (too many|extra)|one extra")
def count_one_more_position(V, T, D, L, F):
    return _count(V, T, D, L, F, pos_rows=T + 1)


@wrong("param_count", r"per block|each block|\bL ?[x·*]|2 ?L|n_layers")
def count_three_ln_per_block(V, T, D, L, F):
    return _count(V, T, D, L, F, ln_per_block=3)


@wrong("param_count", r"\bstr\b|string|text|a number|\bint\b")
def count_as_text(V, T, D, L, F):
    return f"{_count(V, T, D, L, F):,}"


@wrong("param_count", r"n_layers|per block|\bL\b|each block|every block|blocks")
def count_one_block(V, T, D, L, F):
    return _count(V, T, D, L, F, blocks=min(L, 1))


@wrong("param_count", r"4 ?D|attention.{0,30}bias|bias.{0,30}(attention|projection)|q, k, v")
def count_no_attn_bias(V, T, D, L, F):
    return _count(V, T, D, L, F, attn_bias=False)


@right("param_count")
def count_float(V, T, D, L, F):
    return float(_count(V, T, D, L, F))


# --------------------------------------------------------------------------- 05 causal-LM targets


@wrong("causal_lm_targets", r"tuple|stack")
def targets_stacked(ids):
    return torch.stack([ids[..., :-1], ids[..., 1:]])


@wrong("causal_lm_targets", r"tuple|two (tensors|things|items)|\(inputs, targets\)|2 items")
def targets_only(ids):
    return ids[..., 1:]


@wrong("causal_lm_targets", LIST)
def targets_lists(ids):
    return ids[..., :-1].tolist(), ids[..., 1:].tolist()


@wrong("causal_lm_targets", r"\.\.\.|1-d|any number of dim|leading dim|ids\[\.\.\.")
def targets_2d_only(ids):
    return ids[:, :-1], ids[:, 1:]


@wrong("causal_lm_targets", r"dtype|integer|float|long|int64")
def targets_float(ids):
    return ids[..., :-1], ids[..., 1:].float()


@wrong("causal_lm_targets", r"shape|one shorter|pair")
def targets_drop_last_pair(ids):
    return ids[..., :-2], ids[..., 1:-1]


@wrong("causal_lm_targets", PARTLY)
def targets_only_1d(ids):
    if ids.dim() > 1:
        raise NotImplementedError("batches")
    return ids[:-1], ids[1:]


@right("causal_lm_targets")
def targets_narrow(ids):
    T = ids.shape[-1]
    return ids.narrow(-1, 0, T - 1), ids.narrow(-1, 1, T - 1)


# --------------------------------------------------------------------------- 05 top-k


@wrong("top_k_filter", r"probabilit|softmax|sum to 1|logits, not")
def topk_returns_probs(logits, k):
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k).values[..., -1:]
    return torch.softmax(logits.masked_fill(logits < kth, NEG_INF), -1)


@wrong("top_k_filter", r"shape|-inf|every position|every token")
def topk_values_only(logits, k):
    return torch.topk(logits, min(k, logits.shape[-1])).values


@wrong("top_k_filter", r"-1e9|finite|not -inf|instead of -inf|large negative")
def topk_minus_1e9(logits, k):
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k).values[..., -1:]
    return logits.masked_fill(logits < kth, -1e9)


@wrong("top_k_filter", r"smallest|ascending|descending|wrong end|order")
def topk_kth_smallest(logits, k):
    k = min(k, logits.shape[-1])
    kth = torch.sort(logits, -1).values[..., k - 1:k]
    return logits.masked_fill(logits < kth, NEG_INF)


@wrong("top_k_filter", IN_PLACE)
def topk_in_place(logits, k):
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k).values[..., -1:]
    logits[logits < kth] = NEG_INF
    return logits


@wrong("top_k_filter", r"row|each row|last dim|dim|batch")
def topk_last_row_threshold(logits, k):
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k).values[..., -1]
    if kth.dim() > 0:
        kth = kth[-1]
    return logits.masked_fill(logits < kth, NEG_INF)


@wrong("top_k_filter", PARTLY)
def topk_no_big_k(logits, k):
    if k > logits.shape[-1]:
        raise NotImplementedError("k > V")
    kth = torch.topk(logits, k).values[..., -1:]
    return logits.masked_fill(logits < kth, NEG_INF)


@wrong("top_k_filter", r"bool|dtype|true/false")
def topk_keep_mask(logits, k):
    k = min(k, logits.shape[-1])
    return logits >= torch.topk(logits, k).values[..., -1:]


@right("top_k_filter")
def topk_sort(logits, k):
    k = min(k, logits.shape[-1])
    kth = torch.sort(logits, dim=-1, descending=True).values[..., k - 1:k]
    return torch.where(logits >= kth, logits, torch.full_like(logits, NEG_INF))


# --------------------------------------------------------------------------- 05 top-p


def _topp_drop(logits, p, descending=True, dim=-1):
    s, order = torch.sort(logits, dim=dim, descending=descending)
    probs = torch.softmax(s, dim)
    drop = probs.cumsum(dim) - probs >= p
    return drop.scatter(dim, order, drop)


@wrong("top_p_filter", r"sort|descending|most likely|order")
def topp_unsorted(logits, p):
    probs = torch.softmax(logits, -1)
    drop = probs.cumsum(-1) - probs >= p
    return logits.masked_fill(drop, NEG_INF)


@wrong("top_p_filter", r"probabilit|softmax|sum to 1")
def topp_returns_probs(logits, p):
    return torch.softmax(logits.masked_fill(_topp_drop(logits, p), NEG_INF), -1)


@wrong("top_p_filter", IN_PLACE)
def topp_in_place(logits, p):
    logits[_topp_drop(logits, p)] = NEG_INF
    return logits


@wrong("top_p_filter", r"constant|shift|offset|unchanged|as they are|renormali")
def topp_log_renormalised(logits, p):
    kept = logits.masked_fill(_topp_drop(logits, p), NEG_INF)
    return kept - kept.logsumexp(-1, keepdim=True)


@wrong("top_p_filter", r"-inf")
def topp_zero_fill(logits, p):
    return logits.masked_fill(_topp_drop(logits, p), 0.0)


@wrong("top_p_filter", r"dim|last|row|axis")
def topp_sorted_over_batch(logits, p):
    if logits.dim() == 1:
        return logits.masked_fill(_topp_drop(logits, p), NEG_INF)
    return logits.masked_fill(_topp_drop(logits, p, dim=0), NEG_INF)


@wrong("top_p_filter", PARTLY)
def topp_no_3d(logits, p):
    if logits.dim() > 2:
        raise NotImplementedError
    return logits.masked_fill(_topp_drop(logits, p), NEG_INF)


@right("top_p_filter")
def topp_transformers_style(logits, p):
    s, order = torch.sort(logits, dim=-1)  # ascending, as transformers' TopPLogitsWarper
    cum = torch.softmax(s, -1).cumsum(-1)
    drop = cum <= 1 - p
    drop[..., -1] = False
    return logits.masked_fill(drop.scatter(-1, order, drop), NEG_INF)


# --------------------------------------------------------------------------- 05 BPE: learning merges


def _bpe_splits(word_counts):
    return {w: list(w) for w in word_counts}


def _bpe_pairs(splits, word_counts):
    out = {}
    for w, s in splits.items():
        for p in zip(s, s[1:]):
            out[p] = out.get(p, 0) + word_counts[w]
    return out


def _bpe_loop(word_counts, num_merges, pick=None, stop=lambda n: n < 1, extra=0):
    splits, merges = _bpe_splits(word_counts), []
    rank = {c: i for i, c in enumerate(sorted({c for w in word_counts for c in w}))}
    pick = pick or (lambda c, r: min(c, key=lambda p: (-c[p], r[p[0]], r[p[1]])))
    while len(merges) < num_merges + extra:
        counts = _bpe_pairs(splits, word_counts)
        if not counts:
            break
        best = pick(counts, rank)
        if stop(counts[best]):
            break
        merges.append(best)
        rank.setdefault(best[0] + best[1], len(rank))
        for w, s in splits.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            splits[w] = out
    return merges


@wrong("bpe_learn_merges", r"pairs|\(left, right\)")
def bpe_learn_merged_strings(word_counts, num_merges):
    return [a + b for a, b in _bpe_loop(word_counts, num_merges)]


@wrong("bpe_learn_merges", r"recount|earlier merges|no word holds")
def bpe_learn_counted_once(word_counts, num_merges):
    counts = _bpe_pairs(_bpe_splits(word_counts), word_counts)
    return sorted(counts, key=lambda p: (-counts[p], p))[:num_merges]


@wrong("bpe_learn_merges", r"tie|older|age")
def bpe_learn_youngest_wins_ties(word_counts, num_merges):
    return _bpe_loop(word_counts, num_merges,
                     pick=lambda c, r: min(c, key=lambda p: (-c[p], -r[p[0]], -r[p[1]])))


@wrong("bpe_learn_merges", r"most frequent|times")
def bpe_learn_least_frequent(word_counts, num_merges):
    return _bpe_loop(word_counts, num_merges,
                     pick=lambda c, r: min(c, key=lambda p: (c[p], r[p[0]], r[p[1]])))


@wrong("bpe_learn_merges", r"stop|possible")
def bpe_learn_min_frequency_two(word_counts, num_merges):
    return _bpe_loop(word_counts, num_merges, stop=lambda n: n < 2)


@wrong("bpe_learn_merges", r"num_merges|stop after|expected")
def bpe_learn_one_too_many(word_counts, num_merges):
    return _bpe_loop(word_counts, num_merges, extra=1)


@wrong("bpe_learn_merges", IN_PLACE)
def bpe_learn_pops_words(word_counts, num_merges):
    merges = _bpe_loop(word_counts, num_merges)
    for w in [w for w in word_counts if len(w) < 2]:
        del word_counts[w]  # one-character words hold no pair: dropped from the caller's dict
    return merges


@right("bpe_learn_merges")
def bpe_learn_recount_every_step(word_counts, num_merges):
    return _bpe_loop(word_counts, num_merges)


# --------------------------------------------------------------------------- 05 BPE: encoding a word


def _bpe_apply(symbols, a, b):
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == a and symbols[i + 1] == b:
            out.append(a + b)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


@wrong("bpe_encode_word", r"order")
def bpe_encode_reversed_merges(word, merges):
    symbols = list(word)
    for a, b in reversed(merges):
        symbols = _bpe_apply(symbols, a, b)
    return symbols


@wrong("bpe_encode_word", r"list|\bstr\b")
def bpe_encode_joined(word, merges):
    symbols = list(word)
    for a, b in merges:
        symbols = _bpe_apply(symbols, a, b)
    return " ".join(symbols)


@wrong("bpe_encode_word", r"not applied|every merge")
def bpe_encode_characters_only(word, merges):
    return list(word)


@wrong("bpe_encode_word", r"not applied|every merge")
def bpe_encode_last_merge_skipped(word, merges):
    symbols = list(word)
    for a, b in merges[:-1]:
        symbols = _bpe_apply(symbols, a, b)
    return symbols


@wrong("bpe_encode_word", r"order|not applied|merge")
def bpe_encode_longest_token(word, merges):
    vocab = set(word) | {a + b for a, b in merges}
    out, start = [], 0
    while start < len(word):
        end = next(e for e in range(len(word), start, -1) if word[start:e] in vocab)
        out.append(word[start:end])
        start = end
    return out


@wrong("bpe_encode_word", r"spell|character")
def bpe_encode_drops_unknown(word, merges):
    known = {c for a, b in merges for c in a + b}
    symbols = [c for c in word if c in known] if merges else list(word)
    for a, b in merges:
        symbols = _bpe_apply(symbols, a, b)
    return symbols


@right("bpe_encode_word")
def bpe_encode_replay_in_order(word, merges):
    symbols = list(word)
    for a, b in merges:
        symbols = _bpe_apply(symbols, a, b)
    return symbols


# --------------------------------------------------------------------------- 05 WordPiece: encoding a word


def _wp_greedy(word, vocab, unk, prefix, max_chars, order=None, with_prefix=True, first_prefix=False):
    if len(word) > max_chars:
        return [unk]
    out, start = [], 0
    while start < len(word):
        for end in (order or (lambda s: range(len(word), s, -1)))(start):
            body = word[start:end]
            piece = prefix + body if (start > 0 or first_prefix) else body
            if piece in vocab:
                out.append(piece if with_prefix else body)
                start = end
                break
        else:
            return [unk]
    return out


@wrong("wordpiece_encode_word", r"\bLEFT\b|from the left")
def wordpiece_longest_suffix_first(word, vocab, unk="[UNK]", prefix="##", max_chars=100):
    if len(word) > max_chars:
        return [unk]
    out, end = [], len(word)
    while end > 0:
        for start in range(0, end):
            piece = word[start:end] if start == 0 else prefix + word[start:end]
            if piece in vocab:
                out.insert(0, piece)
                end = start
                break
        else:
            return [unk]
    return out


@wrong("wordpiece_encode_word", r"prefix|split|piece")
def wordpiece_whole_words_only(word, vocab, unk="[UNK]", prefix="##", max_chars=100):
    return [] if not word else ([word] if word in vocab else [unk])


@wrong("wordpiece_encode_word", r"prefix")
def wordpiece_prefix_not_returned(word, vocab, unk="[UNK]", prefix="##", max_chars=100):
    return _wp_greedy(word, vocab, unk, prefix, max_chars, with_prefix=False)


@wrong("wordpiece_encode_word", r"max_chars")
def wordpiece_max_chars_ignored(word, vocab, unk="[UNK]", prefix="##", max_chars=100):
    return _wp_greedy(word, vocab, unk, prefix, 10**9)


@wrong("wordpiece_encode_word", r"unk|\[UNK\]")
def wordpiece_nothing_for_unknown(word, vocab, unk="[UNK]", prefix="##", max_chars=100):
    out = _wp_greedy(word, vocab, unk, prefix, max_chars)
    return [] if out == [unk] else out


@wrong("wordpiece_encode_word", r"empty|\[\]")
def wordpiece_empty_is_unknown(word, vocab, unk="[UNK]", prefix="##", max_chars=100):
    return [unk] if not word else _wp_greedy(word, vocab, unk, prefix, max_chars)


@wrong("wordpiece_encode_word", r"first")
def wordpiece_prefix_on_first_piece(word, vocab, unk="[UNK]", prefix="##", max_chars=100):
    return _wp_greedy(word, vocab, unk, prefix, max_chars, first_prefix=True)


@wrong("wordpiece_encode_word", r"list")
def wordpiece_joined(word, vocab, unk="[UNK]", prefix="##", max_chars=100):
    return " ".join(_wp_greedy(word, vocab, unk, prefix, max_chars))


@right("wordpiece_encode_word")
def wordpiece_recursive(word, vocab, unk="[UNK]", prefix="##", max_chars=100):
    if len(word) > max_chars:
        return [unk]

    def rest(start):
        if start == len(word):
            return []
        for end in range(len(word), start, -1):
            piece = word[start:end] if start == 0 else prefix + word[start:end]
            if piece in vocab:
                tail = rest(end)
                return None if tail is None else [piece] + tail
        return None

    out = rest(0)
    return [unk] if out is None else out


# --------------------------------------------------------------------------- 05b MLM masking


def _rule(input_ids, special, mask_token_id, vocab_size, p, generator, select=None,
          mask_share=0.8, random_share=0.5, label_fill=IGNORE, labels_on=None, in_place=False):
    shape = input_ids.shape
    probs = torch.full(shape, float(p)).masked_fill(special.bool(), 0.0)
    selected = torch.bernoulli(probs, generator=generator).bool() if select is None else select
    lab_sel = selected if labels_on is None else labels_on
    labels = torch.where(lab_sel, input_ids, torch.full_like(input_ids, label_fill))
    to_mask = torch.bernoulli(torch.full(shape, mask_share), generator=generator).bool() & selected
    to_random = torch.bernoulli(torch.full(shape, random_share), generator=generator).bool()
    to_random = to_random & selected & ~to_mask
    random_ids = torch.randint(vocab_size, shape, generator=generator)
    if in_place:
        input_ids[to_mask] = mask_token_id
        input_ids[to_random] = random_ids[to_random]
        return input_ids, labels
    masked = torch.where(to_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    return torch.where(to_random, random_ids, masked), labels


@wrong("mlm_masking", r"every row|same positions|each row.{0,40}(own|independent)|identical rows|same in all rows")
def mlm_same_columns(input_ids, special, mask_token_id, vocab_size, mlm_probability=0.15,
                     generator=None):
    cols = torch.rand(input_ids.shape[-1], generator=generator) < mlm_probability
    select = cols.expand_as(input_ids) & ~special.bool()
    return _rule(input_ids, special, mask_token_id, vocab_size, mlm_probability, generator, select)


@wrong("mlm_masking", r"generator|seed|reproduc")
def mlm_global_rng(input_ids, special, mask_token_id, vocab_size, mlm_probability=0.15,
                   generator=None):
    return _rule(input_ids, special, mask_token_id, vocab_size, mlm_probability, None)


@wrong("mlm_masking", r"fixed|pattern|neighbo|regular|in a row|independent|at random positions|spread")
def mlm_first_tokens(input_ids, special, mask_token_id, vocab_size, mlm_probability=0.15,
                     generator=None):
    ordinary = ~special.bool()
    rank = ordinary.long().cumsum(-1)
    n = ordinary.sum(-1, keepdim=True)
    select = ordinary & (rank <= (n.double() * mlm_probability).round().long())
    return _rule(input_ids, special, mask_token_id, vocab_size, mlm_probability, generator, select)


@wrong("mlm_masking", r"\[cls\]|\[sep\]|special.{0,30}(selected|changed|touched|masked|labelled)")
def mlm_pad_only_special(input_ids, special, mask_token_id, vocab_size, mlm_probability=0.15,
                         generator=None):
    return _rule(input_ids, input_ids == 0, mask_token_id, vocab_size, mlm_probability, generator)


@wrong("mlm_masking", r"-100")
def mlm_labels_minus_one(input_ids, special, mask_token_id, vocab_size, mlm_probability=0.15,
                         generator=None):
    return _rule(input_ids, special, mask_token_id, vocab_size, mlm_probability, generator,
                 label_fill=-1)


@wrong("mlm_masking", IN_PLACE)
def mlm_in_place(input_ids, special, mask_token_id, vocab_size, mlm_probability=0.15,
                 generator=None):
    return _rule(input_ids, special, mask_token_id, vocab_size, mlm_probability, generator,
                 in_place=True)


@wrong("mlm_masking", r"mask_share|became \[mask\]|\[mask\] (share|rate)")
def mlm_shares_swapped(input_ids, special, mask_token_id, vocab_size, mlm_probability=0.15,
                       generator=None):
    return _rule(input_ids, special, mask_token_id, vocab_size, mlm_probability, generator,
                 mask_share=0.1, random_share=8 / 9)


@wrong("mlm_masking", r"tuple")
def mlm_dict(input_ids, special, mask_token_id, vocab_size, mlm_probability=0.15, generator=None):
    masked, labels = _rule(input_ids, special, mask_token_id, vocab_size, mlm_probability, generator)
    return {"input_ids": masked, "labels": labels}


# Replaces mlm_specials_labelled (specials labelled): its statistics are a catalogued mistake's.
@wrong("mlm_masking", r"original|label")
def mlm_labels_of_random_tokens(input_ids, special, mask_token_id, vocab_size, mlm_probability=0.15,
                                generator=None):
    masked, labels = _rule(input_ids, special, mask_token_id, vocab_size, mlm_probability, generator)
    replaced = (labels != IGNORE) & (masked != mask_token_id) & (masked != input_ids)
    return masked, torch.where(replaced, masked, labels)


@right("mlm_masking")
def mlm_rand_thresholds(input_ids, special, mask_token_id, vocab_size, mlm_probability=0.15,
                        generator=None):
    u = torch.rand(input_ids.shape, generator=generator)
    selected = (u < mlm_probability) & ~special.bool()
    r = torch.rand(input_ids.shape, generator=generator)
    random_ids = torch.randint(0, vocab_size, input_ids.shape, generator=generator)
    masked = input_ids.clone()
    masked[selected & (r < 0.8)] = mask_token_id
    rnd = selected & (r >= 0.8) & (r < 0.9)
    masked[rnd] = random_ids[rnd]
    return masked, torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE))


# --------------------------------------------------------------------------- 05b masked accuracy


def _acc_ok(logits, labels):
    keep = labels != IGNORE
    n = int(keep.sum())
    return 0.0 if n == 0 else float((logits.argmax(-1)[keep] == labels[keep]).sum()) / n


@wrong("masked_accuracy", r"(?<![-\d])100\b|percent|fraction|factor|times")
def acc_percent(logits, labels):
    return 100 * _acc_ok(logits, labels)


@wrong("masked_accuracy", r"no labelled|0\.0|zero|nothing labelled|empty")
def acc_empty_is_one(logits, labels):
    keep = labels != IGNORE
    return 1.0 if not keep.any() else _acc_ok(logits, labels)


@wrong("masked_accuracy", r"indices|index|values|max\(\)")
def acc_max_values(logits, labels):
    keep = labels != IGNORE
    n = int(keep.sum())
    return 0.0 if n == 0 else float((logits.max(-1).values[keep] == labels[keep]).sum()) / n


@wrong("masked_accuracy", r"tuple|fraction|number|float")
def acc_pair(logits, labels):
    keep = labels != IGNORE
    return int((logits.argmax(-1)[keep] == labels[keep]).sum()), int(keep.sum())


@wrong("masked_accuracy", r"integer|//|round|whole|division")
def acc_floor_division(logits, labels):
    keep = labels != IGNORE
    n = int(keep.sum())
    return 0 if n == 0 else int((logits.argmax(-1)[keep] == labels[keep]).sum()) // n


@wrong("masked_accuracy", PARTLY)
def acc_flat_only(logits, labels):
    if logits.dim() > 2:
        raise NotImplementedError("(B, T, V)")
    return _acc_ok(logits, labels)


# Replaces a held-out answer (labels > 0) that became a catalogued mistake.
@wrong("masked_accuracy", r"-100|unlabelled|labelled position|invert")
def acc_inverted_keep(logits, labels):
    keep = labels == IGNORE
    n = int(keep.sum())
    return 0.0 if n == 0 else float((logits.argmax(-1)[keep] == labels[keep]).sum()) / n


@right("masked_accuracy")
def acc_tensor(logits, labels):
    keep = labels != IGNORE
    if not keep.any():
        return torch.tensor(0.0)
    return (logits.argmax(-1)[keep] == labels[keep]).float().mean()


# =========================================================================== lesson 06 (text classification)
#
# Held-out wrong answers of lesson 06's exercises, kept together in one block. Those marked fresh
# were written after the exercises' diagnosers and never used to tune them.

# --------------------------------------------------------------------------- 06 masked mean pooling


@wrong("masked_mean_pool", r"shape|line up|unsqueeze|dimension", fresh=True)
def fresh_pool_mask_not_unsqueezed(hidden, attention_mask):
    m = attention_mask.to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1, keepdim=True).clamp(min=1)


@wrong("masked_mean_pool", r"mean|average|divide", fresh=True)
def fresh_pool_max(hidden, attention_mask):
    real = attention_mask.bool().unsqueeze(-1)
    out = hidden.masked_fill(~real, NEG_INF).amax(1)
    return torch.where(real.any(1), out, torch.zeros_like(out))


@wrong("masked_mean_pool", r"padding|inverted|is 1 on real", fresh=True)
def fresh_pool_inverted_mask(hidden, attention_mask):
    m = (attention_mask == 0).to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


@wrong("masked_mean_pool", r"left|middle|first|slice|wherever", fresh=True)
def fresh_pool_first_n_tokens(hidden, attention_mask):
    rows = []
    for h, n in zip(hidden, attention_mask.long().sum(1).tolist()):
        rows.append(h[:n].mean(0) if n else torch.zeros_like(h[0]))
    return torch.stack(rows)


@wrong("masked_mean_pool", LIST, fresh=True)
def fresh_pool_list(hidden, attention_mask):
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return list((hidden * m).sum(1) / m.sum(1).clamp(min=1))


@wrong("masked_mean_pool", IN_PLACE, fresh=True)
def fresh_pool_in_place(hidden, attention_mask):
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return hidden.mul_(m).sum(1) / m.sum(1).clamp(min=1)


@wrong("masked_mean_pool", r"count|number of real tokens", fresh=True)
def fresh_pool_count_plus_one(hidden, attention_mask):
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / (m.sum(1) + 1)


@wrong("masked_mean_pool", r"dimension|keepdim|size 1", fresh=True)
def fresh_pool_keepdim_result(hidden, attention_mask):
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1)


@wrong("masked_mean_pool", NUMPY, fresh=True)
def fresh_pool_numpy(hidden, attention_mask):
    h = hidden.numpy()
    m = attention_mask.numpy().astype(h.dtype)[..., None]
    return (h * m).sum(1) / np.maximum(m.sum(1), 1)


# Not fresh: the dtype check's wording was chosen with this answer in view.
@wrong("masked_mean_pool", r"dtype")
def pool_double_mask(hidden, attention_mask):
    m = attention_mask.double().unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


@right("masked_mean_pool")
def pool_loop(hidden, attention_mask):
    out = torch.zeros(hidden.shape[0], hidden.shape[2], dtype=hidden.dtype)
    for b in range(hidden.shape[0]):
        real = attention_mask[b].bool()
        if real.any():
            out[b] = hidden[b][real].mean(0)
    return out


@right("masked_mean_pool")
def pool_nan_to_num(hidden, attention_mask):
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return torch.nan_to_num((hidden * m).sum(1) / m.sum(1), nan=0.0)


@right("masked_mean_pool")
def pool_einsum_eps(hidden, attention_mask):
    m = attention_mask.to(hidden.dtype)
    return torch.einsum("btd,bt->bd", hidden, m) / (m.sum(1, keepdim=True) + 1e-9)


# --------------------------------------------------------------------------- 06 confusion matrix


@wrong("confusion_matrix", r"accumulate|once|count each|bincount", fresh=True)
def fresh_cm_index_add_no_accumulate(preds, labels, num_classes):
    keep = labels != IGNORE
    cm = torch.zeros(num_classes, num_classes, dtype=torch.long)
    cm[labels[keep], preds[keep]] += 1
    return cm


@wrong("confusion_matrix", r"-100", fresh=True)
def fresh_cm_clamped_labels(preds, labels, num_classes):
    flat = labels.clamp(min=0) * num_classes + preds
    return torch.bincount(flat, minlength=num_classes ** 2).view(num_classes, num_classes)


@wrong("confusion_matrix", LIST, fresh=True)
def fresh_cm_list_of_lists(preds, labels, num_classes):
    cm = [[0] * num_classes for _ in range(num_classes)]
    for p, y in zip(preds.tolist(), labels.tolist()):
        if y != IGNORE:
            cm[y][p] += 1
    return cm


@wrong("confusion_matrix", r"transpos|row|true class|-100", fresh=True)
def fresh_cm_arguments_swapped(preds, labels, num_classes):
    labels, preds = preds, labels  # reads the arguments as (labels, preds)
    keep = labels != IGNORE
    cm = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for y, p in zip(labels[keep].tolist(), preds[keep].tolist()):
        cm[y, p] += 1
    return cm


@wrong("confusion_matrix", r"minlength|num_classes|still there", fresh=False)
def cm_bincount_no_minlength(preds, labels, num_classes):
    keep = labels != IGNORE
    return torch.bincount(labels[keep] * num_classes + preds[keep]).view(num_classes, num_classes)


@wrong("confusion_matrix", NUMPY, fresh=True)
def fresh_cm_numpy(preds, labels, num_classes):
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    keep = (labels != IGNORE).numpy()
    np.add.at(cm, (labels.numpy()[keep], preds.numpy()[keep]), 1)
    return cm


@wrong("confusion_matrix", IN_PLACE, fresh=True)
def fresh_cm_in_place(preds, labels, num_classes):
    drop = labels == IGNORE
    labels[drop] = 0
    preds[drop] = num_classes  # an extra column, cut off below
    flat = labels * (num_classes + 1) + preds
    cm = torch.bincount(flat, minlength=num_classes * (num_classes + 1))
    return cm.view(num_classes, num_classes + 1)[:, :num_classes]


@wrong("confusion_matrix", r"integer|count|whole", fresh=True)
def fresh_cm_row_normalised(preds, labels, num_classes):
    cm = _cm_ok(preds, labels, num_classes).double()
    return cm / cm.sum(1, keepdim=True).clamp(min=1)


@wrong("confusion_matrix", r"-100|label", fresh=True)
def fresh_cm_filters_preds(preds, labels, num_classes):
    keep = preds != IGNORE
    flat = labels[keep] * num_classes + preds[keep]
    return torch.bincount(flat, minlength=num_classes ** 2).view(num_classes, num_classes)


def _cm_ok(preds, labels, num_classes):
    keep = labels != IGNORE
    cm = torch.zeros(num_classes, num_classes, dtype=torch.long)
    cm.index_put_((labels[keep], preds[keep]), torch.ones(int(keep.sum()), dtype=torch.long),
                  accumulate=True)
    return cm


@right("confusion_matrix")
def cm_index_put(preds, labels, num_classes):
    return _cm_ok(preds, labels, num_classes)


@right("confusion_matrix")
def cm_one_hot(preds, labels, num_classes):
    keep = labels >= 0
    t = F.one_hot(labels[keep], num_classes)
    p = F.one_hot(preds[keep], num_classes)
    return t.T @ p


@right("confusion_matrix")
def cm_loop(preds, labels, num_classes):
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for p, y in zip(preds.tolist(), labels.tolist()):
        if y != IGNORE:
            cm[y, p] += 1
    return cm


# --------------------------------------------------------------------------- 06 precision, recall, F1


def _prf_counts(cm):
    cm = cm.double()
    return cm.diagonal(), cm.sum(0), cm.sum(1)  # TP, predicted, true


def _div0(a, b):
    return torch.where(b > 0, a / b.clamp(min=1e-12), torch.zeros_like(a))


@wrong("precision_recall_f1", r"column|predicted", fresh=True)
def fresh_prf_precision_over_total(cm):
    tp, _, true = _prf_counts(cm)
    p, r = _div0(tp, true.sum().expand_as(tp)), _div0(tp, true)
    return p, r, _div0(2 * p * r, p + r)


# Not fresh: the exercise's diagnoser of one number for all classes came after this answer.
@wrong("precision_recall_f1", r"per class|each class|\(C,\)|one value")
def prf_macro(cm):
    tp, pred, true = _prf_counts(cm)
    p, r = _div0(tp, pred), _div0(tp, true)
    f = _div0(2 * p * r, p + r)
    return p.mean(), r.mean(), f.mean()


@wrong("precision_recall_f1", r"tuple", fresh=True)
def fresh_prf_dict(cm):
    tp, pred, true = _prf_counts(cm)
    p, r = _div0(tp, pred), _div0(tp, true)
    return {"precision": p, "recall": r, "f1": _div0(2 * p * r, p + r)}


@wrong("precision_recall_f1", r"tuple|stack", fresh=True)
def fresh_prf_stacked(cm):
    tp, pred, true = _prf_counts(cm)
    p, r = _div0(tp, pred), _div0(tp, true)
    return torch.stack([p, r, _div0(2 * p * r, p + r)])


@wrong("precision_recall_f1", r"2PR|harmonic|factor|half", fresh=True)
def fresh_prf_f1_without_2(cm):
    tp, pred, true = _prf_counts(cm)
    p, r = _div0(tp, pred), _div0(tp, true)
    return p, r, _div0(p * r, p + r)


@wrong("precision_recall_f1", r"integer|//|float", fresh=True)
def fresh_prf_floor_division(cm):
    tp, pred, true = cm.diagonal(), cm.sum(0), cm.sum(1)
    p, r = tp // pred.clamp(min=1), tp // true.clamp(min=1)
    return p, r, (2 * p * r) // (p + r).clamp(min=1)


@wrong("precision_recall_f1", r"harmonic|2PR", fresh=True)
def fresh_prf_geometric_f1(cm):
    tp, pred, true = _prf_counts(cm)
    p, r = _div0(tp, pred), _div0(tp, true)
    return p, r, (p * r).sqrt()


# Not fresh: the exercise's diagnoser of 0 / 0 was written after this answer was first missed.
@wrong("precision_recall_f1", r"0\.0|0 / 0|zero")
def prf_zero_division_one(cm):
    tp, pred, true = _prf_counts(cm)
    p = torch.where(pred > 0, tp / pred.clamp(min=1), torch.ones_like(tp))
    r = torch.where(true > 0, tp / true.clamp(min=1), torch.ones_like(tp))
    return p, r, _div0(2 * p * r, p + r)


@right("precision_recall_f1")
def prf_nan_to_num(cm):
    tp, pred, true = _prf_counts(cm)
    p, r = torch.nan_to_num(tp / pred), torch.nan_to_num(tp / true)
    return p, r, torch.nan_to_num(2 * p * r / (p + r))


@right("precision_recall_f1")
def prf_from_counts(cm):
    cm = cm.float()
    tp = cm.diagonal()
    fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
    p = tp / (tp + fp + 1e-12)
    r = tp / (tp + fn + 1e-12)
    return p, r, 2 * tp / (2 * tp + fp + fn + 1e-12)


@right("precision_recall_f1")
def prf_list(cm):
    tp, pred, true = _prf_counts(cm)
    p, r = _div0(tp, pred), _div0(tp, true)
    return [p, r, _div0(2 * p * r, p + r)]


# --------------------------------------------------------------------------- 06 most confident mistakes


def _mistakes(probs, labels):
    conf, preds = probs.max(-1)
    return conf, (preds != labels).nonzero().flatten()


@wrong("most_confident_mistakes", r"stable|tie|equal", fresh=True)
def fresh_mcm_unstable_sort(probs, labels, k):
    conf, wrong_idx = _mistakes(probs, labels)
    return wrong_idx[torch.sort(conf[wrong_idx], descending=True).indices][:k]


@wrong("most_confident_mistakes", r"integer|indices|index", fresh=True)
def fresh_mcm_confidences(probs, labels, k):
    conf, wrong_idx = _mistakes(probs, labels)
    return torch.sort(conf[wrong_idx], descending=True, stable=True).values[:k]


@wrong("most_confident_mistakes", LIST, fresh=True)
def fresh_mcm_list(probs, labels, k):
    conf, wrong_idx = _mistakes(probs, labels)
    return sorted(wrong_idx.tolist(), key=lambda i: -float(conf[i]))[:k]


@wrong("most_confident_mistakes", r"bool|true/false", fresh=True)
def fresh_mcm_mask(probs, labels, k):
    return probs.argmax(-1) != labels


@wrong("most_confident_mistakes", r"arg-?max|right predictions|wrong predictions|mistakes", fresh=True)
def fresh_mcm_argmin(probs, labels, k):
    conf, preds = probs.min(-1)
    wrong_idx = (preds != labels).nonzero().flatten()
    return wrong_idx[torch.sort(conf[wrong_idx], descending=True, stable=True).indices][:k]


@wrong("most_confident_mistakes", r"positions|indices into probs|map them back", fresh=False)
def mcm_positions_among_mistakes(probs, labels, k):
    conf, wrong_idx = _mistakes(probs, labels)
    return torch.sort(conf[wrong_idx], descending=True, stable=True).indices[:k]


@wrong("most_confident_mistakes", r"at most k|k =|\[:k\]", fresh=True)
def fresh_mcm_k_plus_one(probs, labels, k):
    conf, wrong_idx = _mistakes(probs, labels)
    return wrong_idx[torch.sort(conf[wrong_idx], descending=True, stable=True).indices][:k + 1]


@wrong("most_confident_mistakes", IN_PLACE, fresh=True)
def fresh_mcm_in_place(probs, labels, k):
    right_rows = probs.argmax(-1) == labels
    probs[right_rows] = -1.0  # pushes the right predictions to the end
    conf = probs.max(-1).values
    order = torch.sort(conf, descending=True, stable=True).indices
    return order[:min(k, int((~right_rows).sum()))]


@wrong("most_confident_mistakes", r"empty|tensor|none", fresh=True)
def fresh_mcm_none_without_mistakes(probs, labels, k):
    conf, wrong_idx = _mistakes(probs, labels)
    if len(wrong_idx) == 0:
        return None
    return wrong_idx[torch.sort(conf[wrong_idx], descending=True, stable=True).indices][:k]


@right("most_confident_mistakes")
def mcm_argsort(probs, labels, k):
    conf, preds = probs.max(-1)
    conf = torch.where(preds != labels, conf, torch.full_like(conf, -1.0))
    order = torch.argsort(conf, descending=True, stable=True)
    return order[:min(k, int((preds != labels).sum()))]


@right("most_confident_mistakes")
def mcm_python_sorted(probs, labels, k):
    preds = probs.argmax(-1).tolist()
    wrong_idx = [i for i, (p, y) in enumerate(zip(preds, labels.tolist())) if p != y]
    wrong_idx.sort(key=lambda i: -float(probs[i, preds[i]]))
    return torch.tensor(wrong_idx[:k], dtype=torch.long)


# --------------------------------------------------------------------------- a second, fresh set
#
# Written after the checker's diagnostics were built, and never used to tune them: the measure of
# how the checks do on mistakes nobody designed them for (reported separately as "fresh").


@wrong("normalize", r"proportional|exp|softmax|divide .*(sum|total)", fresh=True)
def fresh_normalize_softmax(counts):
    return torch.softmax(counts.double(), -1)


@wrong("normalize", r"sum to 1|sums? to", fresh=True)
def fresh_normalize_plus_one(counts):
    counts = counts.double()
    return counts / (counts.sum(-1, keepdim=True) + 1)


@wrong("normalize", NUMPY, fresh=True)
def fresh_normalize_numpy(counts):
    return (counts.double() / counts.sum(-1, keepdim=True)).numpy()


@wrong("softmax", r"sum to 1|each row|max|overflow|nan", fresh=True)
def fresh_softmax_global_sum(x):
    return torch.exp(x) / torch.exp(x).sum()


# Replaces fresh_softmax_dim0 (F.softmax(x, dim=0)): a catalogued mistake's outputs.
@wrong("softmax", r"keepdim|broadcast|shape", fresh=True)
def fresh_softmax_logsumexp_no_keepdim(x):
    return torch.exp(x - torch.logsumexp(x, -1))


@wrong("softmax", LIST, fresh=True)
def fresh_softmax_tolist(x):
    return x.softmax(-1).tolist()


@wrong("cross_entropy", r"-100|ignore", fresh=True)
def fresh_ce_one_hot(logits, targets):
    y = F.one_hot(targets, logits.shape[-1]).to(logits.dtype)
    return -(torch.log_softmax(logits, -1) * y).sum(-1).mean()


@wrong("cross_entropy", r"dim|dimension|last|own row|per example", fresh=True)
def fresh_ce_log_softmax_dim0(logits, targets):
    keep = targets != IGNORE
    return -torch.log_softmax(logits, 0)[keep, targets[keep]].mean()


@wrong("perplexity", r"shape|single number|0-d|reduce", fresh=True)
def fresh_ppl_keepdim(log_probs):
    return torch.exp(-log_probs.mean(dim=0, keepdim=True))


@wrong("perplexity", r"overflow|inf|large|mean first|exp of a large", fresh=True)
def fresh_ppl_exp_of_sum(log_probs):
    return torch.exp(-log_probs.sum()) ** (1 / len(log_probs))


@wrong("smoothed_bigram", r"sum to 1|each row|own", fresh=True)
def fresh_bigram_max_total(counts, alpha):
    s = counts.double() + alpha
    return s / s.sum(1, keepdim=True).max()


@wrong("smoothed_bigram", r"alpha|every count|numerator|add", fresh=True)
def fresh_bigram_alpha_below_only(counts, alpha):
    c = counts.double()
    return c / (c + alpha).sum(1, keepdim=True)


@wrong("bigram_sequence_log_prob", r"shape|single|sum|0-d|reduce", fresh=True)
def fresh_seq_cumsum(probs, ids):
    return probs[ids[:-1], ids[1:]].log().cumsum(0)


@wrong("bigram_sequence_log_prob", r"previous|index|pairs|\[ids\[:-1\]", fresh=True)
def fresh_seq_wrong_rows(probs, ids):
    return probs[ids[1:], ids[1:]].log().sum()


@wrong("softmax_ce_grad", r"-100|ignored|rows", fresh=True)
def fresh_grad_clamped_targets(logits, targets):
    y = F.one_hot(targets.clamp(min=0), logits.shape[-1]).to(logits.dtype)
    return (torch.softmax(logits, -1) - y) / len(targets)


@wrong("softmax_ce_grad", r"transpos|shape", fresh=True)
def fresh_grad_transposed(logits, targets):
    y, keep = _onehot(logits, targets)
    return ((torch.softmax(logits, -1) - y) * keep[:, None] / keep.sum()).T


@wrong("mlp_backward", r"W1|transpos|shape", fresh=True)
def fresh_mlp_dw1_transposed(params, cache, ids, targets):
    return _backward(params, cache, ids, targets,
                     replace=lambda o, loc: {"W1": loc["da"].T @ cache["x"]})


@wrong("mlp_backward", r"W2|h\.T", fresh=True)
def fresh_mlp_dw2_from_a(params, cache, ids, targets):
    return _backward(params, cache, ids, targets,
                     replace=lambda o, loc: {"W2": cache["a"].T @ loc["dlogits"]})


@wrong("numerical_grad", r"eps", fresh=True)
def fresh_numgrad_fixed_eps(f, x, eps=1e-6):
    return _numgrad_ok(f, x, 1e-6)


@wrong("numerical_grad", r"x - eps|central|minus|both sides", fresh=True)
def fresh_numgrad_half_forward(f, x, eps=1e-6):
    x = x.detach().double().clone()
    grad = torch.zeros_like(x)
    for i in range(x.numel()):
        old = x.view(-1)[i].item()
        x.view(-1)[i] = old + eps
        plus = float(f(x))
        x.view(-1)[i] = old
        minus = float(f(x))
        grad.view(-1)[i] = (plus - minus) / (2 * eps)
    return grad


@wrong("adamw_step", r"eps", fresh=True)
def fresh_adamw_no_eps(param, grad, m, v, step, lr, betas, eps, weight_decay):
    b1, b2 = betas
    param = param * (1 - lr * weight_decay)
    m = b1 * m + (1 - b1) * grad
    v = b2 * v + (1 - b2) * grad ** 2
    return param - lr * (m / (1 - b1 ** step)) / (v / (1 - b2 ** step)).sqrt(), m, v


@wrong("adamw_step", r"order|swap|\(param, m, v\)|m and v", fresh=True)
def fresh_adamw_order(param, grad, m, v, step, lr, betas, eps, weight_decay):
    new, m, v = _adamw(param, grad, m, v, step, lr, betas, eps, weight_decay)
    return new, v, m


@wrong("attention", r"before the softmax|scores|scale", fresh=True)
def fresh_att_scale_after(q, k, v):
    return torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v / math.sqrt(q.shape[-1])


@wrong("attention", r"shape|transpos|\bv\b", fresh=True)
def fresh_att_v_transposed(q, k, v):
    w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    return w @ v.transpose(-2, -1)


@wrong("causal_mask", r"transpos|shape|\(T_q, T_k\)", fresh=True)
def fresh_causal_transposed(T_q, T_k=None):
    T_k = T_q if T_k is None else T_k
    return torch.ones(T_q, T_k, dtype=torch.bool).tril().T


# Replaces fresh_matt_renormalised (nan on rows that see nothing): a catalogued mistake's outputs.
@wrong("masked_attention", r"fully masked|nothing|nan|zero|0/0", fresh=True)
def fresh_matt_unmasked_fallback(q, k, v, mask):
    w = torch.softmax(_scores(q, k).masked_fill(~mask, NEG_INF), -1)
    plain = torch.softmax(_scores(q, k), -1)
    return torch.where(mask.any(-1, keepdim=True), w, plain) @ v


@right("masked_attention")
def matt_renormalised_after_softmax(q, k, v, mask):
    w = torch.softmax(_scores(q, k), -1) * mask
    return (w / w.sum(-1, keepdim=True).clamp_min(1e-30)) @ v


@wrong("masked_attention", r"broadcast|shape|squeeze|dimension", fresh=True)
def fresh_matt_squeezed_mask(q, k, v, mask):
    w = torch.softmax(_scores(q, k).masked_fill(~mask.squeeze(), NEG_INF), -1)
    return torch.where(mask.squeeze().any(-1, keepdim=True), w, torch.zeros_like(w)) @ v


@wrong("split_heads", r"shape|dimension|\(B, n_heads, T, d_head\)", fresh=True)
def fresh_split_merged_batch(x, n_heads):
    B, T, D = x.shape
    return x.view(B, T, n_heads, D // n_heads).transpose(1, 2).reshape(B * n_heads, T, D // n_heads)


@wrong("split_heads", r"shape|split|chunk|size", fresh=True)
def fresh_split_by_n_heads(x, n_heads):
    return torch.stack(x.split(n_heads, dim=-1), dim=1)


@wrong("merge_heads", r"order|transpose\(1, ?2\)|wrong places|permute", fresh=True)
def fresh_merge_batch_heads_swapped(x):
    B, H, T, d = x.shape
    return x.permute(1, 0, 2, 3).reshape(B, T, H * d) if B == H else x.transpose(0, 1).reshape(B, T, H * d)


@wrong("merge_heads", r"shape|dim", fresh=True)
def fresh_merge_cat_time(x):
    return torch.cat([x[:, h] for h in range(x.shape[1])], dim=1)


@wrong("sinusoidal_positions", r"2i|exponent|pair index|frequenc|twice", fresh=True)
def fresh_pe_exponent_doubled(T, d):
    return _pe(T, d, exponent=2 * torch.arange(0, d, 2, dtype=torch.float64) / d)


@wrong("sinusoidal_positions", r"shape|cos|odd", fresh=True)
def fresh_pe_sines_only(T, d):
    return _pe(T, d)[:, 0::2]


@wrong("layer_norm", r"after|then|order|normali", fresh=True)
def fresh_ln_affine_first(x, w, b, eps):
    y = x * w + b
    return F.layer_norm(y, y.shape[-1:], eps=eps)


@wrong("layer_norm", r"eps|inside|sqrt|nan|0 / 0|variance", fresh=True)
def fresh_ln_eps_after_division(x, w, b, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return ((x - mean) / torch.sqrt(var) + eps) * w + b


@wrong("gelu", r"erf|tanh|sigmoid|approximation", fresh=True)
def fresh_gelu_tanh_no_cubic(x):
    return 0.5 * x * (1 + torch.tanh(x / math.sqrt(2)))


@wrong("gelu", r"sqrt\(2\)|argument|inside|x / sqrt", fresh=True)
def fresh_gelu_sqrt_outside(x):
    return 0.5 * x * (1 + torch.erf(x) / math.sqrt(2))


@wrong("post_ln_block", r"ln1|input|twice|normali", fresh=True)
def fresh_post_ln1_on_input(x, block, mask=None):
    x = block.ln1(x)
    x = block.ln1(x + block.attn(x, mask=mask))
    return block.ln2(x + block.ffn(x))


@wrong("post_ln_block", r"ln1|after|sum|input", fresh=True)
def fresh_post_first_half_pre_ln(x, block, mask=None):
    x = x + block.attn(block.ln1(x), mask=mask)
    return block.ln2(x + block.ffn(x))


@wrong("pre_ln_block", r"ln2|input|after the attention|x \+ attn", fresh=True)
def fresh_pre_parallel(x, block):
    h = x + block.attn(block.ln1(x), is_causal=True)
    return h + block.ffn(block.ln2(x))


@wrong("pre_ln_block", r"residual|add|\+", fresh=True)
def fresh_pre_no_second_residual(x, block):
    return block.ffn(block.ln2(x + block.attn(block.ln1(x), is_causal=True)))


@wrong("param_count", r"D²|D x D|out|projection|4", fresh=True)
def fresh_count_three_projections(V, T, D, L, F):
    return _count(V, T, D, L, F) - L * D * D


@wrong("param_count", r"V·D|vocab|tied|head|position", fresh=True)
def fresh_count_head_instead_of_positions(V, T, D, L, F):
    return _count(V, T, D, L, F) + V * D - T * D


@wrong("causal_lm_targets", r"inputs|item 0|first", fresh=True)
def fresh_targets_both_shifted(ids):
    return ids[..., 1:], ids[..., 1:]


@wrong("causal_lm_targets", r"shape|dimension|unsqueeze", fresh=True)
def fresh_targets_unsqueezed(ids):
    return ids[..., :-1].clone(), ids[..., 1:].clone().unsqueeze(-1)


@wrong("top_k_filter", r"keepdim|broadcast|shape|row", fresh=True)
def fresh_topk_no_keepdim(logits, k):
    kth = torch.topk(logits, min(k, logits.shape[-1])).values[..., -1]
    return torch.where(logits >= kth, logits, torch.tensor(NEG_INF))


@wrong("top_k_filter", r"shift|constant|as they are|unchanged|offset", fresh=True)
def fresh_topk_shifted(logits, k):
    z = logits - logits.amax(-1, keepdim=True)
    kth = torch.topk(z, min(k, z.shape[-1])).values[..., -1:]
    return z.masked_fill(z < kth, NEG_INF)


@wrong("top_p_filter", r"scatter|order|most likely|descending|unsort", fresh=True)
def fresh_topp_gather(logits, p):
    s, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(s, -1)
    drop = probs.cumsum(-1) - probs >= p
    return logits.masked_fill(drop.gather(-1, order), NEG_INF)


@wrong("top_p_filter", r"cumulative|cumsum|nucleus|sum", fresh=True)
def fresh_topp_probability_threshold(logits, p):
    probs = torch.softmax(logits, -1)
    keep = (probs >= p) | (probs == probs.amax(-1, keepdim=True))
    return logits.masked_fill(~keep, NEG_INF)


@wrong("mlm_masking", r"generator", fresh=True)
def fresh_mlm_random_ids_without_generator(input_ids, special, mask_token_id, vocab_size,
                                           mlm_probability=0.15, generator=None):
    shape = input_ids.shape
    probs = torch.full(shape, float(mlm_probability)).masked_fill(special.bool(), 0.0)
    selected = torch.bernoulli(probs, generator=generator).bool()
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE))
    r = torch.rand(shape, generator=generator)
    masked = torch.where(selected & (r < 0.8), torch.full_like(input_ids, mask_token_id), input_ids)
    rnd = selected & (r >= 0.8) & (r < 0.9)
    return torch.where(rnd, torch.randint(vocab_size, shape), masked), labels


@wrong("mlm_masking", r"selected|rate|mlm_probability|%", fresh=True)
def fresh_mlm_one_per_row(input_ids, special, mask_token_id, vocab_size, mlm_probability=0.15,
                          generator=None):
    ordinary = ~special.bool()
    scores = torch.rand(input_ids.shape, generator=generator).masked_fill(~ordinary, -1.0)
    select = torch.zeros_like(ordinary).scatter(-1, scores.argmax(-1, keepdim=True), True)
    return _rule(input_ids, special, mask_token_id, vocab_size, mlm_probability, generator, select)


# Replaces fresh_acc_tensor_division (nan with no labels): a catalogued mistake's outputs.
@wrong("masked_accuracy", r"pool|per row|each position|average|mean of", fresh=True)
def fresh_acc_mean_of_rows(logits, labels):
    if logits.dim() == 2:
        return _acc_ok(logits, labels)
    accs = [_acc_ok(lg, lb) for lg, lb in zip(logits, labels) if (lb != IGNORE).any()]
    return sum(accs) / len(accs) if accs else 0.0


@wrong("masked_accuracy", r"dim|last|dimension|vocabulary", fresh=True)
def fresh_acc_argmax_dim0(logits, labels):
    keep = labels != IGNORE
    n = int(keep.sum())
    return 0.0 if n == 0 else float((logits.argmax(0)[keep] == labels[keep]).sum()) / n


# --------------------------------------------------------------------------- 07 NER: first-subword labels
#
# Lesson 07's held-out answers (NER fine-tuning): its own block, kept apart from the lessons above.


@wrong("ner_align_labels", r"\blist\b|tensor")
def ner_align_tensor(word_ids, word_labels):
    out, previous = [], None
    for w in word_ids:
        out.append(IGNORE if w is None or w == previous else word_labels[w])
        previous = w
    return torch.tensor(out)


@wrong("ner_align_labels", r"-100")
def ner_align_minus_one(word_ids, word_labels):
    out, previous = [], None
    for w in word_ids:
        out.append(-1 if w is None or w == previous else word_labels[w])
        previous = w
    return out


@wrong("ner_align_labels", r"special|\[CLS\]|one label per token|len\(word_ids\)")
def ner_align_words_only(word_ids, word_labels):
    out, previous = [], None
    for w in word_ids:
        if w is not None:
            out.append(IGNORE if w == previous else word_labels[w])
        previous = w
    return out


@wrong("ner_align_labels", r"first subword|later subword|-100")
def ner_align_b_to_i_everywhere(word_ids, word_labels):
    out, previous = [], None
    for w in word_ids:
        if w is None:
            out.append(IGNORE)
        elif w != previous:
            out.append(word_labels[w])
        else:  # every subword labelled, B-X (odd ids) turned into I-X
            out.append(word_labels[w] + 1 if word_labels[w] % 2 else word_labels[w])
        previous = w
    return out


@wrong("ner_align_labels", PARTLY)
def ner_align_unsplit_only(word_ids, word_labels):
    words = [w for w in word_ids if w is not None]
    if len(set(words)) != len(words):
        raise NotImplementedError("split words")
    return [IGNORE if w is None else word_labels[w] for w in word_ids]


@wrong("ner_align_labels", r"one label per token|len\(word_ids\)|truncat|words with no token")
def ner_align_one_per_word(word_ids, word_labels):
    labels = [IGNORE] * len(word_ids)
    positions = [i for i, w in enumerate(word_ids) if w is not None and w != word_ids[i - 1]]
    for i, wl in zip(positions, word_labels):
        labels[i] = wl
    extra = len(word_labels) - len(positions)  # words cut off: pad the result with their labels
    return labels + list(word_labels[len(word_labels) - extra:]) if extra > 0 else labels


@wrong("ner_align_labels", r"first subword|later subword|word id")
def ner_align_word_index_off_by_one(word_ids, word_labels):
    out, previous = [], None
    for w in word_ids:
        out.append(IGNORE if w is None or w == previous else word_labels[max(w - 1, 0)])
        previous = w
    return out


@wrong("ner_align_labels", r"word id|word_labels\[|first subword|one label per token")
def ner_align_label_by_position(word_ids, word_labels):
    out, previous = [], None
    for i, w in enumerate(word_ids):
        out.append(IGNORE if w is None or w == previous else word_labels[min(i, len(word_labels) - 1)])
        previous = w
    return out


@right("ner_align_labels")
def ner_align_from_next_token(word_ids, word_labels):
    return [IGNORE if w is None or (i and word_ids[i - 1] == w) else int(word_labels[w])
            for i, w in enumerate(word_ids)]


# --------------------------------------------------------------------------- 07 NER: tags to spans


@wrong("ner_bio_to_spans", r"exclusive|slice|end")
def ner_spans_end_plus_one(tags):
    out = []
    for kind, start, end in _ner_spans(tags):
        out.append((kind, start, end + 1))
    return out


def _ner_spans(tags):
    spans, kind, start = [], None, 0
    for i, tag in enumerate(tags):
        prefix, tag_kind = (tag, None) if tag == "O" else (tag[0], tag[2:])
        if kind is not None and not (prefix == "I" and tag_kind == kind):
            spans.append((kind, start, i))
            kind = None
        if prefix != "O" and kind is None:
            kind, start = tag_kind, i
    if kind is not None:
        spans.append((kind, start, len(tags)))
    return spans


@wrong("ner_bio_to_spans", r"type|\('PER'|ner\b|entity is \(type")
def ner_spans_full_tag_as_type(tags):
    return [(tags[s], s, e) for _, s, e in _ner_spans(tags)]


@wrong("ner_bio_to_spans", r"order|start|sorted")
def ner_spans_reversed(tags):
    return list(reversed(_ner_spans(tags)))


@wrong("ner_bio_to_spans", r"I- after O|I-X|starts one|start an entity|first tag")
def ner_spans_i_at_start_dropped(tags):
    spans = _ner_spans(tags)
    return [s for s in spans if not tags[s[1]].startswith("I-") or s[1] > 0 and tags[s[1] - 1] != "O"]


@wrong("ner_bio_to_spans", r"(type, start, end)|tuple|exclusive|entity")
def ner_spans_tokens_lists(tags):
    return [[i for i in range(s, e)] for _, s, e in _ner_spans(tags)]


@wrong("ner_bio_to_spans", r"\bNone\b|no entity|empty|only O")
def ner_spans_none_for_empty(tags):
    spans = _ner_spans(tags)
    return spans if spans else None


@wrong("ner_bio_to_spans", r"\(type, start, end\)|type|returned .*expected 'PER'")
def ner_spans_type_last(tags):
    return [(s, e, k) for k, s, e in _ner_spans(tags)]


@right("ner_bio_to_spans")
def ner_spans_seqeval(tags):
    from seqeval.metrics.sequence_labeling import get_entities

    return [(k, s, e + 1) for k, s, e in get_entities(list(tags))]


# --------------------------------------------------------------------------- 07 NER: entity-level F1


def _prf_ok(gold, pred):
    right = len(gold & pred)
    p = right / len(pred) if pred else 0.0
    r = right / len(gold) if gold else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


@wrong("ner_span_f1", r"(?<![-\d])100\b|percent|fraction|factor|times")
def ner_f1_percent(gold, pred):
    return tuple(100 * x for x in _prf_ok(gold, pred))


@wrong("ner_span_f1", r"0\.0|zero|x / 0|no prediction|nothing")
def ner_f1_empty_is_perfect(gold, pred):
    if not gold or not pred:
        return 1.0, 1.0, 1.0
    return _prf_ok(gold, pred)


@wrong("ner_span_f1", r"tuple|item|3 items|precision, recall|f1")
def ner_f1_only(gold, pred):
    return _prf_ok(gold, pred)[2]


@wrong("ner_span_f1", r"harmonic|2PR|F1")
def ner_f1_product(gold, pred):
    p, r, _ = _prf_ok(gold, pred)
    return p, r, p * r


@wrong("ner_span_f1", r"union|predicted|gold|precision|recall|right / ")
def ner_f1_over_union(gold, pred):
    right, union = len(gold & pred), len(gold | pred)
    p = r = right / union if union else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


@wrong("ner_span_f1", r"partial credit|boundar|start and end|overlap|all match")
def ner_f1_overlap_counts(gold, pred):
    def hit(x, ys):
        return any(x[0] == y[0] and x[1] == y[1] and x[2] < y[3] and y[2] < x[3] for y in ys)

    p = sum(hit(x, gold) for x in pred) / len(pred) if pred else 0.0
    r = sum(hit(x, pred) for x in gold) / len(gold) if gold else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


@wrong("ner_span_f1", r"integer|//|round|whole|division")
def ner_f1_integer_division(gold, pred):
    right = len(gold & pred)
    p = right // len(pred) if pred else 0
    r = right // len(gold) if gold else 0
    return p, r, (2 * p * r // (p + r) if p + r else 0)


@right("ner_span_f1")
def ner_f1_counts(gold, pred):
    tp = len(set(gold) & set(pred))
    fp, fn = len(pred) - tp, len(gold) - tp
    if tp == 0:
        return 0.0, 0.0, 0.0
    return tp / (tp + fp), tp / (tp + fn), 2 * tp / (2 * tp + fp + fn)


# --------------------------------------------------------------------------- 07 NER: LoRA forward


def _lora_ok(x, weight, bias, lora_A, lora_B, alpha):
    return F.linear(x, weight, bias) + (alpha / lora_A.shape[0]) * (x @ lora_A.T @ lora_B.T)


@wrong("ner_lora_forward", r"alpha / r|scale|factor|times|r = lora_A")
def ner_lora_r_from_d_out(x, weight, bias, lora_A, lora_B, alpha):
    return F.linear(x, weight, bias) + (alpha / lora_B.shape[0]) * (x @ lora_A.T @ lora_B.T)


@wrong("ner_lora_forward", r"alpha / r|scale|factor|times")
def ner_lora_sqrt_r(x, weight, bias, lora_A, lora_B, alpha):
    return F.linear(x, weight, bias) + (alpha / math.sqrt(lora_A.shape[0])) * (x @ lora_A.T @ lora_B.T)


@wrong("ner_lora_forward", IN_PLACE)
def ner_lora_merged_in_place(x, weight, bias, lora_A, lora_B, alpha):
    weight += (alpha / lora_A.shape[0]) * lora_B @ lora_A
    return F.linear(x, weight, bias)


@wrong("ner_lora_forward", r"bias|None|\+ b")
def ner_lora_bias_twice(x, weight, bias, lora_A, lora_B, alpha):
    out = _lora_ok(x, weight, bias, lora_A, lora_B, alpha)
    return out + bias if bias is not None else out


@wrong("ner_lora_forward", r"shape|transpos|A \(r, d_in\)|dimension|last dim")
def ner_lora_2d_only(x, weight, bias, lora_A, lora_B, alpha):
    flat = x.reshape(-1, x.shape[-1]) if x.dim() == 2 else x[0]
    return _lora_ok(flat, weight, bias, lora_A, lora_B, alpha)


@wrong("ner_lora_forward", NUMPY)
def ner_lora_numpy(x, weight, bias, lora_A, lora_B, alpha):
    return _lora_ok(x, weight, bias, lora_A, lora_B, alpha).numpy()


@wrong("ner_lora_forward", r"B = 0|frozen|x Wᵀ \+ b|update|scale")
def ner_lora_minus_update(x, weight, bias, lora_A, lora_B, alpha):
    return F.linear(x, weight, bias) - (alpha / lora_A.shape[0]) * (x @ lora_A.T @ lora_B.T)


@right("ner_lora_forward")
def ner_lora_merged_weight(x, weight, bias, lora_A, lora_B, alpha):
    return F.linear(x, weight + (alpha / lora_A.shape[0]) * lora_B @ lora_A, bias)


# --------------------------------------------------------------------------- 05 decoding: generation with the KV cache


def _gen_loop(model, ids, max_new_tokens, temperature, top_k, generator, window=None, choose=None):
    """A cached generation loop; `window` crops past the context, `choose` picks the next tokens."""
    n = model.cfg.block_size
    window = n if window is None else window
    cache = None
    with torch.no_grad():
        for _ in range(max_new_tokens):
            if ids.shape[1] > n:
                logits = model(ids[:, -window:])
            elif cache is None:
                logits, cache = model(ids, use_cache=True)
            else:
                logits, cache = model(ids[:, -1:], cache=cache, use_cache=True)
            nxt = choose(logits[:, -1, :].float(), temperature, top_k, generator)
            ids = torch.cat([ids, nxt], dim=1)
    return ids


def _choose_ok(logits, temperature, top_k, generator):
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[..., -1:]
        logits = logits.masked_fill(logits < kth, NEG_INF)
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)


@wrong("gpt_generate_cached", r"last position")
def gen_first_position(model, ids, max_new_tokens, temperature=1.0, top_k=None, generator=None):
    n = model.cfg.block_size
    cache = None
    with torch.no_grad():
        for _ in range(max_new_tokens):
            if ids.shape[1] > n:
                logits = model(ids[:, -n:])
            elif cache is None:
                logits, cache = model(ids, use_cache=True)
            else:
                logits, cache = model(ids[:, -1:], cache=cache, use_cache=True)
            ids = torch.cat([ids, _choose_ok(logits[:, 0].float(), temperature, top_k, generator)], dim=1)
    return ids


@wrong("gpt_generate_cached", r"block_size|context|window|positions")
def gen_window_one_short(model, ids, max_new_tokens, temperature=1.0, top_k=None, generator=None):
    return _gen_loop(model, ids, max_new_tokens, temperature, top_k, generator,
                     window=model.cfg.block_size - 1, choose=_choose_ok)


@wrong("gpt_generate_cached", r"prompt|new tokens only")
def gen_returns_new_tokens_only(model, ids, max_new_tokens, temperature=1.0, top_k=None, generator=None):
    out = _gen_loop(model, ids, max_new_tokens, temperature, top_k, generator, choose=_choose_ok)
    return out[:, ids.shape[1]:]


@wrong("gpt_generate_cached", r"argmax|division by 0|temperature 0")
def gen_divides_before_greedy(model, ids, max_new_tokens, temperature=1.0, top_k=None, generator=None):
    def choose(logits, t, k, g):
        logits = logits / t if t else logits / torch.zeros(())  # +-inf, nan where a logit is 0
        if t == 0:
            return logits.argmax(-1, keepdim=True)
        return _choose_ok(logits * t, t, k, g)
    return _gen_loop(model, ids, max_new_tokens, temperature, top_k, generator, choose=choose)


@wrong("gpt_generate_cached", r"top_k|top-k")
def gen_top_k_forgotten(model, ids, max_new_tokens, temperature=1.0, top_k=None, generator=None):
    return _gen_loop(model, ids, max_new_tokens, temperature, None, generator, choose=_choose_ok)


@wrong("gpt_generate_cached", r"generator")
def gen_global_random_stream(model, ids, max_new_tokens, temperature=1.0, top_k=None, generator=None):
    return _gen_loop(model, ids, max_new_tokens, temperature, top_k, None, choose=_choose_ok)


@wrong("gpt_generate_cached", r"torch\.cat\(\[ids, next_ids\], dim=1\)")
def gen_appends_along_the_batch(model, ids, max_new_tokens, temperature=1.0, top_k=None, generator=None):
    n = model.cfg.block_size
    cache = None
    with torch.no_grad():
        for _ in range(max_new_tokens):
            if ids.shape[1] > n:
                logits = model(ids[:, -n:])
            elif cache is None:
                logits, cache = model(ids, use_cache=True)
            else:
                logits, cache = model(ids[:, -1:], cache=cache, use_cache=True)
            ids = torch.cat([ids, _choose_ok(logits[:, -1].float(), temperature, top_k, generator).T], dim=0)
    return ids


@right("gpt_generate_cached")
def gen_top_k_before_temperature(model, ids, max_new_tokens, temperature=1.0, top_k=None, generator=None):
    def choose(logits, t, k, g):
        if t == 0:
            return logits.argmax(-1, keepdim=True)
        if k is not None:
            kth = torch.topk(logits, min(k, logits.shape[-1])).values[..., -1:]
            logits = logits.masked_fill(logits < kth, NEG_INF)
        return torch.multinomial(F.softmax(logits / t, dim=-1), 1, generator=g)
    return _gen_loop(model, ids, max_new_tokens, temperature, top_k, generator, choose=choose)


# --------------------------------------------------------------------------- 05 decoding: beam search


def _beams(model, ids, num_beams, max_new_tokens, length_penalty=1.0, eos_token_id=None, *,
           candidates=2, any_rank=False, first_eos=False, stop_when_full=False, eos_in_length=True,
           add_probs=False):
    """Beam search over 2 * num_beams candidates a step (`candidates` changes it), with variants."""
    beams, scores, finished = ids[None], torch.zeros(1), []
    for step in range(max_new_tokens):
        with torch.no_grad():
            logits = model(beams)[:, -1].float()
        V = logits.shape[-1]
        step_scores = torch.softmax(logits, -1) if add_probs else torch.log_softmax(logits, -1)
        top, idx = torch.topk((step_scores + scores[:, None]).flatten(), candidates * num_beams)
        length = step + 1
        new_beams, new_scores = [], []
        for rank, (score, i) in enumerate(zip(top, idx.tolist())):
            seq = torch.cat([beams[i // V], torch.tensor([i % V])])
            if step == max_new_tokens - 1 or i % V == eos_token_id:
                if rank < num_beams or any_rank:
                    n = length if eos_in_length or i % V != eos_token_id else length - 1
                    finished.append((score / max(n, 1) ** length_penalty, seq))
                    if first_eos and i % V == eos_token_id:
                        return seq, float(finished[-1][0])
            elif len(new_beams) < num_beams:
                new_beams.append(seq)
                new_scores.append(score)
        finished = sorted(finished, key=lambda h: -float(h[0]))[:num_beams]
        if not new_beams:
            break
        beams, scores = torch.stack(new_beams), torch.stack(new_scores)
        if len(finished) == num_beams:
            if stop_when_full or not scores[0] / length ** length_penalty > finished[-1][0]:
                break
    score, seq = finished[0]
    return seq, float(score)


@wrong("beam_search", r"among the num_beams best|num_beams best")
def beam_eos_at_any_rank(model, ids, num_beams, max_new_tokens, length_penalty=1.0, eos_token_id=None):
    return _beams(model, ids, num_beams, max_new_tokens, length_penalty, eos_token_id, any_rank=True)


@wrong("beam_search", r"2 \* num_beams|go on")
def beam_num_beams_candidates(model, ids, num_beams, max_new_tokens, length_penalty=1.0, eos_token_id=None):
    return _beams(model, ids, num_beams, max_new_tokens, length_penalty, eos_token_id, candidates=1)


@wrong("beam_search", r"stop|early|longer one|keep searching|running beam")
def beam_returns_the_first_eos(model, ids, num_beams, max_new_tokens, length_penalty=1.0, eos_token_id=None):
    return _beams(model, ids, num_beams, max_new_tokens, length_penalty, eos_token_id, first_eos=True)


@wrong("beam_search", r"stop|early|running beam|worst finished")
def beam_stops_when_full(model, ids, num_beams, max_new_tokens, length_penalty=1.0, eos_token_id=None):
    return _beams(model, ids, num_beams, max_new_tokens, length_penalty, eos_token_id,
                  stop_when_full=True)


@wrong("beam_search", r"EOS included|new tokens|score")
def beam_eos_not_counted(model, ids, num_beams, max_new_tokens, length_penalty=1.0, eos_token_id=None):
    return _beams(model, ids, num_beams, max_new_tokens, length_penalty, eos_token_id,
                  eos_in_length=False)


@wrong("beam_search", r"log|log_softmax|log-probabilit")
def beam_adds_probabilities(model, ids, num_beams, max_new_tokens, length_penalty=1.0, eos_token_id=None):
    return _beams(model, ids, num_beams, max_new_tokens, length_penalty, eos_token_id, add_probs=True)


@wrong("beam_search", r"length_penalty")
def beam_mean_log_probability(model, ids, num_beams, max_new_tokens, length_penalty=1.0, eos_token_id=None):
    return _beams(model, ids, num_beams, max_new_tokens, 1.0, eos_token_id)


@wrong("beam_search", r"num_beams")
def beam_greedy_only(model, ids, num_beams, max_new_tokens, length_penalty=1.0, eos_token_id=None):
    return _beams(model, ids, 1, max_new_tokens, length_penalty, eos_token_id)


@right("beam_search")
def beam_python_floats(model, ids, num_beams, max_new_tokens, length_penalty=1.0, eos_token_id=None):
    beams, scores, finished = [ids.tolist()], [0.0], []
    for step in range(max_new_tokens):
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor(beams))[:, -1].float(), -1)
        cands = sorted(((scores[b] + float(logp[b, t]), b, t) for b in range(len(beams))
                        for t in range(logp.shape[-1])), key=lambda c: -c[0])[:2 * num_beams]
        new_beams, new_scores = [], []
        for rank, (s, b, t) in enumerate(cands):
            if step == max_new_tokens - 1 or t == eos_token_id:
                if rank < num_beams:
                    finished.append((s / (step + 1) ** length_penalty, beams[b] + [t]))
            elif len(new_beams) < num_beams:
                new_beams.append(beams[b] + [t])
                new_scores.append(s)
        finished = sorted(finished, key=lambda h: -h[0])[:num_beams]
        if not new_beams:
            break
        beams, scores = new_beams, new_scores
        if len(finished) == num_beams and scores[0] / (step + 1) ** length_penalty <= finished[-1][0]:
            break
    return torch.tensor(finished[0][1]), finished[0][0]


# --------------------------------------------------------------------------- 05c cross-attention


def _xattn_heads(attn, x, memory):
    q = attention.split_heads(attn.q_proj(x), attn.n_heads)       # (B, H, T, d_head)
    k = attention.split_heads(attn.k_proj(memory), attn.n_heads)  # (B, H, S, d_head)
    v = attention.split_heads(attn.v_proj(memory), attn.n_heads)
    return q, k, v


@wrong("cross_attention", r"pad|mask")
def xattn_float_mask(x, memory, attention_mask, attn):
    q, k, v = _xattn_heads(attn, x, memory)
    mask = attention_mask[:, None, None, :].float() if attention_mask is not None else None  # added, not a filter
    return attn.out_proj(attention.merge_heads(attention.scaled_dot_product_attention(q, k, v, mask=mask)))


@wrong("cross_attention", r"pad|mask")
def xattn_inverted_mask(x, memory, attention_mask, attn):
    q, k, v = _xattn_heads(attn, x, memory)
    mask = attention.padding_mask(1 - attention_mask) if attention_mask is not None else None
    return attn.out_proj(attention.merge_heads(attention.scaled_dot_product_attention(q, k, v, mask=mask)))


@wrong("cross_attention", r"queries from x|q_proj|keys and values|shape")
def xattn_queries_from_memory(x, memory, attention_mask, attn):
    q, k, v = _xattn_heads(attn, memory, x)
    return attn.out_proj(attention.merge_heads(attention.scaled_dot_product_attention(q, k, v)))


@wrong("cross_attention", r"values|memory")
def xattn_values_from_decoder(x, memory, attention_mask, attn):
    q = attention.split_heads(attn.q_proj(x), attn.n_heads)
    k = attention.split_heads(attn.k_proj(memory), attn.n_heads)
    v = attention.split_heads(attn.v_proj(x), attn.n_heads)
    mask = attention.padding_mask(attention_mask) if attention_mask is not None else None
    return attn.out_proj(attention.merge_heads(attention.scaled_dot_product_attention(q, k, v, mask=mask)))


@wrong("cross_attention", r"sqrt\(d_head\)|d_model")
def xattn_scaled_by_d_model(x, memory, attention_mask, attn):
    q, k, v = _xattn_heads(attn, x, memory)
    scores = q @ k.transpose(-2, -1) / math.sqrt(x.shape[-1])  # (B, H, T, S), the width of all heads
    if attention_mask is not None:
        scores = scores.masked_fill(~attention.padding_mask(attention_mask), NEG_INF)
    return attn.out_proj(attention.merge_heads(torch.softmax(scores, dim=-1) @ v))


@wrong("cross_attention", r"scale|sqrt")
def xattn_unscaled(x, memory, attention_mask, attn):
    q, k, v = _xattn_heads(attn, x, memory)
    scores = q @ k.transpose(-2, -1)
    if attention_mask is not None:
        scores = scores.masked_fill(~attention.padding_mask(attention_mask), NEG_INF)
    return attn.out_proj(attention.merge_heads(torch.softmax(scores, dim=-1) @ v))


@wrong("cross_attention", r"pad|mask")
def xattn_mask_after_softmax(x, memory, attention_mask, attn):
    q, k, v = _xattn_heads(attn, x, memory)
    w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    if attention_mask is not None:
        w = w * attention_mask[:, None, None, :]  # zeroed, but the others no longer sum to 1
    return attn.out_proj(attention.merge_heads(w @ v))


@right("cross_attention")
def xattn_torch_sdpa(x, memory, attention_mask, attn):
    q, k, v = _xattn_heads(attn, x, memory)
    mask = attention_mask.bool()[:, None, None, :] if attention_mask is not None else None
    return attn.out_proj(attention.merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)))


# --------------------------------------------------------------------------- 05c shift right


@wrong("shift_right", r"start")
def shift_roll(labels, start_id, pad_id):
    out = torch.roll(labels, 1, dims=1)  # the last label wraps round to the front
    return out.masked_fill(out == IGNORE, pad_id)


@wrong("shift_right", r"-100|pad")
def shift_mask_from_labels(labels, start_id, pad_id):
    out = torch.cat([labels.new_full((labels.shape[0], 1), start_id), labels[:, :-1]], dim=1)
    return out.masked_fill(labels == IGNORE, pad_id)  # the mask of the unshifted labels


@wrong("shift_right", r"start")
def shift_pad_first(labels, start_id, pad_id):
    out = torch.cat([labels.new_full((labels.shape[0], 1), pad_id), labels[:, :-1]], dim=1)
    return out.masked_fill(out == IGNORE, pad_id)


@wrong("shift_right", r"float|integer|int64|dtype")
def shift_float_start(labels, start_id, pad_id):
    out = torch.cat([torch.full((labels.shape[0], 1), float(start_id)), labels[:, :-1]], dim=1)
    return out.masked_fill(out == IGNORE, pad_id)


@wrong("shift_right", IN_PLACE)
def shift_fills_labels_in_place(labels, start_id, pad_id):
    labels[labels == IGNORE] = pad_id
    return torch.cat([labels.new_full((labels.shape[0], 1), start_id), labels[:, :-1]], dim=1)


@wrong("shift_right", r"start_id|pad_id|argument|given")
def shift_bart_ids(labels, start_id, pad_id):
    out = torch.cat([labels.new_full((labels.shape[0], 1), 2), labels[:, :-1]], dim=1)
    return out.masked_fill(out == IGNORE, 1)


@right("shift_right")
def shift_roll_and_overwrite(labels, start_id, pad_id):
    out = torch.roll(labels, 1, dims=1)
    out[:, 0] = start_id
    return torch.where(out == IGNORE, torch.full_like(out, pad_id), out)


# --------------------------------------------------------------------------- 05c greedy decoding


def _greedy_loop(model, input_ids, attention_mask, max_new_tokens, steps=None, encode_mask=True,
                 fill=None, start=None, stop=True, pick=None):
    cfg = model.cfg
    with torch.no_grad():
        memory = model.encode(input_ids, attention_mask if encode_mask else None)
        ys = torch.full((input_ids.shape[0], 1), cfg.decoder_start_token_id if start is None else start)
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
        for _ in range(max_new_tokens if steps is None else steps(max_new_tokens)):
            logits = model.decode(ys, memory, attention_mask)[:, -1]
            nxt = logits.argmax(-1) if pick is None else pick(logits)
            nxt = nxt.masked_fill(done, cfg.pad_token_id if fill is None else fill)
            ys = torch.cat([ys, nxt[:, None]], dim=1)
            done |= nxt == cfg.eos_token_id
            if stop and done.all():
                break
    return ys[:, 1:]


@wrong("seq2seq_greedy_decode", r"attention_mask|mask|padding")
def greedy_encoder_without_mask(model, input_ids, attention_mask, max_new_tokens):
    return _greedy_loop(model, input_ids, attention_mask, max_new_tokens, encode_mask=False)


@wrong("seq2seq_greedy_decode", r"max_new_tokens")
def greedy_one_step_short(model, input_ids, attention_mask, max_new_tokens):
    return _greedy_loop(model, input_ids, attention_mask, max_new_tokens, steps=lambda n: n - 1)


@wrong("seq2seq_greedy_decode", r"pad")
def greedy_fills_with_eos(model, input_ids, attention_mask, max_new_tokens):
    return _greedy_loop(model, input_ids, attention_mask, max_new_tokens, fill=model.cfg.eos_token_id)


@wrong("seq2seq_greedy_decode", r"decoder_start_token_id|start")
def greedy_starts_with_pad(model, input_ids, attention_mask, max_new_tokens):
    return _greedy_loop(model, input_ids, attention_mask, max_new_tokens, start=model.cfg.pad_token_id)


@wrong("seq2seq_greedy_decode", r"argmax")
def greedy_samples(model, input_ids, attention_mask, max_new_tokens):
    g = torch.Generator().manual_seed(0)
    return _greedy_loop(model, input_ids, attention_mask, max_new_tokens,
                        pick=lambda z: torch.multinomial(torch.softmax(z, -1), 1, generator=g)[:, 0])


@wrong("seq2seq_greedy_decode", r"argmax|last|logits|wrong dimension")
def greedy_argmax_over_batch(model, input_ids, attention_mask, max_new_tokens):
    return _greedy_loop(model, input_ids, attention_mask, max_new_tokens, pick=lambda z: z.argmax(0))


@right("seq2seq_greedy_decode")
def greedy_reencoding_every_step(model, input_ids, attention_mask, max_new_tokens):
    cfg = model.cfg
    with torch.no_grad():
        ys = torch.full((input_ids.shape[0], 1), cfg.decoder_start_token_id)
        for _ in range(max_new_tokens):
            logits = model(input_ids, attention_mask, decoder_input_ids=ys).logits[:, -1]
            ended = (ys[:, 1:] == cfg.eos_token_id).any(1)
            nxt = torch.where(ended, cfg.pad_token_id, logits.argmax(-1))
            ys = torch.cat([ys, nxt[:, None]], dim=1)
    return ys[:, 1:]


# --------------------------------------------------------------------------- 05d accumulation weights


@wrong("accumulated_token_loss_weights", LIST)
def accw_list(counts):
    n = counts.double()
    return (counts.shape[0] * n / n.sum()).nan_to_num(0.0).tolist()


@wrong("accumulated_token_loss_weights", IN_PLACE)
def accw_scales_input_in_place(counts):
    counts.mul_(counts.shape[0])
    n = counts.double()
    per = n.sum() / counts.shape[0]
    return n / per if per > 0 else torch.zeros_like(n)


@wrong("accumulated_token_loss_weights", r"counts\.sum\(\)|every process|all processes")
def accw_total_of_first_process(counts):
    n = counts.double()
    total = n[0].sum()
    return counts.shape[0] * n / total if total > 0 else torch.zeros_like(n)


@wrong("accumulated_token_loss_weights", r"same weight|share of the step's tokens")
def accw_one_over_all_micro_batches(counts):
    W, k = counts.shape
    return torch.full(counts.shape, 1.0 / (W * k), dtype=torch.float64)


@wrong("accumulated_token_loss_weights", r"integer|//")
def accw_floor_division(counts):
    total = counts.sum()
    return counts.shape[0] * counts // total if total > 0 else torch.zeros_like(counts)


@wrong("accumulated_token_loss_weights", NUMPY)
def accw_numpy(counts):
    n = counts.numpy().astype(float)
    return n.shape[0] * n / n.sum() if n.sum() > 0 else np.zeros_like(n)


@wrong("accumulated_token_loss_weights", r"dim 0|every micro-batch|counts\.sum\(\)")
def accw_per_position_over_processes(counts):
    n = counts.double()
    return (counts.shape[0] * n / n.sum(0, keepdim=True)).nan_to_num(0.0)


@wrong("accumulated_token_loss_weights", r"transpose|swapped")
def accw_transposed(counts):
    n = counts.double()
    total = n.sum()
    return (counts.shape[0] * n / total).T if total > 0 else torch.zeros_like(n).T


@wrong("accumulated_token_loss_weights", r"\bk\b|multiply by W|sum to W")
def accw_times_k(counts):
    n = counts.double()
    total = n.sum()
    return counts.shape[1] * n / total if total > 0 else torch.zeros_like(n)


@wrong("accumulated_token_loss_weights", r"that process only|ALL processes")
def accw_own_tokens_times_world(counts):
    n = counts.double()
    return (counts.shape[0] * n / n.sum(1, keepdim=True)).nan_to_num(0.0)


@right("accumulated_token_loss_weights")
def accw_clamped_total(counts):
    n = counts.float()
    return counts.shape[0] * n / n.sum().clamp(min=1.0)


@right("accumulated_token_loss_weights")
def accw_where(counts):
    n = counts.double()
    total = n.sum()
    return torch.where(n > 0, counts.shape[0] * n / torch.where(total > 0, total, 1.0), 0.0)



# --------------------------------------------------------------------------- running


def _evaluate(key: str, fn: Callable):
    evaluate = getattr(course_exercises, "evaluate", None)
    if evaluate is None:  # before the registry moved into lmcourse.exercises
        from lmcourse import checker
        evaluate = checker.evaluate
    return evaluate(key, fn)


def advice_text(result, fn: Callable) -> str:
    """The verdict's text without the function's and the failing case's names (names are not advice)."""
    text = result.message.replace(fn.__name__, "")
    if result.failed_case:
        text = text.replace(f"'{result.failed_case}'", "")
    return text


@dataclass
class Report:
    """The benchmark's outcome."""

    n_wrong: int
    rejected: int
    specific: int
    n_right: int
    passed: int
    misses: dict[str, list[str]]   # exercise -> wrong answers not rejected or without specific advice
    false_rejections: list[str]    # correct answers that did not pass
    n_exercises: int
    catalogued: list[str] = field(default_factory=list)  # held-out answers a catalog recognises
    uncovered: list[str] = field(default_factory=list)   # registered exercises with no held-out answer
    n_fresh: int = 0               # the fresh set alone: how many, rejected, specific advice
    fresh_rejected: int = 0
    fresh_specific: int = 0

    @property
    def rejected_rate(self) -> float:
        return self.rejected / self.n_wrong

    @property
    def specific_rate(self) -> float:
        return self.specific / self.n_wrong


def run(verbose: bool = False) -> Report:
    """Check every held-out answer and count the verdicts."""
    misses: dict[str, list[str]] = defaultdict(list)
    rejected = specific = fresh_rejected = fresh_specific = 0
    catalogued = []
    for w in WRONG:
        r = _evaluate(w.key, w.fn)
        if r.mistake:
            catalogued.append(f"{w.fn.__name__} = {w.key}'s {r.mistake!r}")
        ok_reject = not r.passed
        ok_advice = ok_reject and re.search(w.expect, advice_text(r, w.fn), re.IGNORECASE) is not None
        rejected += ok_reject
        specific += ok_advice
        if w.fresh:
            fresh_rejected += ok_reject
            fresh_specific += ok_advice
        if not ok_advice:
            why = "PASSED" if not ok_reject else f"wants /{w.expect}/"
            misses[w.key].append(f"{w.fn.__name__} ({why})")
        if verbose:
            mark = "ok " if ok_advice else ("MISS" if ok_reject else "PASS")
            print(f"{mark} {w.key:24} {w.fn.__name__:30} {r.message.splitlines()[0][:150]}")
            if not ok_advice and r.hint:
                print(f"     hint: {r.hint[:200]}")
    false_rejections = []
    for a in RIGHT:
        r = _evaluate(a.key, a.fn)
        if not r.passed:
            false_rejections.append(f"{a.key}: {a.fn.__name__}: {r.message.splitlines()[0][:160]}")
    return Report(len(WRONG), rejected, specific, len(RIGHT), len(RIGHT) - len(false_rejections),
                  dict(misses), false_rejections, len({w.key for w in WRONG}), catalogued,
                  sorted(set(course_exercises.exercises()) - {w.key for w in WRONG}),
                  sum(w.fresh for w in WRONG), fresh_rejected, fresh_specific)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true", help="print every verdict")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning)  # x.T on 4-D tensors in one answer
    rep = run(args.verbose)
    print(f"held-out wrong answers: {rep.n_wrong} across {rep.n_exercises} exercises")
    print(f"rejected:        {rep.rejected}/{rep.n_wrong} ({100 * rep.rejected_rate:.1f}%)")
    print(f"specific advice: {rep.specific}/{rep.n_wrong} ({100 * rep.specific_rate:.1f}%)")
    if rep.n_fresh:
        print(f"  of which the fresh set: {rep.n_fresh} answers, rejected {rep.fresh_rejected} "
              f"({100 * rep.fresh_rejected / rep.n_fresh:.1f}%), specific advice {rep.fresh_specific} "
              f"({100 * rep.fresh_specific / rep.n_fresh:.1f}%)")
    print(f"correct alternatives passed: {rep.passed}/{rep.n_right}")
    for line in rep.false_rejections:
        print(f"  rejected a correct answer: {line}")
    for line in rep.catalogued:
        print(f"  not held out (a catalogued mistake): {line}")
    if rep.uncovered:
        print(f"exercises with no held-out answers yet: {', '.join(rep.uncovered)}")
    if rep.misses:
        print("misses by exercise:")
        for key in sorted(rep.misses):
            print(f"  {key}: {', '.join(rep.misses[key])}")


if __name__ == "__main__":
    main()
