"""Lesson 02, gradients: the softmax cross-entropy gradient, backpropagation by hand through a
small network, a numerical gradient checker, optimizers from scratch (SGD with momentum, Adam,
AdamW) and a neural bigram language model trained to match the count-based one."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch

from lmcourse import lm_math

Tensor = torch.Tensor

# --------------------------------------------------------------------------- softmax + cross-entropy


def softmax_ce_grad(logits: Tensor, targets: Tensor, ignore_index: int = lm_math.IGNORE_INDEX) -> Tensor:
    """Gradient of the mean cross-entropy w.r.t. the logits: (softmax(logits) - onehot(targets)) / N.

    logits: (N, V), targets: (N,). N counts only targets that are not `ignore_index`; the rows of
    ignored targets get a zero gradient, as with `F.cross_entropy`.
    """
    keep = targets != ignore_index  # (N,)
    p = lm_math.softmax(logits, dim=-1)  # (N, V)
    y = torch.zeros_like(p)
    rows = keep.nonzero().squeeze(-1)  # (N_kept,)
    y[rows, targets[rows]] = 1.0
    n = keep.sum().clamp_min(1)  # no kept target: every row is zero anyway
    return (p - y) * keep.unsqueeze(-1) / n


# --------------------------------------------------------------------------- a small network by hand


def mlp_init(
    vocab_size: int, d_embed: int, d_hidden: int, generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
) -> dict[str, Tensor]:
    """Parameters of embedding -> linear -> tanh -> linear: E, W1, b1, W2, b2 (no grad tracking)."""
    def rnd(*shape: int, scale: float) -> Tensor:
        return (torch.randn(*shape, generator=generator, dtype=dtype) * scale).to(device)

    return {
        "E": rnd(vocab_size, d_embed, scale=1.0),               # (V, D)
        "W1": rnd(d_embed, d_hidden, scale=d_embed ** -0.5),    # (D, H)
        "b1": rnd(d_hidden, scale=0.1),                         # (H,)
        "W2": rnd(d_hidden, vocab_size, scale=d_hidden ** -0.5),  # (H, V)
        "b2": rnd(vocab_size, scale=0.1),                       # (V,)
    }


def mlp_forward(params: dict[str, Tensor], ids: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Logits of the next token from the previous one, and the cache the backward pass needs.

    x = E[ids]; a = x W1 + b1; h = tanh(a); logits = h W2 + b2.
    """
    x = params["E"][ids]                   # (N, D)
    a = x @ params["W1"] + params["b1"]    # (N, H)
    h = torch.tanh(a)                      # (N, H)
    logits = h @ params["W2"] + params["b2"]  # (N, V)
    return logits, {"x": x, "a": a, "h": h, "logits": logits}


