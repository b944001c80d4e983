"""Tests for lmcourse.gradients, against torch.autograd, torch.optim and the count-based bigram model."""

import math

import pytest
import torch
import torch.nn.functional as F

from lmcourse import gradients as G
from lmcourse import lm_math


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed=0, scale=1.0, dtype=torch.float32):
    return torch.randn(*shape, generator=_gen(seed), dtype=dtype) * scale


# --------------------------------------------------------------------------- softmax + cross-entropy


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_softmax_ce_grad_matches_autograd(scale):
    logits = _randn(7, 5, scale=scale, dtype=torch.float64).requires_grad_(True)
    targets = torch.tensor([0, 4, 2, 2, 1, 3, 0])
    F.cross_entropy(logits, targets).backward()
    got = G.softmax_ce_grad(logits.detach(), targets)
    torch.testing.assert_close(got, logits.grad, atol=1e-12, rtol=1e-9)


def test_softmax_ce_grad_ignores_minus_100():
    logits = _randn(5, 4, seed=1).requires_grad_(True)
    targets = torch.tensor([1, -100, 3, -100, 0])
    F.cross_entropy(logits, targets).backward()
    got = G.softmax_ce_grad(logits.detach(), targets)
    torch.testing.assert_close(got, logits.grad)
    assert got[[1, 3]].abs().max() == 0


def test_softmax_ce_grad_is_p_minus_y_over_n():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    got = G.softmax_ce_grad(logits, torch.tensor([0, 1]))
    # row 0: p = (1/2, 1/2), y = (1, 0); row 1: p = (3/4, 1/4), y = (0, 1); N = 2
    want = torch.tensor([[-0.25, 0.25], [0.375, -0.375]])
    torch.testing.assert_close(got, want)


# --------------------------------------------------------------------------- manual backward


def _mlp_setup(seed=0, dtype=torch.float64, V=7, D=3, H=5):
    params = G.mlp_init(V, D, H, generator=_gen(seed), dtype=dtype)
    ids = torch.tensor([1, 3, 1, 1, 6, 0, 3])  # repeated ids exercise the embedding's sum
    targets = torch.tensor([2, 2, 0, 5, 1, 6, 4])
    return params, ids, targets


def test_mlp_forward_matches_torch_modules():
    params, ids, targets = _mlp_setup()
    logits, cache = G.mlp_forward(params, ids)
    h = torch.tanh(F.embedding(ids, params["E"]) @ params["W1"] + params["b1"])
    want = F.linear(h, params["W2"].T, params["b2"])
    torch.testing.assert_close(logits, want)
    torch.testing.assert_close(cache["h"], h)
    torch.testing.assert_close(G.mlp_loss(params, ids, targets), F.cross_entropy(want, targets))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mlp_backward_matches_autograd(dtype):
    params, ids, targets = _mlp_setup(dtype=dtype)
    _, cache = G.mlp_forward(params, ids)
    manual = G.mlp_backward(params, cache, ids, targets)
    names = list(params)
    auto = G.autograd_grads(lambda *t: G.mlp_loss(dict(zip(names, t)), ids, targets),
                            list(params.values()))
    assert set(manual) == set(names)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    for name, a in zip(names, auto):
        assert manual[name].shape == params[name].shape
        assert (manual[name] - a).abs().max().item() < tol, name
    diffs = G.max_abs_diff(manual, dict(zip(names, auto)))
    assert max(diffs.values()) < tol


def test_linear_backward_matches_autograd():
    x, w, b = _randn(4, 3, seed=2), _randn(3, 5, seed=3), _randn(5, seed=4)
    dout = _randn(4, 5, seed=5)
    auto = G.autograd_grads(lambda x, w, b: ((x @ w + b) * dout).sum(), [x, w, b])
    for got, want in zip(G.linear_backward(x, w, dout), auto):
        torch.testing.assert_close(got, want)


def test_autograd_grads_leaves_inputs_alone():
    x = _randn(3)
    (gx,) = G.autograd_grads(lambda t: (t ** 2).sum(), [x])
    torch.testing.assert_close(gx, 2 * x)
    assert not x.requires_grad and x.grad is None


# --------------------------------------------------------------------------- gradient checker


