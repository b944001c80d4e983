"""Data-parallel training with PyTorch's distributed engine: starting a process group from the
variables `torchrun` sets, who is the main process, the collectives the training loop needs
(sums, gathers, barriers), cutting data into one share per process, and launching a run in
several local processes from Python (a notebook) and collecting what it wrote.

The training loop (`lmcourse.train.Trainer`) uses these; on one process every function here is
a no-op (a sum of one term, a gather of one object), so the same code runs with and without
`torchrun`.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from lmcourse import config

T = TypeVar("T")

# The variables torchrun sets in every process it starts (one process per GPU or CPU share).
ENV_RANK = "RANK"              # this process's number, 0 .. WORLD_SIZE-1, over all machines
ENV_WORLD_SIZE = "WORLD_SIZE"  # how many processes take part
ENV_LOCAL_RANK = "LOCAL_RANK"  # this process's number on its machine: picks its GPU
ENV_MASTER = ("MASTER_ADDR", "MASTER_PORT")  # where the processes meet (rank 0's address)
LOOPBACK = "127.0.0.1"         # local runs talk over loopback only: no network needed
DEFAULT_TIMEOUT_S = 300        # how long a collective waits for the other processes


# --------------------------------------------------------------------------- who am I


def launched() -> bool:
    """True in a process started by torchrun (RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT are
    set: what a process group started from the environment needs)."""
    return all(v in os.environ for v in (ENV_RANK, ENV_WORLD_SIZE, *ENV_MASTER))


def is_initialized() -> bool:
    """True once this process has joined a process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank: 0 without a process group (and before torchrun's group is joined,
    the rank torchrun gave it)."""
    if is_initialized():
        return dist.get_rank()
    return int(os.environ.get(ENV_RANK, 0)) if launched() else 0


def world_size() -> int:
    """How many processes train together: 1 without a process group."""
    if is_initialized():
        return dist.get_world_size()
    return int(os.environ.get(ENV_WORLD_SIZE, 1)) if launched() else 1


def local_rank() -> int:
    """This process's number on its machine (torchrun's LOCAL_RANK): the GPU it uses."""
    return int(os.environ.get(ENV_LOCAL_RANK, 0)) if launched() else 0


def is_main_process() -> bool:
    """True on rank 0, the one process that logs, shows progress and writes files."""
    return rank() == 0


def backend_for(device: torch.device | str) -> str:
    """The collective backend for `device`: NCCL between GPUs, Gloo on CPUs."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


# --------------------------------------------------------------------------- start and stop


