"""Project-level checks: environment.yml matches pyproject, style, CI runs the README's command."""

import re
import subprocess
import sys

import pytest
import yaml
from packaging.requirements import Requirement

from .conftest import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10, which the course supports, has no tomllib; tomli is the same parser
    import tomli as tomllib


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _pyproject_reqs():
    p = _pyproject()
    reqs = list(p["dependencies"])
    for extra in p["optional-dependencies"].values():
        reqs += extra
    return {Requirement(r).name: str(Requirement(r).specifier) for r in reqs}


def _env_reqs():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    out = {}
    for line in pip:
        if line.startswith("-e"):
            continue
        r = Requirement(line)
        out[r.name] = str(r.specifier)
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    return out, python


def test_environment_yml_matches_pyproject():
    env, python = _env_reqs()
    assert env == _pyproject_reqs()
    low = re.search(r">=([\d.]+)", python).group(1)
    assert _pyproject()["requires-python"] == f">={low}"


def test_every_design_package_is_required():
    names = set(_pyproject_reqs())
    for pkg in ("torch", "transformers", "datasets", "jupyterlab", "nbval", "matplotlib",
                "ipywidgets", "seqeval", "pytest"):
        assert pkg in names


def test_every_requirement_line_says_which_lessons_need_it():
    text = (ROOT / "pyproject.toml").read_text()
    block = text.split("dependencies = [", 1)[1].split("[tool.", 1)[0]
    for line in block.splitlines():
        if line.strip().startswith('"'):
            assert "#" in line and ("lesson" in line or "tests" in line or "pre-commit" in line), line


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    m = re.search(r"```bash\n(bash course test)\n```", readme)
    assert m, "README must show the test command in a bash block"
    assert re.search(rf"^{re.escape(m.group(1))}$", ci, re.M), ".ci/run must run it verbatim"
    assert "torch==2.13.0" in (ROOT / "course").read_text()


def test_ruff_is_clean():
    run = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format=concise", str(ROOT)],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr


def test_ruff_has_bugbear_b015():
    assert "B" in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]["lint"]["select"]


LIBRARY = sorted((ROOT / "lmcourse").rglob("*.py"))


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(ROOT)))
def test_library_never_names_cuda_or_seeds_on_import(path):
    src = path.read_text()
    assert ".cuda()" not in src
    if path.name != "config.py":  # config.get_device is the one place that names devices
        assert not re.search(r"""torch\.device\(\s*["']cuda""", src), "device comes from get_device()"
    assert not re.search(r"""device\s*=\s*["']cuda""", src)
    top_level = [ln for ln in src.splitlines() if re.match(r"(torch\.manual_seed|random\.seed|np\.random\.seed)", ln)]
    assert not top_level, f"seeding on import: {top_level}"


def test_package_imports_fast_and_lazily():
    code = "import sys, lmcourse; print('lmcourse.lm_math' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.stdout.strip() == "False"


def test_package_data_named_in_pyproject_exists():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for package, files in data.items():
        for name in files:
            assert (ROOT / package / name).is_file(), f"pyproject ships {package}/{name}, which is missing"


# --------------------------------------------------------------------------- the GitHub workflow


def _readme_test_command() -> str:
    """The command in the README's bash block under "Run the whole test suite"."""
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"\*\*Run the whole test suite\*\*.*?```bash\n(.+?)\n```", readme, re.S)
    assert m, "README's quick start must show the test command in a bash block"
    return m.group(1).strip()


def _workflow_steps() -> tuple[dict, list[dict]]:
    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    (job,) = wf["jobs"].values()
    return wf, job["steps"]


def _step_index(steps: list[dict], pattern: str) -> int:
    found = [i for i, s in enumerate(steps) if re.search(pattern, s.get("run", ""), re.M)]
    assert found, f"no workflow step runs {pattern!r}"
    return found[0]


def test_github_workflow_runs_the_readme_test_command_after_cpu_torch():
    wf, steps = _workflow_steps()
    triggers = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` key as True
    assert {"push", "pull_request", "workflow_dispatch"} <= set(triggers)
    command = _readme_test_command()
    test = _step_index(steps, rf"^\s*{re.escape(command)}\s*$")
    default_torch = re.search(r"LMCOURSE_TORCH:-(torch==[\w.]+)", (ROOT / "course").read_text()).group(1)
    torch = _step_index(steps, rf"pip install .*{re.escape(default_torch)} "
                               r"--index-url https://download\.pytorch\.org/whl/cpu")
    assert torch < test, "CPU torch must be installed before the test command"
    assert re.search(r"python -m venv \.venv", steps[torch]["run"]), \
        "torch goes into the .venv that `bash course` uses"
    setup = next(s for s in steps if s.get("uses", "").startswith("actions/setup-python"))
    assert str(setup["with"]["python-version"]) == "3.11"


def test_github_workflow_builds_and_uploads_the_executed_notebooks():
    _, steps = _workflow_steps()
    build = _step_index(steps, r"lmcourse build --mode smoke\b")
    out = re.search(r"--out (\S+)", steps[build]["run"]).group(1)
    upload = next(i for i, s in enumerate(steps) if s.get("uses", "").startswith("actions/upload-artifact"))
    assert build > _step_index(steps, rf"^\s*{re.escape(_readme_test_command())}\s*$") and upload > build
    assert steps[upload]["with"]["path"].rstrip("/") == out.rstrip("/")


def _table_rows(text: str, heading: str) -> list[list[str]]:
    """The cells of each row of the first markdown table after `heading`."""
    after = text[text.index(heading):]
    rows, started = [], False
    for line in after.splitlines()[1:]:
        if line.startswith("|"):
            started = True
            if not set(line) <= set("|-: "):
                rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif started:
            break
    return rows


def test_course_map_and_instructor_guide_time_every_lesson():
    lessons = sorted(p.stem for p in (ROOT / "solutions").glob("*.ipynb") if "." not in p.stem)
    course_map = _table_rows((ROOT / "README.md").read_text(), "## Course map")
    assert course_map[0][:3] == ["#", "notebook", "run time (quick)"]
    by_name = {row[1].strip("`"): row for row in course_map[1:]}
    assert sorted(by_name) == lessons, "the course map lists every lesson, once"
    for name, row in by_name.items():
        assert re.search(r"\d+ min", row[2]), f"{name}: no run time in the course map"
    guide = _table_rows((ROOT / "docs" / "INSTRUCTORS.md").read_text(), "### Time per lesson")
    timed = {row[0].split("`")[1]: row for row in guide[1:]}
    assert sorted(timed) == lessons, "the instructor guide's time table lists every lesson, once"
    for name, row in timed.items():
        assert re.search(r"\d+ s / \d+ s", row[1]), f"{name}: no smoke time"
        assert re.search(r"\d+(\.\d+)? (s|min).*\d\.\d+ GiB", row[2]), f"{name}: no quick time and RAM"
