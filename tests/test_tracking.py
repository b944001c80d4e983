"""lmcourse.tracking: TensorBoard event files written by the Trainer's callback, read back."""

import matplotlib
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import lmcourse as lm
from lmcourse import tracking as tk
from lmcourse import train as tr

pytest.importorskip("tensorboard")
matplotlib.use("Agg")


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))

    def forward(self, x, labels):
        logits = self.net(x)
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


def data(n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return [{"x": a, "labels": b} for a, b in zip(x, y)]


def accuracy(logits, batches):
    pred = torch.cat([lg.argmax(-1) for lg in logits])
    return {"accuracy": (pred == torch.cat([b["labels"] for b in batches])).float().mean().item()}


def run(log_dir, lr=3e-2, steps=7, **hparams):
    lm.seed_everything(0)
    cfg = tr.TrainConfig(max_steps=steps, batch_size=8, lr=lr, warmup_steps=2, eval_every=3,
                         progress=False, seed=0)
    cb = tk.TensorBoardCallback(log_dir, hparams=hparams)
    t = tr.Trainer(Classifier(), cfg, data(), data(24), metrics_fn=accuracy, device="cpu",
                   callbacks=[cb])
    t.train()
    return t, cb


def test_every_logged_scalar_is_read_back(tmp_path):
    t, cb = run(tmp_path / "a", hidden=16)
    assert cb.closed  # the last step closed the files
    found = tk.read_scalars(tmp_path / "a")
    expected = {}
    for rec in t.history.train:
        for key in ("loss", "lr", "grad_norm", "epoch"):
            expected.setdefault(f"train/{key}", []).append((rec["step"], rec[key]))
    for rec in t.history.eval:  # steps 3, 6 and the last, 7
        for key in ("eval_loss", "eval_accuracy"):
            expected.setdefault(tk.tag_for(key), []).append((rec["step"], rec[key]))
    assert sorted(found) == sorted(expected)
    for tag, points in expected.items():
        assert [s for s, _ in found[tag]] == [s for s, _ in points], tag
        # event files hold float32
        assert [v for _, v in found[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag
    assert [s for s, _ in found["eval/loss"]] == [3, 6, 7]

    hp = tk.read_hparams(tmp_path / "a")
    assert hp["lr"] == pytest.approx(3e-2) and hp["max_steps"] == 7 and hp["hidden"] == 16
    assert hp["world_size"] == 1 and hp["schedule"] == "linear"
    assert hp["checkpoint_dir"] == "None"  # None and tuples are kept as text
    assert tk.read_run(tmp_path / "a")["scalars"] == found


def test_two_runs_side_by_side(tmp_path):
    run(tmp_path / "slow", lr=1e-3, steps=4)
    run(tmp_path / "fast", lr=1e-1, steps=4)
    runs = {"lr 1e-3": tmp_path / "slow", "lr 1e-1": tmp_path / "fast"}
    frame = tk.runs_frame(runs)
    assert list(frame.columns) == ["run", "tag", "step", "value"]
    loss = frame[frame.tag == "train/loss"]
    assert len(loss) == 8 and set(loss.run) == set(runs)
    fig = tk.plot_runs(runs)
    train_ax, eval_ax = fig.axes
    assert [line.get_label() for line in train_ax.lines] == list(runs)
    assert list(eval_ax.lines[0].get_xdata()) == [3, 4]
    matplotlib.pyplot.close(fig)


def test_only_the_main_process_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(lm.distributed, "is_main_process", lambda: False)
    run(tmp_path / "b", steps=2)
    assert not (tmp_path / "b").exists()
    with pytest.raises(FileNotFoundError, match="TensorBoardCallback"):
        tk.read_scalars(tmp_path / "b")


def test_tags_group_train_and_eval():
    assert tk.tag_for("loss") == "train/loss" and tk.tag_for("eval_f1") == "eval/f1"
