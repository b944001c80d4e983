"""lmcourse.distributed: the course loop under torchrun (2 CPU processes, Gloo on loopback) against
the same run in one process, and the pieces it is made of (sharding, launching)."""

import math
import os
import sys
import time

import pytest
import safetensors.torch
import torch

import lmcourse as lm
from lmcourse import checkpoints as ck
from lmcourse import ddp_demo
from lmcourse import distributed as dd
from lmcourse import train as tr

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="this torch build has no torch.distributed")


# --------------------------------------------------------------------------- sharding


@pytest.mark.parametrize("n, world, bs, drop_last", [
    (20, 2, 4, True), (21, 2, 4, True), (21, 2, 4, False), (19, 3, 2, False), (17, 4, 4, False),
    (12, 1, 5, False),
])
def test_shards_of_every_process_make_the_one_process_batches(n, world, bs, drop_last):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(n)).tolist()
    shards = [dd.shard_batches(order, bs, drop_last, r, world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1  # every process takes as many micro-batches
    one = dd.shard_batches(order, bs * world, drop_last, 0, 1)  # one process, the global batch
    for j, batch in enumerate(one):
        if len(batch) < world:  # too short to give every process an example: dropped
            assert j == len(one) - 1 and j == len(shards[0])
            continue
        parts = [s[j] for s in shards]
        assert sum(parts, []) == batch and all(parts)  # contiguous shares, none empty
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    if world == 1:
        assert one == [order[i:i + bs] for i in range(0, n, bs)]  # the one-process batching


def test_round_robin_shards_and_interleave():
    items = list(range(11))
    shards = [list(dd.shard_round_robin(items, r, 3)) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]  # 9 and 10: an incomplete group, dropped
    assert dd.interleave(shards) == list(range(9))
    assert dd.interleave([[0, 2], [1]]) == [0, 1, 2]


def test_one_process_is_not_wrapped_and_collectives_are_identities():
    t = tr.Trainer(torch.nn.Linear(2, 1), tr.TrainConfig(progress=False), device="cpu")
    assert (t.rank, t.world_size, t.is_main, t.ddp_model) == (0, 1, True, None)
    assert not dd.is_initialized() and dd.is_main_process()
    assert dd.all_reduce_sum(3) == 3.0 and dd.all_reduce_sum([1, 2.5]) == [1.0, 2.5]
    assert dd.all_gather_objects({"a": 1}) == [{"a": 1}]
    dd.barrier()  # nothing to wait for


def test_a_group_of_one_process_takes_the_same_code_path(monkeypatch, tmp_path):
    """torchrun with one process: the Trainer joins a Gloo group of one, wraps the model in DDP
    and trains exactly as without a group."""
    plain = ddp_demo.run(ddp_demo.DemoSettings(steps=3, eval_every=3), device="cpu")
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
                        "MASTER_ADDR": dd.LOOPBACK, "MASTER_PORT": str(dd.free_port())}.items():
        monkeypatch.setenv(name, value)
    assert dd.launched()
    try:
        grouped = ddp_demo.run(ddp_demo.DemoSettings(steps=3, eval_every=3), tmp_path, device="cpu")
        assert dd.is_initialized() and dd.world_size() == 1
        t = tr.Trainer(torch.nn.Linear(2, 1), tr.TrainConfig(progress=False), device="cpu")
        assert t.ddp_model is not None and t.ddp_model.module is t.model
    finally:
        dd.cleanup()
    assert not dd.is_initialized()
    assert grouped["history"] == plain["history"]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000003"]


def test_settings_errors_say_what_to_do():
    with pytest.raises(lm.config.ConfigError, match="multiple of 8"):
        ddp_demo.micro_batch_size(ddp_demo.DemoSettings(global_batch=12, grad_accum_steps=2), 4)
    with pytest.raises(lm.config.ConfigError, match="name=value"):
        ddp_demo.parse_settings(["stepz=3"])
    with pytest.raises(lm.config.ConfigError, match="Unknown setting"):
        dd.launch(nproc=2, stepz=3)
    assert dd.backend_for("cpu") == "gloo" and dd.backend_for("cuda:0") == "nccl"


# --------------------------------------------------------------------------- two processes


def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path):
    """2 CPU processes (Gloo on 127.0.0.1) with 2 micro-batches of 4 each per step against one
    process with 2 micro-batches of 8: the same 16 examples per step. Every micro-batch holds its
    own number of labelled tokens, so only a step normalised by the tokens of all processes'
    micro-batches together matches. Tolerance: relative 1e-5 (float32 sums in another order)."""
    settings = {"steps": 6, "eval_every": 3, "tensorboard": True}
    two = dd.launch(nproc=2, out_dir=tmp_path / "two", timeout_s=180, progress=True, **settings)
    one = ddp_demo.run(ddp_demo.DemoSettings(**settings), tmp_path / "one", device="cpu")
    assert (two["world_size"], two["micro_batch_size"], one["micro_batch_size"]) == (2, 4, 8)
    assert two["train_loss_unit"] == "token"
    assert [r["rank"] for r in two["ranks"]] == [0, 1]
    assert {r["backend"] for r in two["ranks"]} == {"gloo"}

    # the same examples in each step, split between the processes
    first = [r["first_step_examples"] for r in two["ranks"]]
    assert not set(first[0]) & set(first[1])
    assert sorted(first[0] + first[1]) == one["rank_record"]["first_step_examples"]

    # the same trajectory: losses, gradient norms (a gradient scaled wrong shows here even where
    # AdamW's update hides it), learning rates, and the evaluations reduced over both processes
    for key in ("loss", "grad_norm", "lr"):
        assert [r[key] for r in two["history"]["train"]] == pytest.approx(
            [r[key] for r in one["history"]["train"]], rel=1e-5), key
    assert len(two["history"]["eval"]) == 2
    for a, b in zip(two["history"]["eval"], one["history"]["eval"]):
        assert a == pytest.approx(b, rel=1e-5)

    # exactly one checkpoint, written by rank 0 alone, holding the weights of the one-process run
    folder = tmp_path / "two" / "checkpoints"
    assert [p.name for p in folder.iterdir()] == ["step-00000006"]
    assert [len(r["checkpoints_written"]) for r in two["ranks"]] == [1, 0]
    w2 = safetensors.torch.load_file(folder / "step-00000006" / tr.WEIGHTS_FILE)
    w1 = safetensors.torch.load_file(ck.latest_checkpoint(tmp_path / "one" / "checkpoints")
                                     / tr.WEIGHTS_FILE)
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-4, atol=1e-5, msg=name)

    # logs from rank 0 only: one event file, one line per evaluation
    events = list((tmp_path / "two" / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    assert two["output"].count("step 3: eval_loss") == 1
    assert two["output"].count("step 6: eval_loss") == 1


@pytest.mark.cuda
def test_gpus_train_with_nccl_one_gpu_per_process(tmp_path):
    nproc = min(2, torch.cuda.device_count())
    run = dd.launch(nproc=nproc, out_dir=tmp_path, timeout_s=300, steps=6)
    assert [r["backend"] for r in run["ranks"]] == (["nccl"] * nproc if nproc > 1 else [None])
    assert [r["device"] for r in run["ranks"]] == [f"cuda:{r}" for r in range(nproc)]  # LOCAL_RANK
    losses = [r["loss"] for r in run["history"]["train"]]
    assert all(map(math.isfinite, losses)) and losses[-1] < losses[0]
    assert [len(r["checkpoints_written"]) for r in run["ranks"]] == [1] + [0] * (nproc - 1)


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="needs process groups (POSIX)")
def test_a_run_past_its_timeout_is_stopped_with_its_workers(tmp_path):
    script = tmp_path / "sleep.py"
    script.write_text("import os, pathlib, time\n"
                      f"pathlib.Path({str(tmp_path)!r}, os.environ['RANK']).write_text(str(os.getpid()))\n"
                      "time.sleep(120)\n")
    with pytest.raises(TimeoutError, match="did not finish in 10 s"):
        dd.torchrun([str(script)], nproc=2, timeout_s=10)
    pids = [int((tmp_path / r).read_text()) for r in ("0", "1")]
    time.sleep(0.5)
    for pid in pids:  # gone, or a zombie waiting to be reaped: not running
        try:
            state = open(f"/proc/{pid}/status").read() if sys.platform == "linux" else ""
        except FileNotFoundError:
            continue
        assert "State:\tZ" in state or not state
