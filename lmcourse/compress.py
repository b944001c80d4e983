"""Making a trained encoder smaller and faster (lesson 08): fewer layers, fewer attention heads,
and distillation to win back what trimming costs.

Three ways to shrink a fine-tuned BERT token classifier, from the bluntest to the gentlest:

- **Fewer layers** (`keep_first_layers`, `keep_layers`): keep k of the n encoder layers. The time
  of a forward pass is almost all in the layers, so 3 of 6 layers is nearly twice as fast. The
  embeddings and the classifier stay, so the result is still a model of the same class, saved and
  reloaded with `save_pretrained` / `from_pretrained` (config.num_hidden_layers says k).
- **Fewer attention heads** (`head_importance`, `prune_heads`, `prune_by_importance`): Michel et
  al. (2019), "Are Sixteen Heads Really Better than One?", found that most heads of a trained
  model can go with little loss. A head's importance is how much the loss would change if its
  output were scaled down: put a gate xi_h (= 1) on each head's output and take
  |dL/dxi_h|, summed over the data. The gates live in forward pre-hooks (`head_gates`), because
  transformers 5 removed BERT's `head_mask` and `prune_heads`; pruning then removes the weights
  of the least important heads for real (rows of query/key/value, columns of the output
  projection). Expect less speed than from dropping layers: a head's weights are only its share
  of the four attention projections (4 D^2 of a layer's 12 D^2 with the feed-forward's 8 D^2), so
  half the heads removes about a sixth of a layer's multiply-adds, plus part of the T x T scores.
- **Distillation** (`distillation_loss`, `DistillationModel`, `distill_ner`): Hinton et al.
  (2015), "Distilling the Knowledge in a Neural Network". A small student learns from the
  teacher's whole distribution over tags (softened by a temperature T), not only from the one
  right tag; DistilBERT (Sanh et al. 2019) starts the student from the teacher's own layers,
  which is what `keep_first_layers(teacher, k)` gives.

How a pruned model is saved and reloaded. `BertConfig` has one head count for every layer, so a
model with different heads per layer cannot be rebuilt from its config alone, and
`from_pretrained` refuses its weights (their shapes do not match). `prune_heads` therefore records
what it removed in `config.pruned_heads` ({layer: [head, ...]}, heads numbered as in the unpruned
model: the name and meaning transformers 4 used, whose `from_pretrained` re-applied it; version 5
ignores it). `model.save_pretrained(folder)` writes it into config.json like any other setting,
and `load_pruned(folder)` builds the unpruned model from the config, prunes the recorded heads,
then loads the weights, shapes checked. `NerPredictor(load_pruned(folder), tokenizer)` serves it.

The module handles the BERT family: models whose encoder layers sit at
`model.base_model.encoder.layer` with `attention.self.{query,key,value}` and
`attention.output.dense` (BERT, RoBERTa, ELECTRA, the packaged MiniLM); others raise TypeError.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from lmcourse.batching import to_device
from lmcourse.lm_math import IGNORE_INDEX
from lmcourse.train import get_logits, get_loss

if TYPE_CHECKING:
    from lmcourse.ner import NerRun

LossFn = Callable[[nn.Module, Mapping[str, Any]], Any]  # (model, batch) -> loss or an output with one

# --------------------------------------------------------------------------- size


@dataclass(frozen=True)
class ModelSize:
    """How big a model is: its parameters and the memory they take."""

    parameters: int  # distinct parameters (a tied matrix counts once)
    bytes: int       # their memory at their dtype (4 bytes each in float32)

    @property
    def megabytes(self) -> float:
        return self.bytes / 2**20


def model_size(model: nn.Module) -> ModelSize:
    """Parameter count (`lmcourse.transformer.count_parameters`) and their bytes."""
    from lmcourse.transformer import count_parameters

    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())  # each tensor once
    return ModelSize(count_parameters(model), n_bytes)


# --------------------------------------------------------------------------- finding the parts


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The encoder layers of a BERT-family model (`model.base_model.encoder.layer`)."""
    base = getattr(model, "base_model", model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList) or not all(_has_bert_attention(lay) for lay in layers):
        raise TypeError(f"{type(model).__name__} is not a BERT-family model: compress expects encoder "
                        "layers at model.base_model.encoder.layer with attention.self.query/key/value "
                        "and attention.output.dense (BERT, RoBERTa, ELECTRA, MiniLM).")
    return layers


