"""Course configuration: modes, device, mixed precision, seeds, and the setup call of every notebook."""

from __future__ import annotations

import contextlib
import os
import platform
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

MODES = ("smoke", "quick", "full")
DEFAULT_MODE = "quick"
DEFAULT_SEED = 1337
TRUTHY = {"1", "true", "yes", "on"}

# Environment variables the course reads; README's instructor guide documents each.
ENV_MODE = "LMCOURSE_MODE"          # smoke | quick | full
ENV_DEVICE = "LMCOURSE_DEVICE"      # force a device: cpu, cuda, cuda:1, mps
ENV_DATA_DIR = "LMCOURSE_DATA_DIR"  # a local folder with the course's data sets
ENV_OFFLINE = "LMCOURSE_OFFLINE"    # 1: never touch the network
ENV_STRICT = "LMCOURSE_STRICT_CHECKS"  # 1: a wrong exercise answer raises (CI on solutions)
ENV_CACHE = "LMCOURSE_CACHE"        # where downloads and saved models go (default ~/.cache/lmcourse)
HF_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", ENV_OFFLINE)


class ConfigError(ValueError):
    """A setting has a value the course cannot use; the message says how to fix it."""


def env_flag(name: str) -> bool:
    """True when the environment variable `name` is set to 1/true/yes/on."""
    return os.environ.get(name, "").strip().lower() in TRUTHY


def is_offline() -> bool:
    """True when any offline switch (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE, ...) is on."""
    return any(env_flag(v) for v in HF_OFFLINE_VARS)


def offline_reason() -> str | None:
    """The first offline variable that is on, as 'NAME=value', or None."""
    for v in HF_OFFLINE_VARS:
        if env_flag(v):
            return f"{v}={os.environ[v]}"
    return None


def get_mode(mode: str | None = None) -> str:
    """The run mode: the argument, else $LMCOURSE_MODE, else 'quick'."""
    chosen = (mode or os.environ.get(ENV_MODE) or DEFAULT_MODE).strip().lower()
    if chosen not in MODES:
        raise ConfigError(
            f"Unknown mode {chosen!r} (from {'the argument' if mode else '$' + ENV_MODE}). "
            f"Use one of {', '.join(MODES)}, e.g. `export {ENV_MODE}=quick`."
        )
    return chosen


def in_colab() -> bool:
    """True inside Google Colab."""
    return "google.colab" in sys.modules


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def get_device(prefer: str | torch.device | None = None) -> torch.device:
    """The device to compute on: `prefer`, else $LMCOURSE_DEVICE, else cuda, then mps, then cpu."""
    wanted = prefer if prefer is not None else os.environ.get(ENV_DEVICE) or None
    if wanted is not None:
        dev = torch.device(wanted)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                f"Device {str(dev)!r} was asked for but torch sees no CUDA GPU "
                f"(torch {torch.__version__}). Unset {ENV_DEVICE} or pass device=None to use "
                "the best available device; in Colab choose Runtime > Change runtime type > GPU."
            )
        if dev.type == "mps" and not _mps_available():
            raise ConfigError(f"Device 'mps' was asked for but is not available; unset {ENV_DEVICE}.")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def describe_device(device: torch.device) -> str:
    """One line naming the device: GPU name and memory, or CPU threads."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"cuda ({props.name}, {props.total_memory / 2**30:.1f} GiB)"
    if device.type == "mps":
        return "mps (Apple GPU)"
    return f"cpu ({torch.get_num_threads()} threads, {platform.machine() or 'unknown arch'})"


def autocast_dtype(device: torch.device | str, enabled: bool | None = None) -> torch.dtype | None:
    """The mixed-precision dtype for `device`, or None when autocast is off.

    CUDA: bfloat16 where the GPU supports it, else float16 (which needs a gradient scaler).
    MPS: float16. CPU: off unless `enabled=True`, then bfloat16 (about 1.2x faster for a BERT
    fine-tuning step on a 2-core x86 CPU; results differ from float32 in the third digit).
    """
    device = torch.device(device)
    if device.type == "cpu":
        return torch.bfloat16 if enabled else None
    if enabled is False:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return None


def autocast(
    device: torch.device | str, enabled: bool | None = None, dtype: torch.dtype | None = None
) -> contextlib.AbstractContextManager:
    """A `torch.autocast` context with the course's choice of dtype (see `autocast_dtype`)."""
    device = torch.device(device)
    chosen = dtype if dtype is not None and enabled is not False else autocast_dtype(device, enabled)
    if chosen is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=chosen)


def cpu_bf16_instructions() -> str:
    """The bfloat16 instructions /proc/cpuinfo lists (avx512_bf16, amx_bf16), "none", or
    "unknown" where there is no /proc/cpuinfo (macOS, Windows)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return "unknown"
    return ", ".join(f for f in ("avx512_bf16", "amx_bf16") if f in flags) or "none"


def bf16_pays(device: torch.device | str) -> bool:
    """Whether bfloat16 autocast is worth switching on for training on `device`: a CUDA GPU with
    bf16 support, or a CPU with bf16 instructions (elsewhere the CPU emulates it, often slower)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_bf16_instructions() not in ("none", "unknown")


def needs_grad_scaler(device: torch.device | str, dtype: torch.dtype | None) -> bool:
    """True when training under autocast with this dtype needs a gradient scaler (fp16 on a GPU)."""
    return dtype == torch.float16 and torch.device(device).type in ("cuda", "mps")