FUNCTIONS = {
    "cubic": (lambda x: (x ** 3).sum(), [(4,)]),
    "tanh of a matmul": (lambda x, w: torch.tanh(x @ w).pow(2).sum(), [(3, 4), (4, 2)]),
    "log-softmax": (lambda z: lm_math.log_softmax(z).sum() * 0.5 + z[0, 1] ** 2, [(2, 5)]),
    "cross-entropy": (lambda z: lm_math.cross_entropy(z, torch.tensor([1, 0, 4])), [(3, 5)]),
    "three inputs": (lambda a, b, c: (a * b.exp()).sum() / (1 + (c ** 2).sum()), [(2, 3), (2, 3), (5,)]),
}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_numerical_grad_matches_autograd(name):
    f, shapes = FUNCTIONS[name]
    inputs = [_randn(*s, seed=i, dtype=torch.float64) for i, s in enumerate(shapes)]
    auto = G.autograd_grads(f, inputs)
    numeric = G.numerical_grads(f, inputs)
    for a, n in zip(auto, numeric):
        assert n.dtype == torch.float64 and n.shape == a.shape
        torch.testing.assert_close(n, a, atol=1e-7, rtol=1e-6)
    if len(inputs) == 1:
        torch.testing.assert_close(G.numerical_grad(f, inputs[0]), numeric[0], atol=0, rtol=0)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_grad_check_passes_autograd(name):
    f, shapes = FUNCTIONS[name]
    inputs = [_randn(*s, seed=i, dtype=torch.float64) for i, s in enumerate(shapes)]
    errors = G.grad_check(f, inputs)
    assert len(errors) == len(inputs)
    assert max(errors) < 1e-7


def test_numerical_grad_is_central_and_float64():
    # (x^3)' = 3x^2; a forward difference with eps=1e-2 is off by about 3 x eps = 3e-2.
    x = torch.tensor([1.0, -2.0], dtype=torch.float32)
    got = G.numerical_grad(lambda t: (t ** 3).sum(), x, eps=1e-2)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, 3 * x.double() ** 2, atol=2e-4, rtol=0)
    # float32 input: the checker must still work in float64 at eps=1e-6
    got = G.numerical_grad(lambda t: (t.sin() * t).sum(), x, eps=1e-6)
    xd = x.double()
    torch.testing.assert_close(got, xd.sin() + xd * xd.cos(), atol=1e-8, rtol=0)
    assert x.tolist() == [1.0, -2.0]  # the input is not modified


def test_numerical_grad_restores_the_thread_count():
    before = torch.get_num_threads()
    G.grad_check(lambda x: (x ** 2).sum(), [torch.ones(3)])
    assert torch.get_num_threads() == before


def test_numerical_grad_scalar_input():
    got = G.numerical_grad(lambda t: t ** 3, torch.tensor(2.0, dtype=torch.float64))
    assert got.shape == () and abs(got.item() - 12.0) < 1e-7


def test_grad_check_detects_wrong_analytic_gradients():
    f = lambda x, w: torch.tanh(x @ w).sum()
    x, w = _randn(3, 4, seed=1, dtype=torch.float64), _randn(4, 2, seed=2, dtype=torch.float64)
    right = G.autograd_grads(f, [x, w])
    assert max(G.grad_check(f, [x, w], grads=right)) < 1e-7
    # sign error: relative error exactly 1
    errors = G.grad_check(f, [x, w], grads=[-g for g in right])
    assert all(abs(e - 1) < 1e-6 for e in errors)
    # a wrong gradient for one input only: only that input is flagged
    errors = G.grad_check(f, [x, w], grads=lambda x, w: [right[0], 1.5 * right[1]])
    assert errors[0] < 1e-7 and errors[1] > 0.1
    # a backward pass without tanh' (a typical bug)
    no_tanh = lambda x, w: [torch.ones(3, 2, dtype=torch.float64) @ w.T,
                            x.T @ torch.ones(3, 2, dtype=torch.float64)]
    assert min(G.grad_check(f, [x, w], grads=no_tanh)) > 1e-2


def test_grad_check_on_the_manual_mlp_backward():
    params, ids, targets = _mlp_setup(V=7, D=2, H=3)
    names = list(params)

    def loss(*t):
        return G.mlp_loss(dict(zip(names, t)), ids, targets)

    def manual(*t):
        p = dict(zip(names, t))
        grads = G.mlp_backward(p, G.mlp_forward(p, ids)[1], ids, targets)
        return [grads[k] for k in names]

    errors = G.grad_check(loss, list(params.values()), grads=manual)
    assert max(errors) < 1e-7