def _has_bert_attention(layer: nn.Module) -> bool:
    attn = getattr(layer, "attention", None)
    return (all(isinstance(getattr(getattr(attn, "self", None), n, None), nn.Linear)
                for n in ("query", "key", "value"))
            and isinstance(getattr(getattr(attn, "output", None), "dense", None), nn.Linear))


def _config(model: nn.Module) -> Any:
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise TypeError(f"{type(model).__name__} has no transformers config.")
    return cfg


def pruned_heads_of(model_or_config: Any) -> dict[int, list[int]]:
    """{layer: [head, ...]} removed so far (heads numbered as in the unpruned model), from
    config.pruned_heads; {} for an unpruned model. (config.json turns the layer keys into strings;
    this turns them back.)"""
    cfg = getattr(model_or_config, "config", model_or_config)
    recorded = getattr(cfg, "pruned_heads", None) or {}
    return {int(layer): sorted(int(h) for h in heads) for layer, heads in recorded.items() if heads}


def kept_heads(model: nn.Module) -> list[list[int]]:
    """For each layer, the (original) numbers of the heads it still has, in their order in the
    weights: [[0, 1, 2, 3], [0, 3], ...]."""
    n_heads = _config(model).num_attention_heads  # the unpruned count: the config keeps it
    pruned = pruned_heads_of(model)
    return [[h for h in range(n_heads) if h not in pruned.get(i, [])]
            for i in range(len(encoder_layers(model)))]


def heads_per_layer(model: nn.Module) -> list[int]:
    """How many attention heads each encoder layer has now (read from the weights)."""
    return [lay.attention.self.query.out_features // lay.attention.self.attention_head_size
            for lay in encoder_layers(model)]


# --------------------------------------------------------------------------- fewer layers


def keep_layers(model: nn.Module, layers: Sequence[int], inplace: bool = False) -> nn.Module:
    """The model with only the encoder layers numbered `layers` (in that order), the embeddings and
    the head unchanged; a deep copy unless inplace=True. config.num_hidden_layers is updated (and
    config.pruned_heads renumbered), so it saves and reloads with save_pretrained/from_pretrained.

    DistilBERT initialised its 6-layer student from every other layer of BERT-base
    (keep_layers(bert, [0, 2, 4, 6, 8, 10])); `keep_first_layers` keeps the first k.
    """
    n = len(encoder_layers(model))
    layers = [int(i) for i in layers]
    if not layers or any(not 0 <= i < n for i in layers) or len(set(layers)) != len(layers):
        raise ValueError(f"layers={layers}: choose at least one distinct layer among 0..{n - 1}.")
    out = model if inplace else copy.deepcopy(model)
    old = encoder_layers(out)
    kept = nn.ModuleList([old[i] for i in layers])
    for new_i, lay in enumerate(kept):
        for m in lay.modules():  # the layer's number, used by key/value caches (a decoder's)
            if hasattr(m, "layer_idx"):
                m.layer_idx = new_i
    out.base_model.encoder.layer = kept
    cfg = _config(out)
    cfg.num_hidden_layers = len(layers)
    pruned = pruned_heads_of(cfg)
    if pruned:
        cfg.pruned_heads = {new_i: pruned[i] for new_i, i in enumerate(layers) if i in pruned}
    return out


def keep_first_layers(model: nn.Module, k: int, inplace: bool = False) -> nn.Module:
    """The model with its first `k` encoder layers only (a deep copy unless inplace=True): the
    output is what the full model would pass from layer k to layer k+1, fed to the same head."""
    n = len(encoder_layers(model))
    if not 1 <= k <= n:
        raise ValueError(f"k={k}: the model has {n} layers; keep between 1 and {n}.")
    return keep_layers(model, range(k), inplace=inplace)


# --------------------------------------------------------------------------- head gates


