"""The course's generic training loop: any model that returns a loss (the course's own or a
`transformers` model, unchanged), AdamW with warmup and a schedule, gradient accumulation and
clipping, mixed precision, evaluation with early stopping, a loss history with a plot, and atomic
checkpoints that resume a run exactly.

Model code lives elsewhere (`lmcourse.transformer`, ...); this module knows nothing about models
beyond "call it on a batch, get a loss", as minGPT keeps `trainer.py` apart from `model.py`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import random
import re
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm.auto import tqdm

from lmcourse import config, distributed
from lmcourse.batching import batch_size_of, epoch_order, labelled_count, to_device
from lmcourse.checkpoints import (
    STEP_PREFIX,
    atomic_save_dir,
    is_step_folder,
    latest_checkpoint,
    list_checkpoints,
    remove_stale_temps,
    step_folder,
)

SCHEDULES = ("constant", "linear", "cosine")
# How evaluation averages the loss over the eval set (TrainConfig.eval_loss_per):
#   token       per labelled token (labels != -100): MLM, token classification (NER)
#   next_token  per labelled token after the first of each row: models that shift labels inside
#               (transformers' causal LMs given labels=input_ids)
#   example     per example: sequence classification, or any loss without token labels
#   auto        token-level labels (2-D or more) -> next_token for a transformers causal LM called
#               without loss_fn, else token; anything else -> example
EVAL_LOSS_UNITS = ("auto", "token", "next_token", "example")
# How one optimizer step weights its micro-batches (TrainConfig.train_loss_per): the units above,
# each micro-batch's mean loss weighted by what it averages over, so the step's loss (and gradient)
# is that of the whole accumulated batch of every process; or
#   micro_batch  every micro-batch's mean counts the same (exact only when they hold equal counts)
TRAIN_LOSS_UNITS = (*EVAL_LOSS_UNITS, "micro_batch")
WEIGHTS_FILE = "model.safetensors"   # the model's parameters and buffers (safetensors)
STATE_FILE = "trainer_state.pt"      # optimizer, scheduler, scaler, RNG, step, data position
INFO_FILE = "trainer_config.json"    # the TrainConfig, for people reading the folder

Batch = Any  # a dict of tensors passed as model(**batch); anything a custom loss_fn accepts
LossFn = Callable[[nn.Module, Batch], Any]  # (model, batch) -> loss, or (loss, logits)
MetricsFn = Callable[[list[Any], list[Batch]], Mapping[str, float]]  # (logits, batches) -> metrics
Callback = Callable[["Trainer", dict[str, Any]], None]  # called after every optimizer step


# --------------------------------------------------------------------------- config and state


@dataclass
class TrainConfig:
    """Everything the training loop needs to know; every field has a working default."""

    max_steps: int = 100           # optimizer steps in the whole run (the schedule spans them)
    epochs: float | None = None    # if set (map-style data only), max_steps = epochs x steps per epoch
    batch_size: int = 16           # examples per micro-batch (per process under torchrun: the
    #                                global batch is batch_size x grad_accum_steps x processes)
    grad_accum_steps: int = 1      # micro-batches whose gradients add up to one optimizer step
    #                                (fewer in the last step of an epoch when the epoch runs out)
    train_loss_per: str = "auto"   # how a step weights its micro-batches' losses: token |
    #                                next_token | example | auto (as eval_loss_per) | micro_batch
    #                                (see TRAIN_LOSS_UNITS); anything but micro_batch makes the step
    #                                exactly one step on the whole accumulated batch
    gradient_checkpointing: bool = False  # recompute each block's activations in the backward
    #                                pass instead of keeping them (lm.transformer.set_gradient_
    #                                checkpointing): less memory, one more forward pass of time
    find_unused_parameters: bool = False  # under torchrun: DistributedDataParallel's option, for
    #                                models whose forward leaves some parameters out
    eval_batch_size: int | None = None  # examples per evaluation batch; None: batch_size
    lr: float = 3e-4               # peak learning rate, reached at the end of warmup
    weight_decay: float = 0.01     # AdamW's decoupled decay; never on biases and norm weights
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW's moment decay rates
    adam_eps: float = 1e-8         # AdamW's epsilon in the denominator
    fused: bool | None = None      # fused AdamW kernel; None: where torch has one (CPU, CUDA)
    max_grad_norm: float | None = 1.0  # clip the global gradient norm to this; None: no clipping
    schedule: str = "linear"       # learning rate after warmup: constant | linear | cosine (to 0)
    warmup_steps: int = 0          # steps of linear warmup from 0 to lr
    mixed_precision: bool | None = None  # None: autocast on GPUs (bf16, else fp16 + scaler),
    #                                      off on CPU; True: also on CPU (bf16); False: off
    eval_every: int | None = None  # evaluate every this many steps (and at the end); None: never
    max_eval_batches: int | None = None  # evaluate on at most this many batches; None: all
    eval_loss_per: str = "auto"    # what eval_loss averages over: token | next_token | example
    #                                | auto (see EVAL_LOSS_UNITS); the result equals the loss of the
    #                                whole eval set taken as one batch, whatever the batching
    early_stopping_metric: str | None = None  # e.g. "eval_loss" or "eval_accuracy"; None: off
    early_stopping_mode: str = "min"  # "min": lower is better; "max": higher is better
    early_stopping_patience: int = 3  # stop after this many evaluations without improvement
    early_stopping_min_delta: float = 0.0  # an improvement must beat the best by more than this
    restore_best: bool = False     # at the end, load the weights of the best evaluation (in memory)
    checkpoint_dir: str | None = None  # folder for checkpoints (step-00000100/ ...); None: none
    save_every: int | None = None  # save a checkpoint every this many steps (and at the end)
    keep_last: int | None = 2      # keep only the newest K checkpoints; None: keep all
    shuffle: bool = True           # shuffle map-style data each epoch (seeded from seed, epoch)
    drop_last: bool = True         # drop the last incomplete batch of an epoch
    num_workers: int = 0           # DataLoader worker processes
    seed: int = config.DEFAULT_SEED  # seeds the data order; the loop seeds nothing else itself
    progress: bool = True          # tqdm.auto progress bars for training and evaluation
    log_every: int = 1             # refresh the progress bar's loss every this many steps

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise config.ConfigError(f"schedule={self.schedule!r}; choose one of {SCHEDULES}.")
        if self.early_stopping_mode not in ("min", "max"):
            raise config.ConfigError(
                f"early_stopping_mode={self.early_stopping_mode!r}; use 'min' or 'max'.")
        if self.grad_accum_steps < 1 or self.batch_size < 1:
            raise config.ConfigError("batch_size and grad_accum_steps must be at least 1.")
        if self.early_stopping_metric and not self.eval_every:
            raise config.ConfigError("Early stopping needs evaluations: set eval_every.")
        if self.eval_loss_per not in EVAL_LOSS_UNITS:
            raise config.ConfigError(f"eval_loss_per={self.eval_loss_per!r}; choose one of "
                                     f"{EVAL_LOSS_UNITS}.")
        if self.train_loss_per not in TRAIN_LOSS_UNITS:
            raise config.ConfigError(f"train_loss_per={self.train_loss_per!r}; choose one of "
                                     f"{TRAIN_LOSS_UNITS}.")
        for name in ("eval_every", "save_every", "log_every", "max_eval_batches"):
            value = getattr(self, name)
            if value is not None and value < 1:
                fix = "1 (every step)" if name == "log_every" else "None (never)"
                raise config.ConfigError(f"{name}={value}: it counts steps or batches, so it must "
                                         f"be at least 1; use {fix}.")


@dataclass
class TrainState:
    """Where a run is: what a checkpoint stores besides the weights and the optimizer."""

    step: int = 0                  # optimizer steps done
    epoch: int = 0                 # current pass over the training data (from 0)
    batch_in_epoch: int = 0        # micro-batches of this epoch already used
    best_metric: float | None = None  # best early-stopping metric seen so far
    best_step: int | None = None   # the step at which it was seen
    bad_evals: int = 0             # evaluations in a row without improvement
    stopped_early: bool = False    # True once early stopping ended the run


@dataclass
class History:
    """What happened during training: one record per optimizer step, one per evaluation."""

    train: list[dict[str, float]] = field(default_factory=list)  # step, epoch, loss, lr, grad_norm
    eval: list[dict[str, float]] = field(default_factory=list)   # step, eval_loss, eval_<metric>

    def to_dict(self) -> dict[str, list[dict[str, float]]]:
        """Plain lists of dicts (JSON-friendly)."""
        return {"train": [dict(r) for r in self.train], "eval": [dict(r) for r in self.eval]}

    @classmethod
    def from_dict(cls, d: Mapping[str, list[dict[str, float]]]) -> History:
        """The inverse of `to_dict`."""
        return cls(train=[dict(r) for r in d["train"]], eval=[dict(r) for r in d["eval"]])

    def plot(self, **kwargs: Any) -> Any:
        """The loss curves and the learning rate (see `plot_history`)."""
        return plot_history(self, **kwargs)


# --------------------------------------------------------------------------- schedules


def lr_factor(step: int, total_steps: int, warmup_steps: int = 0, schedule: str = "linear",
              num_cycles: float = 0.5) -> float:
    """The multiplier of the peak learning rate at `step`: linear warmup, then constant, linear
    decay to 0 or cosine decay to 0 (the formulas of transformers' get_*_schedule_with_warmup)."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    if schedule == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * num_cycles * 2.0 * progress)))
    raise config.ConfigError(f"schedule={schedule!r}; choose one of {SCHEDULES}.")


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                   schedule: str = "linear") -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR that follows `lr_factor`; call .step() once per optimizer step."""
    def f(step: int) -> float:
        return lr_factor(step, total_steps, warmup_steps, schedule)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, f)


# --------------------------------------------------------------------------- optimizer


def _is_norm(module: nn.Module) -> bool:
    # nn.LayerNorm, lmcourse.transformer.LayerNorm, RMSNorm, ...: their gains must not decay
    return isinstance(module, nn.modules.normalization.LayerNorm) or "norm" in type(module).__name__.lower()


_NO_DECAY_NAMES = [re.compile(p) for p in
                   (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")]


def decay_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters that get weight decay: all but biases and norm-layer weights
    (transformers' rule: by layer type and by name)."""
    no_decay: set[str] = set()
    for mname, module in model.named_modules():
        for pname, _ in module.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            if _is_norm(module) or any(p.search(full.lower()) for p in _NO_DECAY_NAMES):
                no_decay.add(full)
    return [n for n, _ in model.named_parameters() if n not in no_decay]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two optimizer groups: decayed weights, and biases/norm weights without decay."""
    decay = set(decay_parameter_names(model))
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in params if n in decay], "weight_decay": weight_decay},
        {"params": [p for n, p in params if n not in decay], "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with the course's parameter groups."""
    fused = cfg.fused
    if fused is None:  # torch's fused AdamW runs on CPU and CUDA; transformers.Trainer uses it too
        fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas,
                             eps=cfg.adam_eps, fused=fused)


