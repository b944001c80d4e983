"""Checked exercises of lesson 02 (gradients)."""

from __future__ import annotations

import torch

from lmcourse import gradients, lm_math
from lmcourse.checker import Case, Diagnosis, Exercise, Mistake, difference
from lmcourse.exercises import register

LESSON = "02_gradients"


def _t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


# --------------------------------------------------------------------------- softmax + CE gradient


def _ce_grad_cases() -> list[Case]:
    g = torch.Generator().manual_seed(20)
    return [
        Case("one example", (_t([[2.0, 1.0, 0.1]]), torch.tensor([0])),
             hint="for one example the gradient is softmax(z) - onehot(target)."),
        Case("batch", (torch.randn(8, 5, generator=g, dtype=torch.float64),
                       torch.randint(0, 5, (8,), generator=g)),
             hint="the loss is a MEAN over the batch, so every row's gradient is divided by N."),
        Case("large logits", (_t([[1000.0, 0.0, -1000.0], [0.0, 1000.0, 0.0]]), torch.tensor([2, 0])),
             hint="use a stable softmax (lm.lm_math.softmax): exp(1000) overflows."),
        Case("ignored positions (-100)", (torch.randn(6, 4, generator=g, dtype=torch.float64),
                                          torch.tensor([1, -100, 3, 0, -100, 2])),
             hint="rows whose target is -100 do not count: their gradient is 0 and N is the "
                  "number of the other rows."),
        Case("odd shape", (torch.randn(3, 11, generator=g, dtype=torch.float64) * 4,
                           torch.tensor([10, 0, 5])),
             hint="the gradient has the shape of the logits: (N, V)."),
    ]


