"""The conda files pin what envs/requirements.txt (pip) pins, at the same versions: envs/environment.yaml
(everything, tests included), and the per-rule envs envs/gpu.yaml, envs/light.yaml and the controller's
envs/controller.yaml, each a subset; the rules name existing env files; the light env's rules run
without the GPU env's packages."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# pip name -> conda-forge name where they differ.
CONDA_NAMES = {"torch": "pytorch"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pip_pins(path: Path = ROOT / "envs/requirements.txt") -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        assert m, f"{path}: {line!r} is not an exact pin (name==version)"
        # A CPU wheel's local suffix (2.13.0+cpu) is the same release as the conda build.
        pins[_norm(m.group(1))] = m.group(2).split("+", 1)[0]
    return pins


def conda_pins(path: Path = ROOT / "envs/environment.yaml") -> dict[str, str]:
    env = yaml.safe_load(path.read_text())
    assert env.get("channels", [])[0] == "conda-forge", f"{path}: conda-forge must be the first channel"
    pins = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for line in dep.get("pip", []):
                m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line.strip())
                if m:
                    pins[_norm(m.group(1))] = m.group(2)
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(==?)\s*([^=\s]+)(?:=(\S+))?", dep.strip())
        if m:
            pins[_norm(m.group(1))] = m.group(3)
    return pins


def test_every_pip_pin_is_in_the_conda_file_with_the_same_version():
    pip, conda = pip_pins(), conda_pins()
    missing, differ = [], []
    for name, version in pip.items():
        cname = CONDA_NAMES.get(name, name)
        got = conda.get(cname, conda.get(name))
        if got is None:
            missing.append(name)
        elif got != version:
            differ.append(f"{name}: pip {version} vs conda {got}")
    assert not missing, f"envs/environment.yaml lacks pins for {missing} (envs/requirements.txt has them)"
    assert not differ, "pins differ between envs/requirements.txt and envs/environment.yaml: " + "; ".join(differ)


def test_conda_file_installs_cuda_pytorch_and_the_package():
    env = yaml.safe_load((ROOT / "envs/environment.yaml").read_text())
    deps = [d for d in env["dependencies"] if isinstance(d, str)]
    assert any(d.startswith("pytorch==") and d.endswith("=cuda*") for d in deps), "CUDA build of pytorch expected"
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert any(line.startswith("--editable") or line.startswith("-e ") for line in pip), "lct must be pip-installed"


def test_pin_parser_catches_a_mismatch(tmp_path):
    (tmp_path / "req.txt").write_text("numpy==1.0\n")
    (tmp_path / "env.yaml").write_text("channels: [conda-forge]\ndependencies: [numpy==2.0]\n")
    assert pip_pins(tmp_path / "req.txt") != conda_pins(tmp_path / "env.yaml")


ENV_FILES = ["envs/environment.yaml", "envs/gpu.yaml", "envs/light.yaml", "envs/controller.yaml"]


@pytest.mark.parametrize("path", ENV_FILES)
def test_every_env_file_pins_the_versions_of_requirements(path):
    pip, conda = pip_pins(), conda_pins(ROOT / path)
    differ = []
    for name, version in conda.items():
        if name in ("python", "pip"):
            continue
        pip_name = next((k for k, v in CONDA_NAMES.items() if v == name), name)
        assert pip_name in pip, f"{path} pins {name}, which envs/requirements.txt does not"
        if pip[pip_name] != version:
            differ.append(f"{name}: {path} {version} vs requirements {pip[pip_name]}")
    assert not differ, differ


def test_rule_envs_carry_no_workflow_or_test_tools():
    for path in ("envs/gpu.yaml", "envs/light.yaml"):
        pins = conda_pins(ROOT / path)
        assert not {"snakemake", "pytest", "pytest-xdist", "snakefmt"} & set(pins), path
    assert "snakemake-executor-plugin-slurm" in conda_pins(ROOT / "envs/controller.yaml")


def test_rules_point_at_existing_env_files():
    common = (ROOT / "workflow/rules/common.smk").read_text()
    envs = dict(re.findall(r'^(ENV_\w+) = "([^"]+)"', common, re.M))
    assert set(envs) == {"ENV_GPU", "ENV_LIGHT"}, envs
    for name, rel in envs.items():
        assert (ROOT / "workflow/rules" / rel).resolve().is_file(), f"{name} = {rel} does not exist"
    for smk in (ROOT / "workflow/rules").glob("*.smk"):
        for block in re.findall(r"conda:\n\s+(\S+)", smk.read_text()):
            assert block in envs, f"{smk.name}: conda: {block} is not one of {sorted(envs)}"
        assert '"lct ' not in smk.read_text(), f"{smk.name}: call `python -m lct` (rule envs do not install lct)"


def test_light_env_rules_run_without_the_gpu_packages(tmp_path):
    """The light env's rules (a table, Figure 2) in a Python that cannot import what envs/light.yaml lacks."""
    import subprocess
    import sys

    allowed = {CONDA_NAMES.get(k, k) for k in conda_pins(ROOT / "envs/light.yaml")} | {"torch", "yaml", "PIL"}
    blocked = ["diffusers", "cleanfid", "ot", "torchvision", "elatentlpips", "lmdb", "mlxtend", "skimage",
               "huggingface_hub", "snakemake", "pytest"]
    assert not set(blocked) & allowed
    script = f"""
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError("not in envs/light.yaml: " + name)
sys.meta_path.insert(0, Block())
from lct.cli import main
sys.exit(main(["report", "figure", "--figure", "fig2", "--out", {str(tmp_path / "fig2")!r}]))
"""
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "fig2.png").is_file()
    # the tables' module imports no torch at all (lct.infra.suites holds the metric suites, torch-free)
    r = subprocess.run([sys.executable, "-c", "import sys, lct.report.tables, lct.report.figures; print('torch' in sys.modules)"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stdout + r.stderr


@pytest.mark.parametrize("path", ["envs/requirements.txt", "envs/setup.sh", *ENV_FILES])
def test_env_files_exist(path):
    assert (ROOT / path).is_file(), f"{path} is missing"


def test_every_third_party_import_of_lct_is_pinned_in_both_files():
    """Each distribution `lct` imports (at module level or inside a function) is pinned for pip and conda."""
    import ast
    import importlib.metadata as md
    import sys

    mods = set()
    for f in (ROOT / "lct").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                mods |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods.add(node.module.split(".")[0])
    # pkg_resources: only tried, and replaced when missing (lct/infra/compat.py import_elatentlpips)
    mods -= set(sys.stdlib_module_names) | {"lct", "pkg_resources"}
    dists = md.packages_distributions()
    pip, conda = pip_pins(), conda_pins()
    missing = []
    for m in sorted(mods):
        names = [_norm(d) for d in dists.get(m, [m])]
        for where, pins in (("envs/requirements.txt", pip), ("envs/environment.yaml", conda)):
            if not any(n in pins or CONDA_NAMES.get(n, n) in pins or _norm(CONDA_NAMES.get(n, n)) in pins
                       for n in names):
                missing.append(f"{m} ({'/'.join(names)}) not in {where}")
    assert not missing, missing


def test_readme_conda_command_parses_with_the_target_as_a_target():
    from snakemake.cli import get_argument_parser

    text = (ROOT / "README.md").read_text()
    m = re.search(r"`(snakemake --profile slurm [^`]*--sdm conda[^`]*)`", text)
    assert m, "README documents the per-rule conda route"
    args = get_argument_parser().parse_args(m.group(1).split()[1:])
    assert args.targets == ["all_tables"] and [str(x).lower() for x in args.software_deployment_method] == ["conda"]


def test_every_rule_command_starts_lct_once():
    for smk in (ROOT / "workflow/rules").glob("*.smk"):
        text = smk.read_text()
        assert "python -m python" not in text and "lct lct" not in text, smk.name