# --------------------------------------------------------------------------- batches and losses


def get_loss(out: Any) -> torch.Tensor:
    """The loss in a model's output: `out.loss` (ModelOutput), `out["loss"]`, or a scalar tensor."""
    if isinstance(out, torch.Tensor):
        if out.ndim == 0:
            return out
        raise TypeError(f"The model returned a tensor of shape {tuple(out.shape)}, not a scalar "
                        "loss; pass loss_fn=lambda model, batch: ... to compute the loss.")
    loss = getattr(out, "loss", None)
    if loss is None and isinstance(out, Mapping):
        loss = out.get("loss")
    if loss is None:
        raise TypeError(f"Found no loss in the model's output ({type(out).__name__}): give the batch "
                        "labels so the model computes one, or pass loss_fn=....")
    return loss


def get_logits(out: Any) -> torch.Tensor | None:
    """The logits in a model's output (`out.logits`, `out["logits"]`, a non-scalar tensor), or None."""
    if isinstance(out, torch.Tensor):
        return out if out.ndim > 0 else None
    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, Mapping):
        logits = out.get("logits")
    return logits


def _is_map_style(data: Any) -> bool:
    return isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__"))


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [x.tolist() if isinstance(x, np.ndarray) else x for x in np.random.get_state()],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = list(state["numpy"])
    npst[1] = np.asarray(npst[1], dtype=np.uint32)
    np.random.set_state(tuple(npst))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- the trainer