def _onehot(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    keep = targets != -100
    y = torch.zeros_like(logits)
    rows = keep.nonzero().squeeze(-1)
    y[rows, targets[rows]] = 1.0
    return y, keep.unsqueeze(-1).to(logits.dtype)


def _ce_grad_drops_class_zero(logits, targets):
    y, _ = _onehot(logits, targets)
    keep = (targets > 0).unsqueeze(-1).to(logits.dtype)
    return (lm_math.softmax(logits) - y) * keep / keep.sum().clamp_min(1)


def _ce_grad_no_mean(logits, targets):
    y, keep = _onehot(logits, targets)
    return (lm_math.softmax(logits) - y) * keep


def _ce_grad_y_minus_p(logits, targets):
    y, keep = _onehot(logits, targets)
    return (y - lm_math.softmax(logits)) * keep / keep.sum()


def _ce_grad_p_only(logits, targets):
    _, keep = _onehot(logits, targets)
    return lm_math.softmax(logits) * keep / keep.sum()


def _ce_grad_all_rows(logits, targets):
    y, keep = _onehot(logits, targets)
    return (lm_math.softmax(logits) - y) * keep / len(targets)


def _ce_grad_mean_all(logits, targets):
    y, keep = _onehot(logits, targets)
    return (lm_math.softmax(logits) - y) * keep / logits.numel()


def _rows_sum_to_zero(got, want, case: Case) -> Diagnosis | None:
    """Each counted row of the gradient is (p - onehot) / N: it sums to 0 over the vocabulary."""
    if not isinstance(got, torch.Tensor) or got.shape != want.shape or not got.is_floating_point():
        return None
    targets = case.args[1]
    rows = got.double()[targets != -100].sum(-1)
    if rows.numel() == 0 or not torch.isfinite(rows).all() or torch.allclose(rows, torch.zeros_like(rows), atol=1e-6):
        return None
    return Diagnosis("rows do not sum to 0", "each row of the gradient must sum to 0 over the "
                     "vocabulary (the probabilities sum to 1, the one-hot too): yours don't. Turn the "
                     "logits into probabilities with softmax first, then subtract the one-hot.")


register(Exercise(
    key="softmax_ce_grad",
    lesson=LESSON,
    reference=gradients.softmax_ce_grad,
    cases=_ce_grad_cases,
    diagnosers=[_rows_sum_to_zero],
    library_name="lm.gradients.softmax_ce_grad",
    atol=1e-7,
    rtol=1e-6,
    mistakes=[
        Mistake("no 1/N", _ce_grad_no_mean,
                "the loss is the MEAN over the N examples, so its gradient is (p - y) / N: "
                "divide by the number of (counted) examples."),
        Mistake("y - p", _ce_grad_y_minus_p,
                "sign error: dL/dz = p - y (raising the target's logit lowers the loss, so its "
                "gradient is negative: p_target - 1 < 0)."),
        Mistake("forgot the one-hot", _ce_grad_p_only,
                "subtract the one-hot target: the target's entry of the gradient is (p_target - 1) / N."),
        Mistake("ignored rows in N", _ce_grad_all_rows,
                "divide by the number of targets that are not -100, not by the number of rows."),
        Mistake("class 0 dropped (> 0 instead of != -100)", _ce_grad_drops_class_zero,
                "class 0 is a real class: only rows whose target is -100 get a zero gradient. Keep "
                "targets != -100; targets > 0 also drops the rows whose target is 0."),
        Mistake("divided by N*V", _ce_grad_mean_all,
                "the loss averages over the N examples, not over the N*V entries of the logits: "
                "divide by N."),
    ],
))


# --------------------------------------------------------------------------- manual backward pass


def _mlp_case(seed: int, vocab: int, d: int, h: int, ids: list[int], targets: list[int]) -> tuple:
    g = torch.Generator().manual_seed(seed)
    params = gradients.mlp_init(vocab, d, h, generator=g, dtype=torch.float64)
    ids_t, targets_t = torch.tensor(ids), torch.tensor(targets)
    _, cache = gradients.mlp_forward(params, ids_t)
    return params, cache, ids_t, targets_t


def _mlp_cases() -> list[Case]:
    return [
        Case("distinct ids", _mlp_case(21, 6, 3, 4, [0, 1, 2, 3], [1, 2, 3, 4]),
             hint="go backwards: dlogits, then W2 and b2, then through tanh, then W1, b1 and E."),
        Case("one example", _mlp_case(22, 5, 2, 3, [4], [0]),
             hint="with one example the gradients are outer products: dW2 = h^T dlogits."),
        Case("repeated ids", _mlp_case(23, 7, 4, 5, [1, 3, 1, 1, 6, 3], [2, 2, 0, 5, 1, 6]),
             hint="a row of E used several times must collect the SUM of its gradients "
                  "(index_add_), not the last one."),
        Case("bigger batch", _mlp_case(24, 9, 5, 8, list(range(9)) * 3, [(3 * i + 1) % 9 for i in range(27)]),
             hint="biases collect the sum over the batch of the gradient of their layer's output."),
    ]


def _mlp_backward_variant(params, cache, ids, targets, tanh_grad="h", embed="index_add",
                          mean=True, bias="sum"):
    dlogits = gradients.softmax_ce_grad(cache["logits"], targets)
    if not mean:
        dlogits = dlogits * len(targets)
    reduce = (lambda t: t.sum(0)) if bias == "sum" else (lambda t: t.mean(0))
    dW2, db2 = cache["h"].T @ dlogits, reduce(dlogits)
    dh = dlogits @ params["W2"].T
    if tanh_grad == "h":
        da = dh * (1 - cache["h"] ** 2)
    elif tanh_grad == "a":
        da = dh * (1 - cache["a"] ** 2)
    else:
        da = dh
    dW1, db1 = cache["x"].T @ da, reduce(da)
    dx = da @ params["W1"].T
    dE = torch.zeros_like(params["E"])
    if embed == "index_add":
        dE.index_add_(0, ids, dx)
    else:
        dE[ids] = dx  # repeated ids: the last write wins
    return {"E": dE, "W1": dW1, "b1": db1, "W2": dW2, "b2": db2}


def _first_wrong_step(got, want, case: Case) -> Diagnosis | None:
    """Backpropagation goes b2, W2, then through tanh to b1, W1, then to E: name the first wrong step."""
    if not isinstance(got, dict) or set(got) != set(want):
        return None
    bad = {k for k in want if difference(got[k], want[k], 1e-8, 1e-6) is not None}
    if not bad:
        return None
    if "b2" in bad:
        advice = ("db2 is already wrong, so dlogits is: dlogits = (softmax(logits) - onehot(targets)) "
                  "/ N (lm.gradients.softmax_ce_grad), and db2 = dlogits.sum(0).")
    elif "W2" in bad:
        advice = "db2 is right (so dlogits is), but dW2 is wrong: dW2 = h.T @ dlogits, shape (H, V)."
    elif "b1" in bad:
        advice = ("W2 and b2 are right; the error starts at the step back through tanh: "
                  "dh = dlogits @ W2.T, then da = dh * (1 - h**2) (the derivative of tanh is "
                  "1 - tanh(a)**2 = 1 - h**2), and db1 = da.sum(0).")
    elif "W1" in bad:
        advice = "W2, b2 and b1 are right (so da is), but dW1 is wrong: dW1 = x.T @ da, shape (D, H)."
    else:
        advice = ("every gradient but dE is right: dx = da @ W1.T, and each row of dx goes to the "
                  "row of E it came from, summed for repeated ids: "
                  "dE = torch.zeros_like(E).index_add_(0, ids, dx).")
    return Diagnosis(f"first wrong step: {sorted(bad)}", advice)


register(Exercise(
    key="mlp_backward",
    lesson=LESSON,
    reference=gradients.mlp_backward,
    cases=_mlp_cases,
    diagnosers=[_first_wrong_step],
    library_name="lm.gradients.mlp_backward",
    atol=1e-8,
    rtol=1e-6,
    mistakes=[
        Mistake("tanh' from the pre-activation",
                lambda p, c, i, t: _mlp_backward_variant(p, c, i, t, tanh_grad="a"),
                "tanh'(a) = 1 - tanh(a)^2 = 1 - h^2: square the OUTPUT h of tanh, not its input a."),
        Mistake("no tanh'", lambda p, c, i, t: _mlp_backward_variant(p, c, i, t, tanh_grad="none"),
                "the gradient must pass through tanh: multiply dh by tanh'(a) = 1 - h^2."),
        Mistake("embedding rows overwritten",
                lambda p, c, i, t: _mlp_backward_variant(p, c, i, t, embed="assign"),
                "dE[ids] = dx keeps only the last gradient of a repeated id; a row used k times "
                "gets the sum of its k gradients: dE.index_add_(0, ids, dx)."),
        Mistake("no 1/N", lambda p, c, i, t: _mlp_backward_variant(p, c, i, t, mean=False),
                "the loss is a mean over the batch: dlogits = (p - y) / N."),
        Mistake("bias gradient averaged", lambda p, c, i, t: _mlp_backward_variant(p, c, i, t, bias="mean"),
                "a bias is added to every row, so its gradient is the SUM of the rows of the "
                "upstream gradient (the 1/N is already in dlogits)."),
    ],
))


# --------------------------------------------------------------------------- numerical gradient


def _cube_sum(x):
    return (x ** 3).sum()


def _sin_x(x):
    return (x.sin() * x).sum()


def _quad_form(x):
    return (x @ x.T).sum() + x[0, 0] * x[-1, -1]


def _logsumexp(x):
    return x.logsumexp(-1).sum()


def _numgrad_cases() -> list[Case]:
    g = torch.Generator().manual_seed(25)
    return [
        Case("cubes with eps = 0.01", (_cube_sum, _t([1.0, -2.0, 0.5]), 1e-2),
             hint="use central differences (f(x + eps) - f(x - eps)) / (2 eps): their error is "
                  "O(eps^2), a forward difference's is O(eps)."),
        Case("a matrix", (_quad_form, torch.randn(3, 2, generator=g, dtype=torch.float64), 1e-4),
             hint="perturb ONE entry at a time (loop over x.view(-1)) and give the gradient x's shape."),
        Case("float32 input", (_sin_x, torch.randn(5, generator=g), 1e-6),
             hint="convert x to float64 first: in float32, x + 1e-6 loses most of the 1e-6."),
        Case("a row vector", (_logsumexp, _t([[0.3, -1.2, 2.0]]), 1e-6),
             hint="the result has the shape of x."),
        Case("0-d input", (_cube_sum, _t(1.5), 1e-3),
             hint="a 0-dimensional x works too: x.reshape(-1) has one entry."),
    ]


def _numgrad_generic(f, x, eps, scheme="central", dtype=torch.float64, restore=True):
    x = x.detach().to(dtype).clone()
    grad = torch.zeros_like(x)
    flat, gflat = x.view(-1), grad.view(-1)
    for i in range(flat.numel()):
        old = flat[i].item()
        if scheme == "forward":
            base = float(f(x))
            flat[i] = old + eps
            gflat[i] = (float(f(x)) - base) / eps
        else:
            flat[i] = flat[i] + eps
            plus = float(f(x))
            flat[i] = flat[i] - 2 * eps
            minus = float(f(x))
            gflat[i] = (plus - minus) / (eps if scheme == "over_eps" else 2 * eps)
        if restore:
            flat[i] = old
    return grad


register(Exercise(
    key="numerical_grad",
    lesson=LESSON,
    reference=gradients.numerical_grad,
    cases=_numgrad_cases,
    library_name="lm.gradients.numerical_grad",
    atol=1e-6,
    rtol=1e-6,
    mistakes=[
        Mistake("forward differences", lambda f, x, eps: _numgrad_generic(f, x, eps, "forward"),
                "(f(x + eps) - f(x)) / eps is off by O(eps); central differences "
                "(f(x + eps) - f(x - eps)) / (2 eps) are off by O(eps^2)."),
        Mistake("divided by eps", lambda f, x, eps: _numgrad_generic(f, x, eps, "over_eps"),
                "x + eps and x - eps are 2 eps apart: divide by 2 * eps."),
        Mistake("perturbation not restored", lambda f, x, eps: _numgrad_generic(f, x, eps, restore=False),
                "put each entry back to its old value before perturbing the next one, or the "
                "shifts add up."),
        Mistake("float32", lambda f, x, eps: _numgrad_generic(f, x, eps, dtype=x.dtype),
                "compute in float64 (x.double()): in float32 a step of 1e-6 is lost in rounding "
                "and the differences are mostly noise."),
    ],
))


# --------------------------------------------------------------------------- AdamW step


def _adamw_cases() -> list[Case]:
    g = torch.Generator().manual_seed(26)

    def r(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    hp = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
    return [
        Case("first step", (r(4), r(4), torch.zeros(4, dtype=torch.float64),
                            torch.zeros(4, dtype=torch.float64), 1), dict(hp, lr=0.1),
             hint="at step 1 the bias correction divides m by (1 - beta1) and v by (1 - beta2): "
                  "the first update has size about lr."),
        Case("step 10 with big decay", (r(3, 2), r(3, 2), r(3, 2, scale=0.1), r(3, 2).abs() * 0.01, 10),
             dict(hp, lr=0.5, weight_decay=0.5),
             hint="decoupled decay: p <- p - lr * wd * p, using p BEFORE this step's Adam update."),
        Case("no weight decay", (r(5), r(5), r(5, scale=0.1), r(5).abs() * 0.01, 3),
             dict(hp, weight_decay=0.0), hint="with wd = 0 AdamW is Adam."),
        Case("tiny gradients", (r(4), r(4, scale=1e-9), torch.zeros(4, dtype=torch.float64),
                                torch.zeros(4, dtype=torch.float64), 1), dict(hp, lr=0.1),
             hint="eps is added to sqrt(v_hat), outside the square root."),
        Case("other betas", (r(2, 2), r(2, 2), r(2, 2, scale=0.1), r(2, 2).abs() * 0.1, 5),
             dict(lr=0.01, betas=(0.5, 0.9), eps=1e-6, weight_decay=0.1),
             hint="m = beta1 m + (1 - beta1) g and v = beta2 v + (1 - beta2) g^2."),
    ]


def _adamw_variant(param, grad, m, v, step, lr, betas, eps, weight_decay, coupled=False,
                   bias_correction=True, eps_inside=False, decay_lr=True, decay_after=False):
    b1, b2 = betas
    if coupled:
        grad = grad + weight_decay * param
    elif not decay_after:
        param = param * (1 - (lr if decay_lr else 1.0) * weight_decay)
    m = b1 * m + (1 - b1) * grad
    v = b2 * v + (1 - b2) * grad ** 2
    m_hat, v_hat = (m / (1 - b1 ** step), v / (1 - b2 ** step)) if bias_correction else (m, v)
    denom = (v_hat + eps).sqrt() if eps_inside else v_hat.sqrt() + eps
    new = param - lr * m_hat / denom
    if decay_after and not coupled:
        new = new * (1 - lr * weight_decay)
    return new, m, v


def _adamw_mistake(**flags):
    return lambda param, grad, m, v, step, lr, betas, eps, weight_decay: _adamw_variant(
        param, grad, m, v, step, lr, betas, eps, weight_decay, **flags)


def _adamw_parts(got, want, case: Case) -> Diagnosis | None:
    """Which of (param, m, v) are wrong, with the formula of each."""
    if not isinstance(got, (tuple, list)) or len(got) != 3:
        return None
    bad = [n for n, g, w in zip(("param", "m", "v"), got, want)
           if difference(g, w, 1e-9, 1e-7) is not None]
    if "m" in bad and "v" in bad:
        advice = ("m and v are both wrong: with beta1, beta2 = betas, m = beta1 * m + (1 - beta1) * "
                  "grad and v = beta2 * v + (1 - beta2) * grad**2; return them as they are (the "
                  "bias-corrected m_hat and v_hat only enter the update).")
    elif "m" in bad:
        advice = ("m is wrong: m = beta1 * m + (1 - beta1) * grad, with the raw gradient; return it "
                  "as it is (the bias-corrected m_hat only enters the update).")
    elif "v" in bad:
        advice = ("v is wrong: v = beta2 * v + (1 - beta2) * grad**2, the squared gradient; return "
                  "it as it is (the bias-corrected v_hat only enters the update).")
    elif bad:
        advice = ("m and v are right; the new param is wrong. In order: decay param * (1 - lr * "
                  "weight_decay); bias-correct m_hat = m / (1 - beta1**step) and v_hat = v / "
                  "(1 - beta2**step); update param - lr * m_hat / (sqrt(v_hat) + eps).")
    else:
        return None
    return Diagnosis(f"wrong: {', '.join(bad)}", advice)


register(Exercise(
    key="adamw_step",
    lesson=LESSON,
    reference=gradients.adamw_step,
    cases=_adamw_cases,
    outputs=("param", "m", "v"),
    diagnosers=[_adamw_parts],
    library_name="lm.gradients.adamw_step",
    atol=1e-9,
    rtol=1e-7,
    mistakes=[
        Mistake("coupled L2 decay", _adamw_mistake(coupled=True),
                "that is Adam with L2 (wd * p added to the gradient, then rescaled by Adam). AdamW "
                "decouples it: p <- p - lr * wd * p, and the moments see the raw gradient."),
        Mistake("no bias correction", _adamw_mistake(bias_correction=False),
                "m and v start at 0, so early on they are too small: divide by (1 - beta1^t) "
                "and (1 - beta2^t)."),
        Mistake("eps inside the square root", _adamw_mistake(eps_inside=True),
                "torch divides by sqrt(v_hat) + eps, not sqrt(v_hat + eps)."),
        Mistake("decay without lr", _adamw_mistake(decay_lr=False),
                "the decoupled decay is scaled by the learning rate: p <- p * (1 - lr * wd)."),
        Mistake("decay after the update", _adamw_mistake(decay_after=True),
                "decay the parameter as it was BEFORE this step (torch multiplies p by "
                "1 - lr * wd first, then applies the Adam update)."),
    ],
))
