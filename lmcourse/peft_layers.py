"""Parameter-efficient fine-tuning (lesson 07): LoRA, bottleneck adapters and the size of prefix
tuning, written out so that each is a few lines of torch.

- LoRA (Hu et al., 2021) keeps a pretrained linear layer W frozen and learns a low-rank update:
  y = x W^T + b + (alpha / r) x A^T B^T, with A (r, d_in) and B (d_out, r). A starts like
  peft's (Kaiming-uniform, a=sqrt(5)) and B at zero, so training starts from the pretrained
  model; `LoRALinear.merge` folds the update into W, so inference costs nothing extra.
  `apply_lora` puts it on named linear layers of a model (BERT's "query" and "value") and
  freezes everything else; tests/test_lora.py checks it equals peft's LoRA.
- A bottleneck adapter (Houlsby et al., 2019) is a small residual MLP x + up(GELU(down(x))) after
  a layer's output projection; the up-projection starts at zero, so it starts as the identity.
- Prefix tuning (Li and Liang, 2021) learns key/value vectors prepended at every layer; only its
  parameter count is here (`prefix_tuning_parameters`), equal to peft's PrefixTuningConfig's.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def lora_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    alpha: float,
) -> torch.Tensor:
    """A LoRA linear layer: x W^T + b + (alpha / r) (x A^T) B^T, with r = lora_A.shape[0].

    x (..., d_in), weight W (d_out, d_in), bias (d_out,) or None, lora_A (r, d_in), lora_B
    (d_out, r); returns (..., d_out). The update goes through the rank-r bottleneck (x A^T, then
    B^T) and never builds the (d_out, d_in) matrix B A.
    """
    r = lora_A.shape[0]
    base = F.linear(x, weight, bias)           # (..., d_out)
    update = (x @ lora_A.T) @ lora_B.T         # (..., r) -> (..., d_out)
    return base + (alpha / r) * update


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update (alpha / r) B A.

    `base` is kept as it is (its weight and bias frozen); lora_A (r, d_in) is initialised like
    peft's (Kaiming-uniform with a=sqrt(5), bound 1/sqrt(d_in)), lora_B (d_out, r) at zero, so the
    layer starts equal to `base`. Dropout (peft's lora_dropout) applies to the input of the update
    only. `merge()` adds the update into base.weight (forward then is base alone, the same output
    up to rounding); `unmerge()` takes it out again.
    """

    def __init__(
        self,
        base: nn.Linear,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}.")
        if r < 1:
            raise ValueError(f"The rank r must be at least 1, got {r}.")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.r, self.alpha = r, alpha
        self.scale = alpha / r
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=generator)  # as peft
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def delta_weight(self) -> torch.Tensor:
        """The update (alpha / r) B A as a (d_out, d_in) matrix."""
        return self.scale * (self.lora_B @ self.lora_A)  # (d_out, r) @ (r, d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)
        update = (self.dropout(x) @ self.lora_A.T) @ self.lora_B.T  # (..., r) -> (..., d_out)
        return self.base(x) + self.scale * update                   # (..., d_out)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight: W <- W + (alpha / r) B A."""
        if not self.merged:
            self.base.weight += self.delta_weight().to(self.base.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update out of the base weight again."""
        if self.merged:
            self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"alpha={self.alpha}, merged={self.merged}")


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _matches(name: str, targets: Sequence[str]) -> bool:
    """peft's rule: a module is a target when its full name is one, or ends with '.' + one."""
    return any(name == t or name.endswith(f".{t}") for t in targets)


def freeze(model: nn.Module, train_also: Sequence[str] = ()) -> None:
    """Freeze every parameter, except those whose name contains one of `train_also` (e.g.
    "classifier": the new head of a token classifier must still learn)."""
    for name, p in model.named_parameters():
        p.requires_grad_(any(t in name for t in train_also))


def apply_lora(
    model: nn.Module,
    target_modules: Sequence[str] = ("query", "value"),
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    train_also: Sequence[str] = (),
    generator: torch.Generator | None = None,
) -> list[str]:
    """Replace the nn.Linear modules named in `target_modules` by LoRALinear, in place, and freeze
    every other parameter except those whose name contains one of `train_also`. Returns the names
    of the replaced modules.

    A module is a target when its name is one of `target_modules` or ends with "." + one (peft's
    rule): ("query", "value") are BERT's attention query and value projections in every layer.
    With the same A and B this is peft's `get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha,
    target_modules=..., lora_dropout=dropout))` (tests/test_lora.py).
    """
    names = [n for n, m in model.named_modules() if _matches(n, target_modules)]
    wrong = [n for n in names if not isinstance(model.get_submodule(n), nn.Linear)]
    if wrong:
        raise TypeError(f"LoRA here wraps nn.Linear only; {wrong[0]} is "
                        f"{type(model.get_submodule(wrong[0])).__name__}.")
    if not names:
        linear = sorted({n.rpartition(".")[2] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"No module matches target_modules={list(target_modules)}; the model's "
                         f"linear layers are named {linear}.")
    freeze(model, train_also)
    for n in names:
        _set_submodule(model, n, LoRALinear(model.get_submodule(n), r, alpha, dropout, generator))
    return names


def copy_lora_from_peft(peft_model: nn.Module, model: nn.Module) -> int:
    """Give `model`'s LoRALinear layers the A and B of the matching layers of a peft model (made
    with `peft.get_peft_model(copy of the same base, LoraConfig(...))`), so the two can be compared
    output for output. Returns how many layers were copied; the layer names must match."""
    import peft

    theirs = {n.removeprefix("base_model.model."): m for n, m in peft_model.named_modules()
              if isinstance(m, peft.tuners.lora.Linear)}
    ours = {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    if sorted(theirs) != sorted(ours) or not ours:
        raise ValueError(f"The LoRA layers differ: peft has {sorted(theirs)[:4]}..., this model "
                         f"{sorted(ours)[:4]}...; wrap the same target_modules in both.")
    with torch.no_grad():
        for name, layer in theirs.items():
            ours[name].lora_A.copy_(layer.lora_A["default"].weight)
            ours[name].lora_B.copy_(layer.lora_B["default"].weight)
    return len(ours)


def merge_lora(model: nn.Module) -> int:
    """Merge every LoRALinear of `model` into its base weight (for inference); returns how many."""
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    for m in layers:
        m.merge()
    return len(layers)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, each shared tensor counted once; peft's
    `model.get_nb_trainable_parameters()` for a peft model."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


class Adapter(nn.Module):
    """A bottleneck adapter: x + up(GELU(down(x))), d_model -> bottleneck -> d_model.

    The up-projection starts at zero (weight and bias), so a new adapter is the identity and the
    model starts as the pretrained one; the down-projection starts like nn.Linear (drawn with
    `generator` when given).
    """

    def __init__(self, d_model: int, bottleneck: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.down = nn.Linear(d_model, bottleneck)
        self.up = nn.Linear(bottleneck, d_model)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5), generator=generator)  # nn.Linear's
        bound = 1 / math.sqrt(d_model)
        nn.init.uniform_(self.down.bias, -bound, bound, generator=generator)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(F.gelu(self.down(x)))  # (..., d_model)


class AdaptedLinear(nn.Module):
    """A linear layer followed by an adapter: adapter(linear(x))."""

    def __init__(self, linear: nn.Module, adapter: Adapter) -> None:
        super().__init__()
        self.linear = linear
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.linear(x))


ADAPTER_PLACES = {  # where add_adapters puts adapters in a transformers BERT layer
    "output": r"(^|\.)layer\.\d+\.output\.dense$",               # after the feed-forward block
    "attention": r"(^|\.)layer\.\d+\.attention\.output\.dense$",  # after the attention block
}


def add_adapters(
    model: nn.Module,
    bottleneck: int = 64,
    places: Sequence[str] = ("output",),
    train_also: Sequence[str] = (),
    generator: torch.Generator | None = None,
) -> list[str]:
    """Insert an Adapter after the output projection of every BERT layer, in place, and freeze
    every other parameter except those whose name contains one of `train_also`. Returns the names
    of the wrapped projections.

    In a transformers BertLayer the feed-forward block ends with `output.dense`, then dropout, then
    LayerNorm(h + residual): the adapter goes right after `output.dense` (Houlsby's place), so it
    acts before BERT's own residual and LayerNorm. places=("output", "attention") also puts one
    after the attention block's `attention.output.dense` (Houlsby's two per layer).
    """
    unknown = [p for p in places if p not in ADAPTER_PLACES]
    if unknown:
        raise ValueError(f"Unknown places {unknown}; choose from {sorted(ADAPTER_PLACES)}.")
    patterns = [re.compile(ADAPTER_PLACES[p]) for p in places]
    names = [n for n, m in model.named_modules()
             if isinstance(m, nn.Linear) and any(p.search(n) for p in patterns)]
    if not names:
        raise ValueError("Found no BERT layer output projection (`layer.N.output.dense`) to adapt.")
    freeze(model, train_also)
    for n in names:
        linear = model.get_submodule(n)
        _set_submodule(model, n, AdaptedLinear(linear, Adapter(linear.out_features, bottleneck, generator)))
    return names


def lora_parameters(d_in: int, d_out: int, r: int) -> int:
    """The trainable parameters LoRA adds to one (d_out, d_in) linear layer: r (d_in + d_out)."""
    return r * (d_in + d_out)


def adapter_parameters(d_model: int, bottleneck: int) -> int:
    """The parameters of one Adapter: two linear layers with biases."""
    return 2 * d_model * bottleneck + bottleneck + d_model


def prefix_tuning_parameters(
    n_layers: int, d_model: int, n_prefix: int, projection_hidden: int | None = None
) -> int:
    """The trainable parameters of prefix tuning: a key and a value vector (d_model each) per
    prefix position per layer, n_prefix * n_layers * 2 * d_model. With `projection_hidden`
    (peft's prefix_projection=True, encoder_hidden_size) they are computed during training from
    n_prefix embeddings of size d_model by an MLP d_model -> hidden -> n_layers * 2 * d_model, whose
    parameters are counted instead. Equals peft's PrefixTuningConfig's count (tests/test_lora.py).
    """
    out = n_layers * 2 * d_model
    if projection_hidden is None:
        return n_prefix * out
    return (n_prefix * d_model + d_model * projection_hidden + projection_hidden
            + projection_hidden * out + out)
