"""Experiment tracking with TensorBoard: a Trainer callback that writes each step's loss,
learning rate and gradient norm, each evaluation's metrics and the run's hyperparameters as
TensorBoard event files (on the main process only), and readers that load event files back into
plain dicts or a DataFrame, so two runs can be compared in a plot where the TensorBoard
extension is unavailable (`plot_runs`).

    tensorboard --logdir runs/      # or, in a notebook: %load_ext tensorboard; %tensorboard ...
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from lmcourse import distributed

# record keys that are positions, not measurements
_NOT_SCALARS = ("step",)
DEFAULT_TAGS = ("train/loss", "eval/loss")  # what plot_runs draws unless told


def tag_for(key: str) -> str:
    """The TensorBoard tag of a history key: eval_loss -> eval/loss, loss -> train/loss, lr ->
    train/lr (the part before "/" is the dashboard's section)."""
    if key.startswith("eval_"):
        return f"eval/{key[len('eval_'):]}"
    return f"train/{key}"


def _hparam_value(v: Any) -> float | int | str | bool:
    # the hparams plugin takes numbers, strings and booleans; None and tuples become text
    if isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


class TensorBoardCallback:
    """A Trainer callback that writes TensorBoard event files into `log_dir` (main process only).

    After every step: train/loss, train/lr, train/grad_norm, train/epoch; after an evaluation:
    eval/loss and eval/<metric>. At the last step (or when early stopping ends the run) it adds the
    hyperparameters (the TrainConfig's fields, the world size and `hparams`) with the hparams
    plugin, the run's final eval values as its metrics, and closes the files. `close()` ends a run
    stopped earlier (train(steps=...)).
    """

    def __init__(self, log_dir: str | Path, hparams: Mapping[str, Any] | None = None,
                 flush_every: int = 1):
        self.log_dir = Path(log_dir)
        self.hparams = dict(hparams or {})
        self.flush_every = flush_every  # steps between flushes: readers see the files up to date
        self._writer: Any = None
        self._last: dict[str, float] = {}  # tag -> last value written: the hparams' metrics
        self.closed = False

    def writer(self) -> Any:
        """The SummaryWriter (made on first use, so processes other than rank 0 never open one)."""
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError("TensorBoard logging needs the tensorboard package: "
                                  "pip install tensorboard") from e
            self._writer = SummaryWriter(log_dir=str(self.log_dir))
        return self._writer

    def __call__(self, trainer: Any, record: Mapping[str, Any]) -> None:
        if not distributed.is_main_process() or self.closed:
            return
        w = self.writer()
        step = int(record["step"])
        for key, value in record.items():
            if key in _NOT_SCALARS or not isinstance(value, (int, float)):
                continue
            w.add_scalar(tag_for(key), float(value), step)
            self._last[tag_for(key)] = float(value)
        if step >= trainer.total_steps or trainer.state.stopped_early:
            self.write_hparams(trainer)
            self.close()
        elif step % self.flush_every == 0:
            w.flush()

    def write_hparams(self, trainer: Any) -> None:
        """Add the run's hyperparameters and final metrics (hparams plugin) to its event files."""
        from torch.utils.tensorboard.summary import hparams

        cfg = trainer.cfg
        values = asdict(cfg) if is_dataclass(cfg) else dict(vars(cfg))
        values["world_size"] = getattr(trainer, "world_size", 1)
        values.update(self.hparams)
        hp = {k: _hparam_value(v) for k, v in values.items()}
        # the metrics name tags this run already holds: the dashboard reads their last values
        metrics = {tag: v for tag, v in self._last.items() if tag.startswith("eval/")}
        metrics = metrics or {"train/loss": self._last.get("train/loss", math.nan)}
        w = self.writer()
        for summary in hparams(hp, metrics):  # experiment, session start, session end
            w.file_writer.add_summary(summary)

    def close(self) -> None:
        """Flush and close the event files."""
        if self._writer is not None:
            self._writer.close()
        self.closed = True


# --------------------------------------------------------------------------- reading runs back


def _accumulator(log_dir: str | Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path = Path(log_dir)
    if not path.is_dir() or not any(path.glob("events.out.tfevents.*")):
        raise FileNotFoundError(f"No TensorBoard event files in {path}: pass the folder given to "
                                "TensorBoardCallback(log_dir).")
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0})  # 0: keep every value
    acc.Reload()
    return acc


def read_scalars(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the event files of `log_dir`: tag -> [(step, value), ...] by step.

    Values come back as TensorBoard stores them: float32.
    """
    acc = _accumulator(log_dir)
    return {tag: [(e.step, e.value) for e in sorted(acc.Scalars(tag), key=lambda e: e.step)]
            for tag in acc.Tags()["scalars"]}


def read_hparams(log_dir: str | Path) -> dict[str, Any]:
    """The hyperparameters a run logged with the hparams plugin ({} if none)."""
    from tensorboard.plugins.hparams import metadata

    acc = _accumulator(log_dir)
    try:
        content = acc.PluginTagToContent(metadata.PLUGIN_NAME)  # tag -> the plugin's bytes
    except KeyError:  # no hparams summary in these files
        return {}
    raw = content.get(metadata.SESSION_START_INFO_TAG)
    if raw is None:
        return {}
    info = metadata.parse_session_start_info_plugin_data(raw)
    out: dict[str, Any] = {}
    for name, value in info.hparams.items():  # protobuf Values: number, string or bool
        kind = value.WhichOneof("kind")
        out[name] = getattr(value, kind) if kind else None
    return out


def read_run(log_dir: str | Path) -> dict[str, Any]:
    """{"scalars": read_scalars(log_dir), "hparams": read_hparams(log_dir)}."""
    return {"scalars": read_scalars(log_dir), "hparams": read_hparams(log_dir)}


def runs_frame(runs: Mapping[str, str | Path]) -> Any:
    """A pandas DataFrame with one row per logged value of each run: run, tag, step, value."""
    import pandas as pd

    rows = [{"run": name, "tag": tag, "step": step, "value": value}
            for name, folder in runs.items()
            for tag, points in read_scalars(folder).items() for step, value in points]
    return pd.DataFrame(rows, columns=["run", "tag", "step", "value"])


def plot_runs(runs: Mapping[str, str | Path], tags: Sequence[str] = DEFAULT_TAGS,
              axes: Any = None) -> Any:
    """One panel per tag, one line per run: runs side by side, read from their event files
    (`runs`: name -> log folder); returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    if axes is None:
        fig, axes = plt.subplots(1, len(tags), figsize=(5 * len(tags), 3.5), squeeze=False)
        axes = axes[0]
    fig = axes[0].figure
    scalars = {name: read_scalars(folder) for name, folder in runs.items()}
    for ax, tag in zip(axes, tags):
        for name, found in scalars.items():
            if tag in found:
                steps, values = zip(*found[tag])
                ax.plot(steps, values, "o-" if tag.startswith("eval/") else "-", label=name)
        ax.set(xlabel="step", title=tag)
        ax.legend()
    fig.tight_layout()
    return fig