def init(device: str | torch.device | None = None, backend: str | None = None,
         timeout_s: float = DEFAULT_TIMEOUT_S) -> torch.device:
    """Join torchrun's process group (once) and return this process's device.

    Under torchrun each process takes the GPU numbered by its LOCAL_RANK (where there are GPUs
    and neither `device` nor $LMCOURSE_DEVICE asks for another kind), then the course's device rule
    (`lm.get_device(device)`) picks it; the backend follows the device (`backend_for`). Without
    torchrun this only returns `lm.get_device(device)`.
    """
    asked = device if device is not None else os.environ.get(config.ENV_DEVICE) or None
    wanted = torch.device(asked) if asked is not None else None
    if launched() and torch.cuda.is_available() and (wanted is None or wanted.type == "cuda"):
        if local_rank() >= torch.cuda.device_count():
            raise config.ConfigError(
                f"LOCAL_RANK={local_rank()} but torch sees {torch.cuda.device_count()} GPU(s): "
                "start at most one process per GPU (torchrun --nproc_per_node), or train on CPUs "
                f"with {config.ENV_DEVICE}=cpu.")
        if wanted is None or wanted.index is None:
            torch.cuda.set_device(local_rank())  # so "the current GPU" is this process's own
    dev = config.get_device(device)
    if launched() and dev.type == "cuda" and dev.index is None:  # "cuda": this process's GPU
        dev = torch.device(dev.type, torch.cuda.current_device())
    if launched() and not is_initialized():
        chosen = backend or backend_for(dev)
        kwargs: dict[str, Any] = {}
        if chosen == "nccl":
            kwargs["device_id"] = dev  # binds the group to this GPU: no guessing which one
        dist.init_process_group(chosen, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    return dev


def cleanup() -> None:
    """Leave the process group (call once at the end of a torchrun script)."""
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every process gets here (nothing to wait for on one process)."""
    if is_initialized() and world_size() > 1:
        dist.barrier()


# --------------------------------------------------------------------------- collectives


def _comm_device() -> torch.device:
    # NCCL moves only GPU tensors (this process's: `init` made it the current one); Gloo CPU ones
    if is_initialized() and dist.get_backend() == "nccl":
        return config.get_device()
    return torch.device("cpu")


def all_reduce_sum(values: float | Sequence[float]) -> Any:
    """The sum over all processes of a number (or of each number of a list), as Python floats.

    Sums run in float64, so counts of tokens stay exact. One process: the values unchanged.
    """
    single = not isinstance(values, Sequence)
    if not is_initialized() or world_size() == 1:
        return float(values) if single else [float(v) for v in values]
    t = torch.tensor([values] if single else list(values), dtype=torch.float64,
                     device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    out = t.tolist()
    return out[0] if single else out


def all_gather_objects(obj: T) -> list[T]:
    """Every process's `obj` (anything picklable), in rank order; one process: [obj]."""
    if not is_initialized() or world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def interleave(shards: Sequence[Sequence[T]]) -> list[T]:
    """Undo `shard_round_robin`: items of rank 0, 1, ..., 0, 1, ... back in their first order."""
    out: list[T] = []
    for j in range(max((len(s) for s in shards), default=0)):
        out += [s[j] for s in shards if j < len(s)]
    return out


# --------------------------------------------------------------------------- sharding the data


def split_evenly(items: Sequence[T], parts: int, part: int) -> Sequence[T]:
    """The `part`-th of `parts` contiguous slices of `items`, sizes differing by at most one."""
    n = len(items)
    return items[part * n // parts:(part + 1) * n // parts]


def shard_batches(order: Sequence[int], batch_size: int, drop_last: bool = True,
                  rank_: int | None = None, world_size_: int | None = None) -> list[list[int]]:
    """This process's micro-batches of one epoch: a distributed sampler for the course's batching.

    `order` (the epoch's shuffled example indices) is cut into global batches of
    batch_size x world_size examples, the batches one process would use with that batch size;
    each process takes its contiguous share of every global batch. So micro-batch j of all the
    processes together is exactly global batch j: the same examples as one process with the whole
    batch. `drop_last` drops a last global batch smaller than the others; a kept short one is split
    as evenly as possible (its loss is still exact: the training loop weights each share by what
    it holds), and one with fewer examples than processes is dropped (a share may not be empty).
    """
    r = rank() if rank_ is None else rank_
    w = world_size() if world_size_ is None else world_size_
    size = batch_size * w
    global_batches = [list(order[i:i + size]) for i in range(0, len(order), size)]
    if global_batches and len(global_batches[-1]) < size and (drop_last or len(global_batches[-1]) < w):
        global_batches.pop()
    return [list(split_evenly(b, w, r)) for b in global_batches]


def shard_round_robin(items: Iterable[T], rank_: int | None = None,
                      world_size_: int | None = None) -> Iterator[T]:
    """Items number rank, rank + W, rank + 2W, ... of a stream (W processes), from complete
    groups of W only, so every process gets the same number.

    Every process reads the whole stream (a factory of batches is called the same way on each)
    and keeps its own items; a final group with fewer than W items is dropped everywhere.
    """
    r = rank() if rank_ is None else rank_
    w = world_size() if world_size_ is None else world_size_
    group: list[T] = []
    for item in items:
        group.append(item)
        if len(group) == w:
            yield group[r]
            group = []


# --------------------------------------------------------------------------- launching


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _loopback_interface() -> str:
    return "lo0" if sys.platform == "darwin" else "lo"


def torchrun(args: Sequence[str], nproc: int = 2, timeout_s: float = 300,
             env: Mapping[str, str] | None = None, cwd: str | Path | None = None,
             check: bool = True) -> subprocess.CompletedProcess:
    """Run `python -m torch.distributed.run --nproc_per_node=nproc <args>` on this machine and wait.

    The processes meet on loopback (127.0.0.1, a free port), with one thread each
    (OMP_NUM_THREADS=1 unless `env` says otherwise). `args` is what follows torchrun's options:
    a script and its arguments, or ["-m", "module", ...]. After `timeout_s` seconds the whole
    group of processes is stopped. With `check`, a failure raises with the processes' output.
    """
    if nproc < 1:
        raise config.ConfigError(f"nproc={nproc}: start at least one process.")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           "--nnodes=1", f"--master_addr={LOOPBACK}", f"--master_port={free_port()}", *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1",
                "GLOO_SOCKET_IFNAME": _loopback_interface(), "PYTHONUNBUFFERED": "1"}
    full_env.update(env or {})
    # a session of its own, so a timeout stops torchrun and every worker it started
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=full_env, cwd=cwd, start_new_session=hasattr(os, "killpg"))
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _stop_group(proc)
        out, _ = proc.communicate()
        raise TimeoutError(f"torchrun did not finish in {timeout_s} s (stopped). Its output:\n"
                           f"{out[-4000:]}\nPass a larger timeout_s, or fewer steps.") from None
    result = subprocess.CompletedProcess(cmd, proc.returncode, out, "")
    if check and proc.returncode != 0:
        raise RuntimeError(f"torchrun exited with code {proc.returncode}. Command: "
                           f"{' '.join(cmd)}\nIts output (end):\n{out[-6000:]}")
    return result


