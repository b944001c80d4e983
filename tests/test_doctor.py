"""Tests for lmcourse.doctor: requirement checks, the Hub probe never hangs, mode advice."""

import re
import socket
import subprocess
import sys

import pytest
import torch
from packaging.requirements import Requirement

from lmcourse import doctor


def test_requirements_come_from_the_package():
    names = {r.name for r in doctor.requirements()}
    assert {"torch", "transformers", "datasets", "nbval", "jupyterlab", "seqeval"} <= names


def test_requirement_out_of_range_fails():
    assert doctor.check_requirement(Requirement("torch>=2.4")).status == "ok"
    assert doctor.check_requirement(Requirement("torch>=99")).status == "fail"
    assert doctor.check_requirement(Requirement("no-such-package-xyz")).status == "fail"


def test_offline_variable_short_circuits_the_probe(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("probed"))
    assert doctor.hub_status()[0] == "offline"


def test_probe_uses_a_timeout_and_reports_unreachable(monkeypatch):
    for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "LMCOURSE_OFFLINE"):
        monkeypatch.delenv(v, raising=False)
    seen = {}

    def fake(addr, timeout=None):
        seen["timeout"] = timeout
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", fake)
    state, detail = doctor.hub_status(timeout=2.5)
    assert state == "unreachable" and seen["timeout"] == 2.5 and "HF_HUB_OFFLINE=1" in detail


def test_recommended_mode(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    assert doctor.recommend_mode(torch.device("cpu"), None) == "quick"
    assert doctor.recommend_mode(torch.device("cuda"), 15.0) == "full"
    assert doctor.recommend_mode(torch.device("cuda"), 8.0) == "quick"
    monkeypatch.setenv("CI", "true")
    assert doctor.recommend_mode(torch.device("cuda"), 15.0) == "smoke"


def test_report_flags_a_bad_data_folder(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LMCOURSE_DATA_DIR", str(tmp_path / "missing"))
    rep = doctor.doctor()
    assert not rep.ok and "[FAIL] data folder" in capsys.readouterr().out


def test_cli_doctor_runs_fast_offline(monkeypatch):
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-m", "lmcourse", "doctor"], capture_output=True,
                         text=True, timeout=60, env=env)
    assert "recommended mode" in run.stdout  # the columns widen with the longest package name:
    assert re.search(r"^\[info\] hugging face hub +offline", run.stdout, re.M), run.stdout
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("ram", [24.0, None])
def test_memory_row_always_says_what_quick_mode_needs(monkeypatch, ram):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(doctor, "memory_gib", lambda: ram)
    row = next(r for r in doctor.doctor(quiet=True).rows if r.topic == "memory")
    assert row.detail.endswith("(quick mode needs up to 6 GB)")
    assert row.detail.startswith("24.0 GiB RAM" if ram else "unknown")