def mlp_loss(params: dict[str, Tensor], ids: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of the network on (previous id, next id) pairs."""
    return lm_math.cross_entropy(mlp_forward(params, ids)[0], targets)


def linear_backward(x: Tensor, w: Tensor, dout: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (dx, dW, db) of y = x W + b, given dL/dy = `dout`: (dout W^T, x^T dout, sum of dout)."""
    return dout @ w.T, x.T @ dout, dout.sum(0)  # (N, D), (D, H), (H,)


def mlp_backward(
    params: dict[str, Tensor], cache: dict[str, Tensor], ids: Tensor, targets: Tensor
) -> dict[str, Tensor]:
    """Gradients of `mlp_loss` for every parameter, by the chain rule, from `mlp_forward`'s cache."""
    dlogits = softmax_ce_grad(cache["logits"], targets)                    # (N, V)
    dh, dW2, db2 = linear_backward(cache["h"], params["W2"], dlogits)      # (N, H), (H, V), (V,)
    da = dh * (1 - cache["h"] ** 2)                                        # tanh' = 1 - tanh^2
    dx, dW1, db1 = linear_backward(cache["x"], params["W1"], da)           # (N, D), (D, H), (H,)
    # A row of E used several times collects the sum of its gradients: index_add, not assignment.
    dE = torch.zeros_like(params["E"]).index_add_(0, ids, dx)              # (V, D)
    return {"E": dE, "W1": dW1, "b1": db1, "W2": dW2, "b2": db2}


def autograd_grads(
    f: Callable[..., Tensor], inputs: Sequence[Tensor]
) -> list[Tensor]:
    """Gradients of the scalar f(*inputs) w.r.t. each input, by torch.autograd (inputs untouched)."""
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = f(*leaves)
    grads = torch.autograd.grad(out, leaves, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(leaves, grads)]


def max_abs_diff(a: dict[str, Tensor], b: dict[str, Tensor]) -> dict[str, float]:
    """Largest absolute difference per key of two dicts of tensors with the same keys."""
    return {k: (a[k].double() - b[k].double()).abs().max().item() for k in a}


# --------------------------------------------------------------------------- numerical gradient check


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one CPU thread inside the block, then restore the previous setting."""
    # A gradient check evaluates f thousands of times on tiny tensors; there, synchronising
    # several threads costs more than it saves (30x slower on a busy 2-core machine).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def numerical_grad(f: Callable[[Tensor], Tensor], x: Tensor, eps: float = 1e-6) -> Tensor:
    """Central-difference gradient of the scalar f(x), in float64: (f(x+eps) - f(x-eps)) / (2 eps).

    Each entry is perturbed in turn and restored; the error is O(eps^2), against O(eps) for
    forward differences. `x` itself is not modified.
    """
    with _one_thread():
        return _central_differences(f, x, eps)


def _central_differences(f: Callable[[Tensor], Tensor], x: Tensor, eps: float) -> Tensor:
    x = x.detach().to(torch.float64).clone()
    grad = torch.zeros_like(x)
    flat, gflat = x.view(-1), grad.view(-1)
    for i in range(flat.numel()):
        old = flat[i].item()
        flat[i] = old + eps
        plus = float(f(x))
        flat[i] = old - eps
        minus = float(f(x))
        flat[i] = old  # restore before moving on, or the perturbations add up
        gflat[i] = (plus - minus) / (2 * eps)
    return grad


def numerical_grads(
    f: Callable[..., Tensor], inputs: Sequence[Tensor], eps: float = 1e-6
) -> list[Tensor]:
    """Central-difference gradients of the scalar f(*inputs) w.r.t. each input (float64)."""
    xs = [x.detach().to(torch.float64).clone() for x in inputs]
    grads = []
    for k in range(len(xs)):
        def f_k(xk: Tensor, k: int = k) -> Tensor:
            return f(*xs[:k], xk, *xs[k + 1:])

        with _one_thread():
            grads.append(_central_differences(f_k, xs[k], eps))
    return grads


def relative_error(analytic: Tensor, numeric: Tensor) -> float:
    """||a - n|| / (||a|| + ||n||): 0 when equal, 1 for a sign error, 0 when both are zero."""
    a, n = analytic.detach().double(), numeric.detach().double()
    if a.shape != n.shape:
        raise ValueError(f"gradient of shape {tuple(a.shape)} for an input of shape {tuple(n.shape)}")
    denom = a.norm() + n.norm()
    return 0.0 if denom == 0 else ((a - n).norm() / denom).item()


def grad_check(
    f: Callable[..., Tensor],
    inputs: Sequence[Tensor],
    grads: Sequence[Tensor] | Callable[..., Sequence[Tensor]] | None = None,
    eps: float = 1e-6,
) -> list[float]:
    """Relative error of analytic gradients of the scalar f(*inputs), one per input.

    `grads`: the gradients to check, as tensors or as a function of the inputs that returns them;
    None checks torch.autograd's. The reference is `numerical_grads` in float64, so `f` must work
    in float64. Well below 1e-6 means correct; above 1e-3 means a bug.
    """
    inputs64 = [x.detach().to(torch.float64) for x in inputs]
    if grads is None:
        analytic = autograd_grads(f, inputs64)
    elif callable(grads):
        analytic = list(grads(*inputs64))
    else:
        analytic = list(grads)
    if len(analytic) != len(inputs64):
        raise ValueError(f"{len(analytic)} gradients for {len(inputs64)} inputs")
    numeric = numerical_grads(f, inputs64, eps)
    return [relative_error(a, n) for a, n in zip(analytic, numeric)]


# --------------------------------------------------------------------------- optimizers


class Optimizer:
    """Base class: a list of parameters, `zero_grad()`, and a `step()` that updates them in place."""

    def __init__(self, params: Iterable[Tensor], lr: float):
        self.params = list(params)
        if not self.params:
            raise ValueError("the optimizer got an empty parameter list")
        if lr < 0:
            raise ValueError(f"learning rate must be >= 0, got {lr}")
        self.lr = lr
        self.state: list[dict[str, Tensor | int]] = [{} for _ in self.params]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the gradients of the last backward pass (None, as torch does by default)."""
        for p in self.params:
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        """Update every parameter that has a gradient."""
        for p, state in zip(self.params, self.state):
            if p.grad is not None:
                self.update(p, p.grad, state)

    def update(self, p: Tensor, grad: Tensor, state: dict) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """SGD with momentum, dampening, Nesterov and L2 weight decay, as torch.optim.SGD.

    g = grad + wd * p;  b = g (first step), else b = mu * b + (1 - dampening) * g;
    d = g + mu * b (Nesterov) or b;  p <- p - lr * d.
    """

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(params, lr)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum needs momentum > 0 and dampening = 0")
        self.momentum, self.dampening = momentum, dampening
        self.weight_decay, self.nesterov = weight_decay, nesterov

    def update(self, p: Tensor, grad: Tensor, state: dict) -> None:
        g = grad + self.weight_decay * p if self.weight_decay else grad
        if self.momentum:
            if "momentum_buffer" not in state:
                buf = g.clone()  # the first step starts the buffer at g, undamped (as torch)
            else:
                buf = self.momentum * state["momentum_buffer"] + (1 - self.dampening) * g
            state["momentum_buffer"] = buf
            g = g + self.momentum * buf if self.nesterov else buf
        p.sub_(self.lr * g)


def adam_step(
    param: Tensor, grad: Tensor, m: Tensor, v: Tensor, step: int, lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
    decoupled: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """One Adam/AdamW update; returns new (param, m, v). `step` counts from 1.

    decoupled=True (AdamW): p <- p - lr * wd * p, then the Adam step on the raw gradient.
    decoupled=False (Adam with L2): the gradient becomes grad + wd * p before the moments.
    """
    if step < 1:
        raise ValueError(f"step counts from 1, got {step}")
    beta1, beta2 = betas
    if weight_decay and decoupled:
        param = param * (1 - lr * weight_decay)  # decay uses the parameter before this step's update
    elif weight_decay:
        grad = grad + weight_decay * param
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad * grad
    m_hat = m / (1 - beta1 ** step)  # bias correction: m and v start at 0
    v_hat = v / (1 - beta2 ** step)
    param = param - lr * m_hat / (v_hat.sqrt() + eps)
    return param, m, v


def adamw_step(
    param: Tensor, grad: Tensor, m: Tensor, v: Tensor, step: int, lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
) -> tuple[Tensor, Tensor, Tensor]:
    """One AdamW update (decoupled weight decay); returns new (param, m, v). `step` counts from 1."""
    return adam_step(param, grad, m, v, step, lr, betas, eps, weight_decay, decoupled=True)


class Adam(Optimizer):
    """Adam with L2 weight decay added to the gradient, as torch.optim.Adam."""

    decoupled = False

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, lr)
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay

    def update(self, p: Tensor, grad: Tensor, state: dict) -> None:
        if not state:
            state.update(step=0, m=torch.zeros_like(p), v=torch.zeros_like(p))
        state["step"] += 1
        new_p, state["m"], state["v"] = adam_step(
            p, grad, state["m"], state["v"], state["step"], self.lr, self.betas, self.eps,
            self.weight_decay, decoupled=self.decoupled)
        p.copy_(new_p)


class AdamW(Adam):
    """Adam with decoupled weight decay (p <- p - lr * wd * p), as torch.optim.AdamW."""

    decoupled = True

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)