def _stop_group(proc: subprocess.Popen) -> None:
    if not hasattr(os, "killpg"):
        proc.kill()
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def launch(nproc: int = 2, out_dir: str | Path | None = None, timeout_s: float = 300,
           device: str | None = None, **settings: Any) -> dict[str, Any]:
    """Train `lmcourse.ddp_demo` in `nproc` processes with torchrun and return what they wrote.

    `settings` are `ddp_demo.DemoSettings` fields (steps, global_batch, grad_accum_steps, ...).
    The device is the GPUs where there is one per process, else the CPU (Gloo), unless `device`
    says. Returns the main process's result (`history`: the Trainer's history as lists of dicts;
    `settings`; `world_size`), `ranks` (one record per process: its rank, device, the examples
    of its first micro-batches, the checkpoints it wrote), `out_dir` and `output` (the text the
    processes printed).
    """
    from lmcourse import ddp_demo

    if device is None and not (torch.cuda.is_available() and torch.cuda.device_count() >= nproc):
        device = "cpu"  # two processes on one GPU would fight over it: share the CPU instead
    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="lmcourse-ddp-"))
    out.mkdir(parents=True, exist_ok=True)
    args = ["-m", "lmcourse.ddp_demo", "--out-dir", str(out)]
    if device is not None:
        args += ["--device", device]
    for key, value in settings.items():
        if key not in ddp_demo.DemoSettings.__dataclass_fields__:
            raise config.ConfigError(f"Unknown setting {key!r}; ddp_demo.DemoSettings has "
                                     f"{sorted(ddp_demo.DemoSettings.__dataclass_fields__)}.")
        args += ["--set", f"{key}={json.dumps(value)}"]
    proc = torchrun(args, nproc=nproc, timeout_s=timeout_s)
    result = json.loads((out / ddp_demo.RESULT_FILE).read_text())
    result["ranks"] = [json.loads((out / ddp_demo.rank_file(r)).read_text()) for r in range(nproc)]
    result["out_dir"] = str(out)
    result["output"] = proc.stdout
    return result