@contextmanager
def head_gates(model: nn.Module, gates: Sequence[torch.Tensor] | None = None) -> Iterator[list[torch.Tensor]]:
    """Within the block, multiply each attention head's output by a gate; yields the gates.

    `gates[i]` has one entry per head that layer i has now (`heads_per_layer`); by default every
    gate is 1.0 and requires grad, so `torch.autograd.grad(loss, gates)` gives dL/dgate per head.
    A gate of 0 silences a head, which is what removing it does (tests/test_compress.py checks).

    Where the gate goes: a BERT layer's attention concatenates the heads' outputs into
    (B, T, n_heads * d_head) and feeds that to `attention.output.dense`. A forward pre-hook on that
    linear layer rescales each head's slice before the projection mixes them. The hooks are
    removed when the block ends, even on an error.
    """
    layers = encoder_layers(model)
    counts = heads_per_layer(model)
    param = next(model.parameters())
    if gates is None:  # float32 at least (a bf16 model's gradients would be coarse), float64 for float64
        dtype = torch.promote_types(param.dtype, torch.float32)
        gates = [torch.ones(n, device=param.device, dtype=dtype, requires_grad=True) for n in counts]
    gates = list(gates)
    if [g.shape for g in gates] != [torch.Size([n]) for n in counts]:
        raise ValueError(f"gates have shapes {[tuple(g.shape) for g in gates]}; the layers have "
                         f"{counts} heads: give one 1-D tensor per layer with one entry per head.")

    def make_hook(gate: torch.Tensor, n_heads: int) -> Callable[..., tuple[Any, ...]]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            x = args[0]                                           # (B, T, n_heads * d_head)
            heads = x.view(*x.shape[:-1], n_heads, -1)            # (B, T, n_heads, d_head)
            gated = heads * gate.to(x.dtype)[:, None]             # each head times its gate
            return (gated.view(x.shape), *args[1:])               # (B, T, n_heads * d_head)
        return hook

    handles = [lay.attention.output.dense.register_forward_pre_hook(make_hook(g, n))
               for lay, g, n in zip(layers, gates, counts)]
    try:
        yield gates
    finally:
        for h in handles:
            h.remove()


def _batch_loss(model: nn.Module, batch: Mapping[str, Any], loss_fn: LossFn | None) -> torch.Tensor:
    out = loss_fn(model, batch) if loss_fn is not None else model(**batch)
    if isinstance(out, tuple):  # (loss, logits), as the Trainer's loss_fn may return
        out = out[0]
    return get_loss(out)


def head_importance(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    *,
    loss_fn: LossFn | None = None,
    normalize: bool = False,
) -> torch.Tensor:
    """Importance of every attention head (Michel et al. 2019): (n_layers, n_heads) in float64.

    Entry [i, h] is |dL/d gate_ih| summed over `batches`, the gate of head h of layer i held at 1
    (`head_gates`), L each batch's loss (the model's own loss for the batch's labels, or
    `loss_fn(model, batch)`). It is the first-order estimate of how much the loss would change if
    the head were removed: L(gate=0) ~ L(gate=1) - dL/dgate. Heads are numbered as in the unpruned
    model; heads already pruned get NaN. As in transformers' bertology example, the absolute value
    is taken per batch (the paper takes it per example: the same for batches of one).

    normalize=True divides each layer's scores by their L2 norm, which the paper found makes
    importances comparable across layers when pruning globally.

    The model runs in eval mode (no dropout: the scores are repeatable) and goes back to its mode;
    only the gates get gradients (the parameters' .grad are left untouched).
    """
    layers = encoder_layers(model)
    kept = kept_heads(model)
    scores = torch.full((len(layers), _config(model).num_attention_heads), math.nan, dtype=torch.float64)
    for i, heads in enumerate(kept):
        scores[i, heads] = 0.0
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with head_gates(model) as gates:
            for batch in batches:
                loss = _batch_loss(model, to_device(batch, device), loss_fn)
                grads = torch.autograd.grad(loss, gates)  # one (n_heads_i,) tensor per layer
                for i, g in enumerate(grads):
                    scores[i, kept[i]] += g.detach().abs().double().cpu()
    finally:
        model.train(was_training)
    if normalize:
        norms = scores.nan_to_num(0.0).norm(dim=1, keepdim=True)  # (n_layers, 1)
        scores = scores / norms.clamp_min(1e-20)
    return scores


# --------------------------------------------------------------------------- pruning heads