# --------------------------------------------------------------------------- neural bigram model


def bigram_loss_from_counts(weights: Tensor, counts: Tensor) -> Tensor:
    """Mean NLL over all pairs of a text of the model softmax(W[prev]), from its bigram counts.

    Each pair (a, b) contributes -log softmax(W[a])[b], and it occurs counts[a, b] times, so the
    mean over the N = counts.sum() pairs is -(counts * log_softmax(W)).sum() / N.
    """
    counts = counts.to(weights.dtype)
    return -(counts * lm_math.log_softmax(weights, dim=-1)).sum() / counts.sum()


def bigram_loss_from_pairs(weights: Tensor, ids: Tensor) -> Tensor:
    """The same loss from the text itself: cross-entropy of logits W[prev] on the next ids."""
    return lm_math.cross_entropy(weights[ids[:-1]], ids[1:])


def train_neural_bigram(
    counts: Tensor, steps: int, lr: float = 0.1, optimizer: str = "adam",
    weights: Tensor | None = None, progress: bool = False,
) -> tuple[Tensor, list[float]]:
    """Fit a V x V weight table (logits = W[prev]) by full-batch gradient descent on the mean NLL.

    optimizer: "sgd", "momentum" (0.9) or "adam", the course's own classes. W starts at 0
    (every next token equally likely) unless `weights` is given. Returns W and the loss per step.
    """
    from tqdm.auto import tqdm

    V = counts.shape[0]
    w = torch.zeros(V, V, device=counts.device) if weights is None else weights.detach().clone()
    w.requires_grad_(True)
    make = {
        "sgd": lambda: SGD([w], lr=lr),
        "momentum": lambda: SGD([w], lr=lr, momentum=0.9),
        "adam": lambda: Adam([w], lr=lr),
    }
    if optimizer not in make:
        raise ValueError(f"optimizer must be one of {sorted(make)}, got {optimizer!r}")
    opt = make[optimizer]()
    losses = []
    for _ in tqdm(range(steps), desc=f"neural bigram ({optimizer})", disable=not progress):
        loss = bigram_loss_from_counts(w, counts)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return w.detach(), losses