class Trainer:
    """Train `model` on `train_data` with the settings of a `TrainConfig`.

    `train_data` is a map-style dataset (anything with __len__ and __getitem__; batched with
    `collate_fn`, default torch's default_collate, and shuffled each epoch with a generator seeded
    from (cfg.seed, epoch)), or a factory `epoch -> iterable of batches`. Either way the trainer
    knows the position inside the epoch, so a checkpoint resumes exactly where the run was.
    A batch is a dict passed as `model(**batch)`; the loss is read with `get_loss`, unless
    `loss_fn(model, batch)` is given (it returns the loss, or a tuple (loss, logits)).

    Under `torchrun` the same code trains data-parallel: the trainer joins the process group
    (`lm.distributed.init`: each process on its own GPU with NCCL, or on the CPU with Gloo), wraps
    the model in DistributedDataParallel (`ddp_model`; `model` stays the plain module, and a
    `loss_fn` gets the wrapped one during training), gives each process its share of every batch,
    reduces evaluation over the processes, and leaves progress bars and checkpoint files to rank 0.
    Callbacks run on every process; one that prints or writes checks
    `lm.distributed.is_main_process()`.
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig | None = None,
        train_data: Any = None,
        eval_data: Any = None,
        *,
        collate_fn: Callable[[list[Any]], Batch] | None = None,
        loss_fn: LossFn | None = None,
        metrics_fn: MetricsFn | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        device: str | torch.device | None = None,
        callbacks: Iterable[Callback] = (),
        preprocess_logits: Callable[[torch.Tensor, Batch], torch.Tensor] | None = None,
    ) -> None:
        self.cfg = cfg if cfg is not None else TrainConfig()
        # joins torchrun's process group if there is one; the device is then this process's own
        self.device = distributed.init(device)
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.is_main = self.rank == 0  # logs, shows progress and writes checkpoints
        if self.cfg.gradient_checkpointing:
            from lmcourse.transformer import set_gradient_checkpointing

            set_gradient_checkpointing(model, True)
        self.model = model.to(self.device)
        self.train_data = train_data
        self.eval_data = eval_data
        self.collate_fn = collate_fn or default_collate
        self.loss_fn = loss_fn
        self.metrics_fn = metrics_fn
        self.callbacks = list(callbacks)
        # applied to each eval batch's logits on the device before they are kept for metrics_fn
        # (like transformers' preprocess_logits_for_metrics): argmax keeps (B, T) ids instead of
        # (B, T, V) floats, which for a language model's vocabulary is the difference between
        # megabytes and gigabytes
        self.preprocess_logits = preprocess_logits
        self.total_steps = self._total_steps()
        self.optimizer = optimizer if optimizer is not None else make_optimizer(model, self.cfg, self.device)
        self.scheduler = make_scheduler(self.optimizer, self.total_steps, self.cfg.warmup_steps,
                                        self.cfg.schedule)
        self.amp_dtype = config.autocast_dtype(self.device, self.cfg.mixed_precision)
        self.scaler = (torch.amp.GradScaler(self.device.type)
                       if config.needs_grad_scaler(self.device, self.amp_dtype) else None)
        self.state = TrainState()
        self.history = History()
        self._best_weights: dict[str, torch.Tensor] | None = None
        self._batches: Iterator[Batch] | None = None
        self.last_eval_loss_unit: str | None = None  # what the last evaluate() averaged over
        self.last_train_loss_unit: str | None = None  # what the last step's loss averaged over
        self.checkpoints_written: list[Path] = []  # folders this process wrote (rank 0's only)
        # one process group, every process holding a replica: DDP averages the gradients in the
        # backward pass (and starts all replicas from rank 0's weights)
        self.ddp_model: nn.Module | None = None
        if distributed.is_initialized():
            from torch.nn.parallel import DistributedDataParallel

            index = self.device.index  # a GPU's number; None on a CPU
            self.ddp_model = DistributedDataParallel(
                self.model, device_ids=[index] if index is not None else None,
                find_unused_parameters=self.cfg.find_unused_parameters)

    # ----------------------------------------------------------------- data

    def _total_steps(self) -> int:
        cfg = self.cfg
        if cfg.epochs is None:
            return cfg.max_steps
        if not _is_map_style(self.train_data):
            raise config.ConfigError("epochs= needs map-style train_data (with a length); "
                                     "set max_steps instead.")
        per_epoch = len(self.epoch_indices(0))  # this process's micro-batches in an epoch
        steps_per_epoch = math.ceil(per_epoch / cfg.grad_accum_steps)  # the last may be short
        return max(1, math.ceil(cfg.epochs * steps_per_epoch))

    def _loader(self, data: Any, batches: list[list[int]]) -> DataLoader:
        # our own generator: a DataLoader draws a seed from it when iterated, and drawing from the
        # global one would shift dropout's random numbers between a straight and a resumed run
        return DataLoader(data, batch_sampler=batches, collate_fn=self.collate_fn,
                          num_workers=self.cfg.num_workers, generator=torch.Generator(),
                          pin_memory=self.device.type == "cuda")

    def epoch_indices(self, epoch: int) -> list[list[int]]:
        """The example indices of this process's micro-batches in `epoch` (map-style data).

        The epoch's order (seeded by cfg.seed and epoch) is cut into global batches of
        batch_size x processes; each process takes its share of each (`lm.distributed.
        shard_batches`). On one process: the order cut into batches of batch_size.
        """
        cfg = self.cfg
        order = epoch_order(len(self.train_data), cfg.seed, epoch, cfg.shuffle)
        return distributed.shard_batches(order, cfg.batch_size, cfg.drop_last,
                                         self.rank, self.world_size)

    def epoch_batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """This process's training batches of `epoch`, from micro-batch number `start` on."""
        data = self.train_data
        if data is None:
            raise config.ConfigError("Trainer has no train_data.")
        if not _is_map_style(data):  # a factory: epoch -> iterable of batches
            # every process reads the same stream (and draws the same random numbers making it)
            # and keeps every world_size-th batch
            mine = distributed.shard_round_robin(iter(data(epoch)), self.rank, self.world_size)
            return itertools.islice(mine, start, None)
        return iter(self._loader(data, self.epoch_indices(epoch)[start:]))

    def _next_batch(self, within_epoch: bool = False) -> Batch | None:
        """The next micro-batch; with `within_epoch`, None where the current epoch runs out."""
        for _ in range(2):  # at most one epoch boundary per micro-batch
            if self._batches is None:
                self._batches = self.epoch_batches(self.state.epoch, self.state.batch_in_epoch)
            try:
                batch = next(self._batches)
            except StopIteration:
                self._batches = None
                if self.state.batch_in_epoch == 0:
                    break
                self.state.epoch += 1
                self.state.batch_in_epoch = 0
                if within_epoch:
                    return None
                continue
            self.state.batch_in_epoch += 1
            return batch
        raise config.ConfigError(
            f"Epoch {self.state.epoch} has no batches: the training data is smaller than "
            f"batch_size={self.cfg.batch_size} x {self.world_size} process(es) "
            f"(with drop_last={self.cfg.drop_last}).")

    def next_window(self) -> list[Batch]:
        """The micro-batches of the next optimizer step: grad_accum_steps of them, fewer when the
        epoch runs out first (an accumulation window never spans two epochs, so k micro-batches
        of n examples are one batch of k x n, also at the end of an epoch)."""
        window = [self._next_batch()]
        while len(window) < self.cfg.grad_accum_steps:
            batch = self._next_batch(within_epoch=True)
            if batch is None:
                break
            window.append(batch)
        return window

    # ----------------------------------------------------------------- one step

    def autocast(self) -> contextlib.AbstractContextManager:
        """The mixed-precision context the trainer runs forward passes in."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return config.autocast(self.device, dtype=self.amp_dtype)

    def compute_loss(self, batch: Batch, model: nn.Module | None = None) -> tuple[torch.Tensor, Any]:
        """(loss, output) for one batch already on the device; `model` defaults to self.model
        (the training step passes the DistributedDataParallel wrapper under torchrun)."""
        model = self.model if model is None else model
        if self.loss_fn is not None:
            res = self.loss_fn(model, batch)
            if isinstance(res, tuple):  # (loss, logits)
                return res[0], res[1]
            if isinstance(res, torch.Tensor):
                return res, None
            return get_loss(res), res  # a ModelOutput or dict holding the loss
        if not isinstance(batch, Mapping):
            raise TypeError(f"A batch must be a dict (passed as model(**batch)), got "
                            f"{type(batch).__name__}; or pass loss_fn=....")
        out = model(**batch)
        return get_loss(out), out

    def train_loss_unit(self, batch: Batch) -> str:
        """What a training step's loss averages over for batches like `batch`: token, next_token,
        example or micro_batch (cfg.train_loss_per, "auto" resolved as for evaluation)."""
        unit = self.cfg.train_loss_per
        if unit == "auto":
            return self._resolve_auto(batch)
        return unit

    def _no_sync(self, skip: bool) -> contextlib.AbstractContextManager:
        # DDP all-reduces gradients in every backward; within an accumulation window only the
        # last micro-batch's backward needs to (the others' gradients just add up locally)
        if skip and self.ddp_model is not None:
            return self.ddp_model.no_sync()
        return contextlib.nullcontext()

    def train_step(self) -> dict[str, float]:
        """One optimizer step over the next accumulation window; returns its history record.

        The step's loss is that of the window's micro-batches on every process taken as one batch:

            L = sum_{r,i} n_ri L_ri / N,    N = sum_{r,i} n_ri

        where L_ri is the mean loss the model returns for micro-batch i of process r and n_ri
        what that mean is over (its labelled tokens for a token-level loss; its examples for a
        per-example one; see `train_loss_unit`). Dividing each micro-batch's mean by the window's
        count k instead would be exact only when every micro-batch holds the same count; with
        token labels (MLM, NER, padded causal LM) they rarely do. N is summed over the processes
        (one all-reduce of a number) before the backward passes. DDP averages the processes'
        gradients (divides their sum by W), so each process backpropagates W n_ri / N x L_ri;
        the average over processes is then exactly dL. A short window (an epoch's end) just has
        a smaller N. A micro-batch without a labelled token has weight 0 (its mean is nan).
        """
        cfg, model, opt = self.cfg, self.model, self.optimizer
        model.train()
        opt.zero_grad(set_to_none=True)  # zeroed first, so the grads stay readable after a step
        window = self.next_window()
        unit = self.train_loss_unit(window[0])
        self.last_train_loss_unit = unit
        counts = [1 if unit == "micro_batch" else self._loss_weight(b, unit) for b in window]
        total_count = distributed.all_reduce_sum(sum(counts))  # N, over every process
        forward_model = self.ddp_model if self.ddp_model is not None else model
        losses = []
        for i, (cpu_batch, n) in enumerate(zip(window, counts)):
            batch = to_device(cpu_batch, self.device)
            with self._no_sync(i < len(window) - 1):  # the forward too: DDP prepares in it
                with self.autocast():
                    loss, _ = self.compute_loss(batch, forward_model)
                loss = loss.float()
                if n == 0:
                    loss = loss.nan_to_num(0.0)  # no labelled token: nan, and a zero gradient
                scaled = loss * (n * self.world_size / total_count if total_count else 0.0)
                if self.scaler is not None:
                    self.scaler.scale(scaled).backward()
                else:
                    scaled.backward()
            losses.append(loss.detach())
        values = torch.stack(losses).tolist()  # one sync per step, not one per micro-batch
        loss_sum = distributed.all_reduce_sum(sum(n * v for n, v in zip(counts, values)))
        if self.scaler is not None:
            self.scaler.unscale_(opt)  # clip the true gradients, not the scaled ones
        params = [p for group in opt.param_groups for p in group["params"]]
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm).item()
        lr = self.scheduler.get_last_lr()[0]
        if self.scaler is not None:
            self.scaler.step(opt)
            self.scaler.update()
        else:
            opt.step()
        self.scheduler.step()
        self.state.step += 1
        record = {"step": self.state.step, "epoch": self.state.epoch,
                  "loss": loss_sum / total_count if total_count else math.nan,
                  "lr": lr, "grad_norm": grad_norm}
        self.history.train.append(record)
        return record

    # ----------------------------------------------------------------- evaluation

    def eval_batches(self, data: Any) -> Iterator[Batch]:
        """Evaluation batches in a fixed order: a dataset, an iterable of batches or a factory."""
        if _is_map_style(data):
            bs = self.cfg.eval_batch_size or self.cfg.batch_size
            n = len(data)
            return iter(self._loader(data, [list(range(i, min(i + bs, n))) for i in range(0, n, bs)]))
        if callable(data):
            return iter(data(0))
        return iter(data)

    def eval_loss_unit(self, batch: Batch) -> str:
        """What eval_loss averages over for batches like `batch`: token, next_token or example
        (cfg.eval_loss_per, with "auto" resolved as EVAL_LOSS_UNITS describes)."""
        unit = self.cfg.eval_loss_per
        return self._resolve_auto(batch) if unit == "auto" else unit

    def _resolve_auto(self, batch: Batch) -> str:
        labels = batch.get("labels") if isinstance(batch, Mapping) else None
        if not isinstance(labels, torch.Tensor) or labels.ndim < 2:
            return "example"
        name = type(self.model).__name__
        if self.loss_fn is None and name.endswith(("ForCausalLM", "LMHeadModel")):
            return "next_token"
        return "token"

    def _loss_weight(self, batch: Batch, unit: str) -> int:
        if unit == "example":
            return batch_size_of(batch) or 1
        return labelled_count(batch, shifted=unit == "next_token")

    def _my_eval_batches(self, data: Any) -> tuple[Iterator[Batch], int | None]:
        """This process's evaluation batches (every world_size-th of the first max_eval_batches)
        and how many there are, where that is known."""
        cap, r, w = self.cfg.max_eval_batches, self.rank, self.world_size
        if _is_map_style(data):  # only this process's batches are ever collated
            bs = self.cfg.eval_batch_size or self.cfg.batch_size
            n = len(data)
            mine = [list(range(i, min(i + bs, n))) for i in range(0, n, bs)][:cap][r::w]
            return iter(self._loader(data, mine)), len(mine)
        batches = itertools.islice(self.eval_batches(data), cap)
        total = None if cap is None else len(range(r, cap, w))
        return itertools.islice(batches, r, None, w), total

    @torch.no_grad()
    def evaluate(self, data: Any = None) -> dict[str, float]:
        """eval_loss and eval_<name> for every metric of metrics_fn.

        The model's loss on a batch is a mean (over its labelled tokens, or its examples); each
        batch's mean is weighted by what it averaged over, so eval_loss is the loss of the whole
        eval set taken as one batch, however it is cut into batches and padded. What it averages
        over (`eval_loss_unit`) is kept in `self.last_eval_loss_unit`.

        Under torchrun each process evaluates every world_size-th batch; the sums of losses and
        counts are added up over the processes, and metrics_fn sees every process's logits and
        batches in the one-process order, so every process gets the one-process result (every
        process must call evaluate).
        """
        data = self.eval_data if data is None else data
        if data is None:
            raise config.ConfigError("Nothing to evaluate: pass eval_data to Trainer or evaluate().")
        was_training = self.model.training
        self.model.eval()
        loss_sum, n_sum = 0.0, 0
        unit: str | None = None
        logits_all: list[Any] = []
        batches_all: list[Batch] = []
        batches, total = self._my_eval_batches(data)
        bar = tqdm(batches, total=total, desc="eval", leave=False,
                   disable=not (self.cfg.progress and self.is_main))
        for cpu_batch in bar:
            batch = to_device(cpu_batch, self.device)
            with self.autocast():
                loss, out = self.compute_loss(batch)
            unit = unit or self.eval_loss_unit(cpu_batch)
            n = self._loss_weight(cpu_batch, unit)
            if n:  # a batch without a labelled token has no loss (its mean is nan): skip it
                loss_sum += loss.float().item() * n
                n_sum += n
                bar.set_postfix(loss=f"{loss_sum / n_sum:.4f}")
            if self.metrics_fn is not None:
                logits = get_logits(out)
                if logits is None:
                    raise TypeError("metrics_fn needs logits: the model output has none; return "
                                    "(loss, logits) from loss_fn.")
                if self.preprocess_logits is not None:  # e.g. argmax: keep ids, not (B, T, V)
                    kept = self.preprocess_logits(logits.detach(), batch)
                else:
                    kept = logits.detach().float()
                logits_all.append(kept.cpu())
                batches_all.append(cpu_batch)
        if was_training:
            self.model.train()
        if self.world_size > 1:  # the whole eval set's sums, logits and batches on every process
            loss_sum, n_sum = distributed.all_reduce_sum([loss_sum, n_sum])
            shards = distributed.all_gather_objects((unit, logits_all, batches_all))
            unit = next((u for u, _, _ in shards if u is not None), None)
            logits_all = distributed.interleave([lg for _, lg, _ in shards])
            batches_all = distributed.interleave([b for _, _, b in shards])
        self.last_eval_loss_unit = unit
        result = {"eval_loss": loss_sum / n_sum if n_sum else math.nan}
        if self.metrics_fn is not None:
            for k, v in self.metrics_fn(logits_all, batches_all).items():
                result[k if k.startswith("eval_") else f"eval_{k}"] = float(v)
        return result

    def _early_stopping(self, metrics: Mapping[str, float]) -> None:
        cfg, st = self.cfg, self.state
        name = cfg.early_stopping_metric
        if not name:
            return
        key = name if name.startswith("eval_") else f"eval_{name}"
        if key not in metrics:
            raise KeyError(f"Early stopping metric {key!r} not among the evaluation's {sorted(metrics)}.")
        value = metrics[key]
        better = (st.best_metric is None
                  or (value < st.best_metric - cfg.early_stopping_min_delta if cfg.early_stopping_mode == "min"
                      else value > st.best_metric + cfg.early_stopping_min_delta))
        if better:
            st.best_metric, st.best_step, st.bad_evals = value, st.step, 0
            if cfg.restore_best:
                self._best_weights = {k: v.detach().to("cpu", copy=True)
                                      for k, v in self.model.state_dict().items()}
        else:
            st.bad_evals += 1
            if st.bad_evals >= cfg.early_stopping_patience:
                st.stopped_early = True

    # ----------------------------------------------------------------- the loop

    def train(self, steps: int | None = None) -> History:
        """Run until total_steps (or `steps` more steps, or early stopping); returns the history."""
        cfg, st = self.cfg, self.state
        end = self.total_steps if steps is None else min(self.total_steps, st.step + steps)
        bar = tqdm(total=self.total_steps, initial=st.step, desc="train",
                   disable=not (cfg.progress and self.is_main))
        try:
            while st.step < end and not st.stopped_early:
                record = self.train_step()
                bar.update(1)
                if st.step % cfg.log_every == 0 or st.step == end:
                    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
                last = st.step == self.total_steps
                if cfg.eval_every and self.eval_data is not None and (st.step % cfg.eval_every == 0 or last):
                    metrics = self.evaluate()
                    self.history.eval.append({"step": st.step, **metrics})
                    record = {**record, **metrics}
                    self._early_stopping(metrics)
                    if cfg.progress and self.is_main:
                        bar.write(f"step {st.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
                for cb in self.callbacks:
                    cb(self, record)
                if cfg.checkpoint_dir and cfg.save_every and (
                        st.step % cfg.save_every == 0 or last or st.stopped_early):
                    self.save_checkpoint()
        finally:
            bar.close()
        if (st.step >= self.total_steps or st.stopped_early) and cfg.restore_best and self._best_weights:
            self.model.load_state_dict(self._best_weights)
        return self.history

    # ----------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Everything but the weights that a resumed run needs (torch.save-able, weights_only)."""
        return {
            "state": asdict(self.state),
            "history": self.history.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": _rng_state(),
            "total_steps": self.total_steps,
            "best_weights": self._best_weights,  # None unless cfg.restore_best
        }

    def load_state_dict(self, sd: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        if sd["total_steps"] != self.total_steps:
            raise config.ConfigError(f"The checkpoint's run has {sd['total_steps']} steps, this "
                                     f"trainer {self.total_steps}: use the same TrainConfig.")
        self.state = TrainState(**sd["state"])
        self.history = History.from_dict(sd["history"])
        self.optimizer.load_state_dict(sd["optimizer"])
        self.scheduler.load_state_dict(sd["scheduler"])
        if self.scaler is not None and sd["scaler"] is not None:
            self.scaler.load_state_dict(sd["scaler"])
        self._best_weights = sd.get("best_weights")
        _set_rng_state(sd["rng"])
        self._batches = None  # rebuilt from (epoch, batch_in_epoch) on the next step

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        """Write weights (safetensors) and trainer state (torch.save) atomically; prune old ones
        (rank 0 writes; under torchrun every process must call it)."""
        if path is None:
            if not self.cfg.checkpoint_dir:
                raise config.ConfigError("No checkpoint path: pass one or set cfg.checkpoint_dir.")
            path = step_folder(self.cfg.checkpoint_dir, self.state.step)
        path = Path(path)
        info = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.cfg).items()}
        sd = self.state_dict()

        def write(tmp: Path) -> None:
            # save_model drops the duplicates of tied weights (GPT's wte and lm_head share one)
            safetensors.torch.save_model(self.model, str(tmp / WEIGHTS_FILE))
            torch.save(sd, tmp / STATE_FILE)
            (tmp / INFO_FILE).write_text(json.dumps(info, indent=1))

        # under torchrun every replica holds the same weights and optimizer state: one writer,
        # and the others wait for it, so none runs ahead (or loads) before the folder is there
        if self.is_main:
            remove_stale_temps(path.parent, f"{STEP_PREFIX}*" if is_step_folder(path) else path.name)
            atomic_save_dir(path, write)
            self.checkpoints_written.append(path)
            if self.cfg.keep_last and is_step_folder(path):
                for old in list_checkpoints(path.parent)[:-self.cfg.keep_last]:
                    shutil.rmtree(old, ignore_errors=True)
        distributed.barrier()
        return path

    def load_checkpoint(self, path: str | Path) -> Path:
        """Load a checkpoint folder, or the newest one inside a folder of checkpoints."""
        path = Path(path)
        if not (path / STATE_FILE).is_file():
            latest = latest_checkpoint(path)
            if latest is None:
                raise FileNotFoundError(f"No checkpoint in {path} (expected {STATE_FILE} or step-N/ folders).")
            path = latest
        safetensors.torch.load_model(self.model, str(path / WEIGHTS_FILE), device=str(self.device))
        sd = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        self.load_state_dict(sd)
        return path