def test_relative_error_edge_cases():
    z = torch.zeros(3)
    assert G.relative_error(z, z) == 0.0
    assert G.relative_error(torch.ones(3), z) == 1.0
    with pytest.raises(ValueError):
        G.relative_error(torch.ones(3), torch.ones(4))
    with pytest.raises(ValueError):
        G.grad_check(lambda x: x.sum(), [torch.ones(2)], grads=[torch.ones(2), torch.ones(2)])


# --------------------------------------------------------------------------- optimizers


def _compare_with_torch(ours_cls, torch_cls, hp, steps=10, dtype=torch.float64):
    """Max |ours - torch| after `steps` steps on the same parameters and the same loss."""
    init = [_randn(4, 3, seed=10, dtype=dtype), _randn(3, seed=11, dtype=dtype),
            _randn(2, 2, seed=12, dtype=dtype)]
    target = _randn(4, 3, seed=13, dtype=dtype)

    def loss_fn(ps):
        # non-quadratic, so gradients change from step to step; the last parameter gets no grad
        return ((ps[0] * ps[1] - target) ** 2).sum() + torch.tanh(ps[0]).sum() * ps[1].sum()

    ours = [p.clone().requires_grad_(True) for p in init]
    theirs = [p.clone().requires_grad_(True) for p in init]
    opt_ours, opt_theirs = ours_cls(ours, **hp), torch_cls(theirs, **hp)
    for _ in range(steps):
        for opt, ps in ((opt_ours, ours), (opt_theirs, theirs)):
            opt.zero_grad()
            loss_fn(ps).backward()
            opt.step()
    moved = max((a - p).abs().max().item() for a, p in zip(ours, init))
    assert moved > 1e-3, "the parameters did not move: the comparison would prove nothing"
    torch.testing.assert_close(ours[2], init[2], atol=0, rtol=0)  # no gradient, no update
    return max((a - b).abs().max().item() for a, b in zip(ours, theirs))


OPTIMIZERS = {
    "sgd": (G.SGD, torch.optim.SGD, dict(lr=0.01)),
    "sgd weight decay": (G.SGD, torch.optim.SGD, dict(lr=0.01, weight_decay=0.1)),
    "sgd momentum": (G.SGD, torch.optim.SGD, dict(lr=0.01, momentum=0.9)),
    "sgd momentum dampening wd": (G.SGD, torch.optim.SGD,
                                  dict(lr=0.01, momentum=0.8, dampening=0.3, weight_decay=0.05)),
    "sgd nesterov": (G.SGD, torch.optim.SGD, dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=0.01)),
    "adam defaults": (G.Adam, torch.optim.Adam, dict()),
    "adam": (G.Adam, torch.optim.Adam, dict(lr=0.05, betas=(0.8, 0.99), eps=1e-6)),
    "adam L2 weight decay": (G.Adam, torch.optim.Adam, dict(lr=0.05, weight_decay=0.3)),
    "adamw defaults": (G.AdamW, torch.optim.AdamW, dict()),
    "adamw weight decay": (G.AdamW, torch.optim.AdamW, dict(lr=0.05, betas=(0.85, 0.95), weight_decay=0.3)),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_matches_torch_over_10_steps(name):
    ours_cls, torch_cls, hp = OPTIMIZERS[name]
    assert _compare_with_torch(ours_cls, torch_cls, hp) < 1e-6


@pytest.mark.parametrize("name", ["sgd momentum", "adam L2 weight decay", "adamw weight decay"])
def test_optimizer_matches_torch_in_float32(name):
    ours_cls, torch_cls, hp = OPTIMIZERS[name]
    assert _compare_with_torch(ours_cls, torch_cls, hp, dtype=torch.float32) < 1e-5


def test_adam_and_adamw_decay_differ():
    hp = dict(lr=0.05, weight_decay=0.3)
    assert _compare_with_torch(G.AdamW, torch.optim.Adam, hp) > 1e-3
    assert _compare_with_torch(G.Adam, torch.optim.AdamW, hp) > 1e-3


