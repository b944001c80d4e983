"""Tests never touch a learner's real cache, and notebooks executed side by side never share one."""

import os
import subprocess
import sys
from pathlib import Path

import nbformat

from lmcourse import data

from .conftest import ROOT

HOME_CACHE = Path.home() / ".cache" / "lmcourse"


def test_this_process_uses_a_private_cache():
    cache = Path(os.environ["LMCOURSE_CACHE"])
    assert data.cache_dir() == cache
    assert HOME_CACHE not in (cache, *cache.parents)
    assert "lmcourse-test-" in str(cache)
    for name in ("HF_HOME", "HF_DATASETS_CACHE"):
        assert Path(os.environ[name]).parent == cache.parent


def test_notebooks_run_side_by_side_get_caches_of_their_own(tmp_path):
    """Two notebooks on two pytest workers, as CI runs them: each kernel sees its own cache."""
    (tmp_path / "conftest.py").write_text((ROOT / "conftest.py").read_text())
    out = tmp_path / "out"
    out.mkdir()
    code = ("import os, pathlib\n"
            "pathlib.Path(os.environ['ISOLATION_OUT'], '{name}.txt').write_text("
            "os.environ['LMCOURSE_CACHE'] + '\\n' + os.environ['HF_DATASETS_CACHE'])")
    for name in ("a", "b", "c"):
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code.format(name=name))])
        nbformat.write(nb, tmp_path / f"{name}.ipynb")
    env = {**os.environ, "ISOLATION_OUT": str(out)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "-n", "2", "--dist", "loadfile", "-q",
         "-p", "no:cacheprovider", "a.ipynb", "b.ipynb", "c.ipynb"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    seen = [(out / f"{n}.txt").read_text().splitlines() for n in ("a", "b", "c")]
    caches = [Path(lines[0]) for lines in seen]
    assert len(set(caches)) == 3, caches  # one per notebook, even on the same worker
    assert len({lines[1] for lines in seen}) == 3
    for cache in caches:
        assert HOME_CACHE not in (cache, *cache.parents) and "lmcourse-test-" in str(cache)
    assert Path(os.environ["LMCOURSE_CACHE"]) not in caches  # and not this process's either