def _slice_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> None:
    """Keep the output rows (dim=0) or input columns (dim=1) of `linear` listed in `index`."""
    weight = linear.weight.detach().index_select(dim, index.to(linear.weight.device)).clone()
    linear.weight = nn.Parameter(weight, requires_grad=linear.weight.requires_grad)
    if dim == 0:
        if linear.bias is not None:  # each output row has its bias; an input column has none
            bias = linear.bias.detach().index_select(0, index.to(linear.bias.device)).clone()
            linear.bias = nn.Parameter(bias, requires_grad=linear.bias.requires_grad)
        linear.out_features = weight.shape[0]
    else:
        linear.in_features = weight.shape[1]


def prune_heads(model: nn.Module, heads_by_layer: Mapping[int, Iterable[int]]) -> nn.Module:
    """Remove attention heads for real, IN PLACE: {layer: [head, ...]}, heads numbered as in the
    unpruned model (heads already gone are skipped). Returns the model.

    Head h of a layer owns rows h*d_head .. (h+1)*d_head - 1 of the query, key and value weights
    (and those entries of their biases) and the same columns of `attention.output.dense`; those
    are cut out. transformers 5.25's `BertSelfAttention.forward` reshapes with -1 heads and
    `attention_head_size`, so the smaller weights just work; `num_attention_heads` and
    `all_head_size` are updated too, to say the truth. What was removed is recorded in
    config.pruned_heads for `load_pruned` (the module docstring says why). Every layer keeps at
    least one head. Build the optimizer after pruning: the pruned weights are new Parameters.
    """
    layers = encoder_layers(model)
    cfg = _config(model)
    n_heads = cfg.num_attention_heads
    pruned = pruned_heads_of(cfg)
    kept = kept_heads(model)
    if [len(k) for k in kept] != heads_per_layer(model):
        raise ValueError(f"The weights have {heads_per_layer(model)} heads per layer but "
                         f"config.pruned_heads ({pruned}) accounts for {[len(k) for k in kept]}: the "
                         "model was pruned by other means; prune it with compress.prune_heads only.")
    for layer, heads in heads_by_layer.items():
        layer = int(layer)
        heads = {int(h) for h in heads}
        if not 0 <= layer < len(layers):
            raise ValueError(f"Layer {layer}: the model has layers 0..{len(layers) - 1}.")
        if any(not 0 <= h < n_heads for h in heads):
            raise ValueError(f"Heads {sorted(heads)} of layer {layer}: heads are numbered 0..{n_heads - 1}.")
        remove = heads - set(pruned.get(layer, []))
        if not remove:
            continue
        stay = [h for h in kept[layer] if h not in remove]
        if not stay:
            raise ValueError(f"Pruning heads {sorted(heads)} would leave layer {layer} with no head; "
                             "keep at least one (or drop the layer with keep_layers).")
        attn = layers[layer].attention
        d = attn.self.attention_head_size
        positions = [kept[layer].index(h) for h in stay]  # where the kept heads sit in the weights now
        index = torch.tensor([p * d + j for p in positions for j in range(d)], dtype=torch.long)
        for lin in (attn.self.query, attn.self.key, attn.self.value):
            _slice_linear(lin, index, dim=0)  # (n_kept * d_head, d_model)
        _slice_linear(attn.output.dense, index, dim=1)  # (d_model, n_kept * d_head)
        attn.self.num_attention_heads = len(stay)
        attn.self.all_head_size = len(stay) * d
        pruned[layer] = sorted(set(pruned.get(layer, [])) | remove)
        kept[layer] = stay
    cfg.pruned_heads = {layer: heads for layer, heads in sorted(pruned.items())}
    return model


def least_important_heads(importance: torch.Tensor, n: int) -> dict[int, list[int]]:
    """The `n` heads with the lowest scores in `importance` (n_layers, n_heads), NaN (already
    pruned) skipped, never the last head of a layer: {layer: [head, ...]}. Ties go to the lower
    layer, then the lower head. Asking for more heads than can go (all but one per layer) raises."""
    alive = ~importance.isnan()
    removable = int(alive.sum()) - int(alive.any(dim=1).sum())
    if not 0 <= n <= removable:
        raise ValueError(f"Cannot prune {n} heads: {removable} can go while every layer keeps one.")
    left = alive.sum(dim=1).tolist()  # heads each layer still has
    order = sorted((float(importance[i, h]), i, h) for i, h in alive.nonzero().tolist())
    chosen: dict[int, list[int]] = {}
    for _, i, h in order:
        if sum(len(v) for v in chosen.values()) == n:
            break
        if left[i] > 1:  # the layer's last head stays
            chosen.setdefault(i, []).append(h)
            left[i] -= 1
    return {i: sorted(v) for i, v in sorted(chosen.items())}