def test_optimizer_defaults_match_torch():
    p = [torch.zeros(2, requires_grad=True)]
    sgd, adam, adamw = G.SGD(p), G.Adam(p), G.AdamW(p)
    ref_adam, ref_adamw = torch.optim.Adam(p).defaults, torch.optim.AdamW(p).defaults
    assert (sgd.momentum, sgd.dampening, sgd.weight_decay, sgd.nesterov) == (0.0, 0.0, 0.0, False)
    for ours, ref in ((adam, ref_adam), (adamw, ref_adamw)):
        assert ours.lr == ref["lr"] and tuple(ours.betas) == tuple(ref["betas"])
        assert ours.eps == ref["eps"] and ours.weight_decay == ref["weight_decay"]


def test_zero_grad_and_step_without_grad():
    w = torch.ones(3, requires_grad=True)
    opt = G.AdamW([w], lr=0.1)
    opt.step()  # no gradient yet: nothing happens
    assert torch.equal(w.detach(), torch.ones(3))
    (w ** 2).sum().backward()
    opt.zero_grad()
    assert w.grad is None
    (w ** 2).sum().backward()
    opt.zero_grad(set_to_none=False)
    assert torch.equal(w.grad, torch.zeros(3))


def test_optimizer_argument_errors():
    w = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError):
        G.SGD([], lr=0.1)
    with pytest.raises(ValueError):
        G.SGD([w], lr=-1.0)
    with pytest.raises(ValueError):
        G.SGD([w], lr=0.1, nesterov=True)
    with pytest.raises(ValueError):
        G.adamw_step(w, w, w, w, 0)


def test_adamw_step_first_step_moves_by_lr():
    # at step 1, m_hat = g and v_hat = g^2, so the Adam part moves each entry by lr * sign(g)
    p, g = torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([0.3, -5.0], dtype=torch.float64)
    new, m, v = G.adamw_step(p, g, torch.zeros(2, dtype=torch.float64),
                             torch.zeros(2, dtype=torch.float64), 1, lr=0.1, weight_decay=0.5)
    want = p * (1 - 0.1 * 0.5) - 0.1 * g.sign()
    torch.testing.assert_close(new, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(m, 0.1 * g)
    torch.testing.assert_close(v, 0.001 * g ** 2)


# --------------------------------------------------------------------------- neural bigram


TEXT = "the cat sat on the mat. the dog sat on the log. a cat and a dog met on a mat.\n" * 3


def _tiny_corpus():
    vocab = lm_math.Vocab.from_text(TEXT)
    ids = vocab.encode(TEXT)
    return ids, lm_math.bigram_counts(ids, len(vocab))


def test_bigram_loss_from_counts_equals_loss_from_pairs():
    ids, counts = _tiny_corpus()
    w = _randn(*counts.shape, seed=3, scale=2.0)
    a, b = G.bigram_loss_from_counts(w, counts), G.bigram_loss_from_pairs(w, ids)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(b, F.cross_entropy(w[ids[:-1]], ids[1:]))


def test_bigram_count_loss_at_the_count_table_is_the_count_nll():
    ids, counts = _tiny_corpus()
    probs = lm_math.bigram_probs(counts, 0.0)
    w = probs.clamp_min(1e-300).log()  # W = log(c / n) is an optimum
    nll = lm_math.bigram_nll(probs, ids)
    assert abs(G.bigram_loss_from_counts(w, counts).item() - nll) < 1e-9


@pytest.mark.parametrize("optimizer, lr, steps", [("adam", 0.3, 300), ("momentum", 5.0, 300)])
def test_neural_bigram_meets_the_count_model(optimizer, lr, steps):
    ids, counts = _tiny_corpus()
    nll = lm_math.bigram_nll(lm_math.bigram_probs(counts, 0.0), ids)
    w, losses = G.train_neural_bigram(counts, steps, lr=lr, optimizer=optimizer)
    assert len(losses) == steps
    assert abs(losses[0] - math.log(counts.shape[0])) < 1e-5  # W = 0: uniform
    assert losses[-1] < losses[0]
    assert abs(losses[-1] / nll - 1) < 0.02
    assert losses[-1] > nll - 1e-5  # maximum likelihood is the floor
    seen = counts.sum(1) > 0
    probs = lm_math.softmax(w)[seen]
    assert (probs - lm_math.bigram_probs(counts, 0.0)[seen].float()).abs().max() < 0.05


def test_train_neural_bigram_rejects_unknown_optimizer():
    _, counts = _tiny_corpus()
    with pytest.raises(ValueError):
        G.train_neural_bigram(counts, 1, optimizer="rmsprop")