# --------------------------------------------------------------------------- plots


def moving_average(values: list[float], window: int) -> list[float]:
    """The mean of the last `window` values at each position (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_history(history: History, ax: Any = None, log_loss: bool = False, smooth: int = 1) -> Any:
    """Train and eval loss against step, and the learning rate; returns the matplotlib figure.

    `smooth` > 1 draws the training loss as the mean of the last `smooth` steps (each step's loss
    is one batch's, and noisy) over the raw values in a light line.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        fig, (ax, ax_lr) = plt.subplots(1, 2, figsize=(10, 3.5))
    else:
        fig, ax_lr = ax.figure, None
    if history.train:
        steps = [r["step"] for r in history.train]
        losses = [r["loss"] for r in history.train]
        if smooth > 1:
            ax.plot(steps, losses, color="tab:blue", alpha=0.2, lw=0.8)
            ax.plot(steps, moving_average(losses, smooth), color="tab:blue",
                    label=f"train loss (mean of {smooth} steps)")
        else:
            ax.plot(steps, losses, color="tab:blue", label="train loss", alpha=0.8)
        if ax_lr is not None:
            ax_lr.plot(steps, [r["lr"] for r in history.train], color="tab:green")
            ax_lr.set(xlabel="step", ylabel="learning rate", title="schedule")
    if history.eval:
        ax.plot([r["step"] for r in history.eval], [r["eval_loss"] for r in history.eval], "o-",
                color="tab:orange", label="eval loss")
    ax.set(xlabel="step", ylabel="loss", title="loss")
    if log_loss:
        ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    return fig
