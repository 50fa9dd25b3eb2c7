"""The install files agree with each other and with what the code imports."""
import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"torch": "pytorch-cpu"}  # pip name -> conda-forge name where they differ


def _req(spec: str) -> tuple[str, str]:
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", spec)
    return m.group(1).lower().replace("_", "-"), m.group(2).replace(" ", "")


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pip_reqs = dict(_req(s) for s in project["dependencies"] + project["optional-dependencies"]["dev"])
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_reqs = dict(_req(s.split("#")[0]) for s in env["dependencies"] + pip_section if isinstance(s, str)
                      and not s.startswith(("python=", "pip", "-e")))
    for name, spec in pip_reqs.items():
        conda = CONDA_NAMES.get(name, name)
        assert conda in conda_reqs, f"{name} is in pyproject.toml but not in environment.yml"
        assert conda_reqs[conda] == spec, f"{name}: pyproject says {spec!r}, environment.yml {conda_reqs[conda]!r}"
    extra = set(conda_reqs) - {CONDA_NAMES.get(n, n) for n in pip_reqs}
    assert not extra, f"environment.yml has packages pyproject.toml lacks: {sorted(extra)}"


def test_torch_range_accepts_the_cpu_wheel_pin():
    """The Makefile installs torch==2.13.0 first; the project's range must accept it so pip fetches nothing newer."""
    from packaging.specifiers import SpecifierSet

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    torch_spec = next(s for s in project["dependencies"] if s.startswith("torch"))
    assert "2.13.0" in SpecifierSet(torch_spec[len("torch"):])
    makefile = (REPO / "Makefile").read_text()
    assert "torch==2.13.0" in makefile
    assert makefile.index("torch==2.13.0") < makefile.index("-e '.[dev]'")


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in readme and ci.strip().splitlines()[-1] == "make test"