def prune_by_importance(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]] | None,
    fraction: float,
    *,
    importance: torch.Tensor | None = None,
    loss_fn: LossFn | None = None,
    normalize: bool = False,
) -> dict[int, list[int]]:
    """Prune `fraction` of the heads the model has now (rounded), the least important first, every
    layer keeping at least one, IN PLACE; returns {layer: [heads removed]}.

    Importance is `head_importance(model, batches, loss_fn=..., normalize=...)`, or `importance`
    when given (then `batches` may be None). Michel et al. prune iteratively (a few heads, then
    re-score); call this repeatedly with small fractions for that.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction={fraction}: prune a share of the heads in [0, 1).")
    if importance is None:
        if batches is None:
            raise ValueError("Give batches to score the heads on, or importance=.")
        importance = head_importance(model, batches, loss_fn=loss_fn, normalize=normalize)
    n = round(fraction * sum(heads_per_layer(model)))
    chosen = least_important_heads(importance, n)
    prune_heads(model, chosen)
    return chosen


def load_pruned(folder: str | Path, model_class: Any = None, **config_overrides: Any) -> nn.Module:
    """Load a model saved with `save_pretrained` after `prune_heads` (or a plain one), in eval mode.

    The model is built from config.json with every head (`model_class.from_config`; default
    AutoModelForTokenClassification), the heads in config.pruned_heads are removed with
    `prune_heads`, and then the safetensors weights are loaded with every name and shape checked
    (load_state_dict(strict=True)). `from_pretrained` cannot do this in transformers 5: it builds
    every head and refuses weights of other shapes. Only safetensors files are read (tensors only:
    loading runs no code).
    """
    import safetensors.torch
    from transformers import AutoConfig, AutoModelForTokenClassification

    path = Path(folder).expanduser()
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"No .safetensors weights in {path}: save the model with "
                                "model.save_pretrained(folder).")
    cfg = AutoConfig.from_pretrained(str(path), **config_overrides)
    record = pruned_heads_of(cfg)
    cfg.pruned_heads = {}  # prune_heads records them again as it removes them
    model = (model_class or AutoModelForTokenClassification).from_config(cfg)
    prune_heads(model, record)
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(safetensors.torch.load_file(str(f)))
    model.load_state_dict(state, strict=True)
    return model.eval()


# --------------------------------------------------------------------------- distillation


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 2.0,
    alpha: float = 0.5,
) -> torch.Tensor:
    """Knowledge-distillation loss per labelled token (Hinton et al. 2015):

        alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, labels)

    both averaged over the tokens whose label is not IGNORE_INDEX (-100): padding, special tokens
    and later subwords count in neither term, as in the course's NER loss. Logits (B, T, C) or
    (N, C), labels (B, T) or (N,).

    Why T^2: the soft targets' gradient with respect to the student's logits is
    (softmax(s/T) - softmax(t/T)) / T, which shrinks like 1/T^2 for large T; the factor keeps the
    two terms' shares fixed when T changes. The teacher's logits are detached: gradients reach the
    student only. alpha=0 is plain cross-entropy on the hard labels; alpha=1 only imitates. With
    no labelled token the loss is NaN (a mean over nothing), as cross-entropy's is.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ: the two models must share the labels.")
    if labels.shape != student_logits.shape[:-1]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match logits {tuple(student_logits.shape)}.")
    if temperature <= 0 or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"temperature={temperature} must be > 0 and alpha={alpha} in [0, 1].")
    n_classes = student_logits.shape[-1]
    dtype = torch.promote_types(student_logits.dtype, torch.float32)  # bf16 logits: the loss in float32
    keep = labels.reshape(-1) != IGNORE_INDEX                                   # (B*T,)
    student = student_logits.reshape(-1, n_classes)[keep].to(dtype)           # (N, C)
    teacher = teacher_logits.detach().reshape(-1, n_classes)[keep].to(dtype)  # (N, C)
    hard = F.cross_entropy(student, labels.reshape(-1)[keep])            # mean over the N tokens
    log_p_student = F.log_softmax(student / temperature, dim=-1)         # (N, C)
    log_p_teacher = F.log_softmax(teacher / temperature, dim=-1)         # (N, C)
    # KL(p_t || p_s) = sum_c p_t (log p_t - log p_s), per token, then the mean over tokens
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="sum") / keep.sum()
    return alpha * temperature**2 * kl + (1 - alpha) * hard


