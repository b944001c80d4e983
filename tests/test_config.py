"""Tests for lmcourse.config: modes, parameters, device, autocast, seeds, setup."""

import pytest
import torch

import lmcourse as lm
from lmcourse import config


def test_mode_default_env_and_argument(monkeypatch):
    monkeypatch.delenv(config.ENV_MODE, raising=False)
    assert config.get_mode() == "quick"
    monkeypatch.setenv(config.ENV_MODE, "SMOKE")
    assert config.get_mode() == "smoke"
    assert config.get_mode("full") == "full"


def test_unknown_mode_names_the_fix(monkeypatch):
    monkeypatch.setenv(config.ENV_MODE, "fast")
    with pytest.raises(config.ConfigError, match="LMCOURSE_MODE=quick"):
        config.get_mode()


def test_params_pick_the_mode(capsys):
    p = config.pick_params("smoke", smoke=dict(n=1, lr=0.1), quick=dict(n=2, lr=0.1),
                           full=dict(n=3, lr=0.2))
    assert (p.n, p.lr) == (1, 0.1)
    assert "n  = 1" in capsys.readouterr().out


def test_params_need_the_same_keys_in_every_mode():
    with pytest.raises(config.ConfigError, match="same parameters"):
        config.pick_params("quick", smoke=dict(n=1), quick=dict(n=2, extra=1), full=dict(n=3))
    with pytest.raises(config.ConfigError, match="missing"):
        config.pick_params("quick", smoke=dict(n=1), quick=dict(n=2))


def test_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.delenv(config.ENV_DEVICE, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(config, "_mps_available", lambda: False)
    assert config.get_device() == torch.device("cpu")
    monkeypatch.setattr(config, "_mps_available", lambda: True)
    assert config.get_device() == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert config.get_device() == torch.device("cuda", 0)


def test_device_override_and_clear_error(monkeypatch):
    monkeypatch.setenv(config.ENV_DEVICE, "cpu")
    assert config.get_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(config.ConfigError, match="no CUDA GPU"):
        config.get_device("cuda")


def test_autocast_dtype_rules(monkeypatch):
    assert config.autocast_dtype("cpu") is None
    assert config.autocast_dtype("cpu", enabled=True) == torch.bfloat16
    assert config.autocast_dtype("mps") == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert config.autocast_dtype("cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert config.autocast_dtype("cuda") == torch.float16
    assert config.autocast_dtype("cuda", enabled=False) is None
    assert config.needs_grad_scaler("cuda", torch.float16)
    assert not config.needs_grad_scaler("cuda", torch.bfloat16)


def test_cpu_bf16_autocast_really_runs_in_bf16():
    x, w = torch.randn(4, 8), torch.randn(8, 3)
    with lm.autocast("cpu", enabled=True):
        y = x @ w
    assert y.dtype == torch.bfloat16
    with lm.autocast("cpu"):  # off by default on the CPU
        assert (x @ w).dtype == torch.float32
    assert torch.allclose(y.float(), x @ w, atol=0.1, rtol=0.05)


@pytest.mark.cuda
def test_cuda_autocast_runs_on_gpu():
    dev = lm.get_device()
    assert dev.type == "cuda"
    x = torch.randn(64, 64, device=dev)
    with lm.autocast(dev):
        y = x @ x
    assert y.dtype == config.autocast_dtype(dev)


def test_seed_everything_reproduces():
    g = lm.seed_everything(7)
    a = (torch.rand(3), torch.rand(3, generator=g))
    g = lm.seed_everything(7)
    b = (torch.rand(3), torch.rand(3, generator=g))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    lm.seed_everything(8)
    assert not torch.equal(torch.rand(3), a[0])


def test_offline_flags(monkeypatch):
    for v in config.HF_OFFLINE_VARS:
        monkeypatch.delenv(v, raising=False)
    assert not config.is_offline()
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert config.is_offline() and config.offline_reason() == "HF_DATASETS_OFFLINE=1"


def test_setup_prints_the_environment(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(config.ENV_MODE, "smoke")
    monkeypatch.setenv(config.ENV_DATA_DIR, str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = lm.setup("99_test")
    out = capsys.readouterr().out
    assert cfg.mode == "smoke" and cfg.data_dir == tmp_path.resolve() and cfg.offline
    for word in ("torch", "transformers", "device:", "mode:     smoke", str(tmp_path), "offline"):
        assert word in out


def test_bad_data_dir_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv(config.ENV_DATA_DIR, str(tmp_path / "nope"))
    with pytest.raises(config.ConfigError, match="unset it"):
        lm.setup("x", quiet=True)


def test_config_and_loaders_read_the_same_settings(monkeypatch, tmp_path):
    """Settings changed after setup reach the Config and the loaders alike: one source."""
    from lmcourse import data

    for v in config.HF_OFFLINE_VARS:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.delenv(config.ENV_DATA_DIR, raising=False)
    cfg = lm.setup("x", quiet=True)
    assert cfg.data_dir is None and not cfg.offline
    monkeypatch.setenv(config.ENV_DATA_DIR, str(tmp_path))
    monkeypatch.setenv(config.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cfg.data_dir == tmp_path.resolve() == config.data_dir_from_env()
    assert cfg.cache_dir == tmp_path / "cache" == data.cache_dir()
    assert cfg.offline and config.is_offline()
    assert not hasattr(cfg, "extra")


def test_bf16_pays_only_where_the_hardware_has_bf16(monkeypatch, tmp_path):
    from lmcourse import config

    real_path = config.Path
    for flags, want_names, pays in (("fpu avx2 avx512_bf16 sse", "avx512_bf16", True),
                                    ("fpu amx_bf16 avx512_bf16", "avx512_bf16, amx_bf16", True),
                                    ("fpu avx2 sse", "none", False)):
        info = tmp_path / "cpuinfo"
        info.write_text(f"processor : 0\nflags : {flags}\n")
        monkeypatch.setattr(config, "Path", lambda p, _info=info: _info if p == "/proc/cpuinfo" else real_path(p))
        assert config.cpu_bf16_instructions() == want_names
        assert config.bf16_pays("cpu") is pays
    monkeypatch.setattr(config, "Path", lambda p: tmp_path / "missing")
    assert config.cpu_bf16_instructions() == "unknown" and config.bf16_pays("cpu") is False
    assert config.bf16_pays("meta") is False