def seed_everything(seed: int = DEFAULT_SEED) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices); returns a CPU generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator().manual_seed(seed)


@dataclass
class Config:
    """What a notebook needs to know about where and how it runs.

    Mode, device and seed are chosen once, by `setup`. Where data comes from, whether the network
    may be used and where the cache is are read from the environment each time they are asked for,
    by the same functions the loaders call, so the Config and the loaders can never disagree
    (a learner who sets $LMCOURSE_DATA_DIR after setup sees both follow).
    """

    lesson: str          # the notebook's name, e.g. "01_lm_math"
    mode: str            # smoke (CI, seconds) | quick (laptop CPU, minutes) | full (GPU, real run)
    device: torch.device  # where tensors and models go: cuda, then mps, then cpu
    seed: int = DEFAULT_SEED  # the seed lessons pass to seed_everything before random steps

    @property
    def offline(self) -> bool:
        """True when an offline variable is set: no Hub, no downloads (`is_offline`)."""
        return is_offline()

    @property
    def data_dir(self) -> Path | None:
        """The local data folder from $LMCOURSE_DATA_DIR, or None (`data_dir_from_env`)."""
        return data_dir_from_env()

    @property
    def cache_dir(self) -> Path:
        """Where downloads and saved models go (`cache_dir`)."""
        return cache_dir()

    def params(self, **by_mode: dict[str, Any]) -> SimpleNamespace:
        """Pick this mode's sizes from a dict per mode; every mode must name the same keys."""
        return pick_params(self.mode, **by_mode)


def pick_params(mode: str, **by_mode: dict[str, Any]) -> SimpleNamespace:
    """Return the sizes for `mode` from smoke=..., quick=..., full=... dicts, and print them."""
    missing = [m for m in MODES if m not in by_mode]
    unknown = [m for m in by_mode if m not in MODES]
    if missing or unknown:
        raise ConfigError(
            f"The parameters cell must give exactly the modes {MODES}; "
            f"missing {missing}, unknown {unknown}."
        )
    keys = {m: set(v) for m, v in by_mode.items()}
    if len({frozenset(k) for k in keys.values()}) != 1:
        ref = keys["quick"]
        diff = {m: sorted(k ^ ref) for m, k in keys.items() if k != ref}
        raise ConfigError(
            f"Every mode must set the same parameters so the code is the same in all modes; "
            f"these differ from quick: {diff}."
        )
    chosen = by_mode[mode]
    width = max((len(k) for k in chosen), default=0)
    print(f"Parameters for mode '{mode}':")
    for k, v in chosen.items():
        print(f"  {k:<{width}} = {v!r}")
    return SimpleNamespace(**chosen)


def data_dir_from_env() -> Path | None:
    """The folder named by $LMCOURSE_DATA_DIR, checked to exist; None when unset."""
    raw = os.environ.get(ENV_DATA_DIR, "").strip()
    if not raw:
        return None
    path = Path(raw).expanduser()
    if not path.is_dir():
        raise ConfigError(
            f"{ENV_DATA_DIR}={raw!r} is not a folder. Point it at a folder holding the course's "
            f"data (e.g. tinyshakespeare/input.txt), or unset it to use the online or offline "
            f"sources."
        )
    return path.resolve()


def cache_dir() -> Path:
    """Where downloads and saved models are kept: $LMCOURSE_CACHE, else ~/.cache/lmcourse."""
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "lmcourse").expanduser()


def versions() -> dict[str, str]:
    """Versions of Python and the main packages ('missing' when not installed)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("lmcourse", "torch", "transformers", "datasets", "tokenizers", "numpy", "matplotlib"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "missing"
    return out


def setup(
    lesson: str = "",
    mode: str | None = None,
    device: str | torch.device | None = None,
    seed: int = DEFAULT_SEED,
    quiet: bool = False,
) -> Config:
    """Print the environment (versions, device, mode, data, online state) and return the Config."""
    cfg = Config(
        lesson=lesson,
        mode=get_mode(mode),
        device=get_device(device),
        seed=seed,
    )
    data_dir_from_env()  # a bad $LMCOURSE_DATA_DIR fails here, at the top, with the fix
    if not quiet:
        print(environment_report(cfg))
    return cfg


def environment_report(cfg: Config) -> str:
    """The few lines `setup` prints at the top of every notebook."""
    v = versions()
    lines = [f"lmcourse {v['lmcourse']} | lesson {cfg.lesson or '-'}"]
    lines.append("versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if k != "lmcourse"))
    lines.append(f"device:   {describe_device(cfg.device)}")
    mode_hint = {
        "smoke": "tiny sizes, checks that everything runs",
        "quick": "laptop CPU sizes, minutes",
        "full": "the real run, meant for a GPU",
    }[cfg.mode]
    lines.append(f"mode:     {cfg.mode} ({mode_hint}; set {ENV_MODE}=smoke|quick|full to change)")
    if cfg.data_dir:
        lines.append(f"data:     local folder {cfg.data_dir} (from {ENV_DATA_DIR})")
    else:
        lines.append(f"data:     no local folder ({ENV_DATA_DIR} unset): online sources, else offline defaults")
    why = offline_reason()
    lines.append(f"network:  {'offline (' + why + ')' if why else 'online allowed (Hub and downloads)'}")
    if in_colab():
        lines.append("colab:    yes")
    return "\n".join(lines)