class DistillationModel(nn.Module):
    """A student and its teacher as one model whose loss is `distillation_loss`: give it to the
    course Trainer (or `fine_tune_ner`) in place of the student, and the student learns from the
    teacher with the course's loop unchanged.

    forward(**batch): in training mode with labels, the teacher runs in eval mode (no dropout:
    its targets are not noisy) under no_grad, and the loss is
    distillation_loss(student, teacher, labels, temperature, alpha); the logits are the student's.
    In eval mode, or without labels, only the student runs and its own output comes back (its
    cross-entropy as the loss), so dev losses compare with a student trained on hard labels.

    The teacher is deliberately NOT a registered submodule: `parameters()` and `state_dict()` are
    the student's alone, so an optimizer built from this model trains only the student, a saved
    or restored state holds only the student, and the teacher is never modified (not even its
    requires_grad flags). `.to(device)` and the like move it along (`_apply`).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, temperature: float = 2.0,
                 alpha: float = 0.5) -> None:
        super().__init__()
        if {id(p) for p in student.parameters()} & {id(p) for p in teacher.parameters()}:
            raise ValueError("The student shares parameters with the teacher: give it a copy "
                             "(keep_first_layers copies unless inplace=True).")
        self.student = student
        self._teacher = (teacher,)  # a tuple hides it from nn.Module's registry (see above)
        self.temperature, self.alpha = temperature, alpha

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> DistillationModel:
        super()._apply(fn, recurse)
        self.teacher._apply(fn, recurse)  # .to(device), .float(), ... reach the teacher too
        return self

    @torch.no_grad()
    def teacher_logits(self, **inputs: Any) -> torch.Tensor:
        """The teacher's logits for a batch, computed in eval mode (its mode is put back)."""
        was_training = self.teacher.training
        self.teacher.eval()
        try:
            return get_logits(self.teacher(**inputs))
        finally:
            self.teacher.train(was_training)

    def forward(self, labels: torch.Tensor | None = None, **inputs: Any) -> Any:
        if labels is None or not self.training:
            return self.student(**inputs) if labels is None else self.student(**inputs, labels=labels)
        out = self.student(**inputs)
        loss = distillation_loss(get_logits(out), self.teacher_logits(**inputs), labels,
                                 self.temperature, self.alpha)
        out["loss"] = loss  # a ModelOutput: sets the key and the attribute
        return out


def distill_ner(
    teacher: nn.Module,
    student: nn.Module,
    tokenizer: Any,
    train: Any,
    dev: Any,
    labels: Sequence[str],
    *,
    temperature: float = 2.0,
    alpha: float = 0.5,
    **fine_tune_kwargs: Any,
) -> NerRun:
    """Train `student` on NER data from `teacher`'s predictions and the gold tags: `fine_tune_ner`'s
    recipe (its data encoding, batching, schedule, evaluation and early stopping on dev F1; pass
    its keyword arguments through) with `DistillationModel`'s loss. Returns the NerRun, its
    `model` the student (trained in place) and its `dev` the student's scores.

    Teacher and student must share the tokenizer and the label list. The teacher is left as it
    was (it runs in eval mode under no_grad; fine_tune_ner moves it to the device with the
    student). A student from `keep_first_layers(teacher, k)` starts from the teacher's own layers
    (DistilBERT's trick), usually far ahead of a fresh one. Each training step runs the teacher
    once more (forward only): about a third of a step's cost for a teacher as big as the student.
    """
    from lmcourse.ner import fine_tune_ner

    for name, m in (("teacher", teacher), ("student", student)):
        n_out = getattr(getattr(m, "config", None), "num_labels", len(labels))
        if n_out != len(labels):
            raise ValueError(f"The {name} has {n_out} labels but `labels` has {len(labels)}.")
    wrapped = DistillationModel(student, teacher, temperature, alpha)
    run = fine_tune_ner(wrapped, tokenizer, train, dev, labels, **fine_tune_kwargs)
    return replace(run, model=student)
