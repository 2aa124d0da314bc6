"""README's commands run as typed: the demo command of the first block and every `snakemake` / `lct`
command of the cluster section, each as a dry-run from the repository root (a real run of the demo is
`tests/test_workflow.py`'s business, the SLURM path `tests/test_slurm.py`'s)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
pytestmark = [pytest.mark.workflow, pytest.mark.slow]


def _commands() -> list[str]:
    """`snakemake ...` and `lct ...` commands in code (inline or fenced) of the README's first block and
    of its cluster section, without environment assignments and comments."""
    first = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    cluster = README[README.index("## On a SLURM cluster"):README.index("### Two readings of the paper")]
    found = []
    for chunk in [first, *re.findall(r"```bash\n(.*?)```", cluster, re.S), *re.findall(r"`([^`\n]+)`", cluster)]:
        for line in chunk.splitlines():
            line = line.split("#", 1)[0].strip()
            for part in line.split("&&"):
                try:
                    words = shlex.split(part)
                except ValueError:  # prose in backticks (an unbalanced quote): not a command
                    continue
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                    words = words[1:]
                runnable = words and words[0] in ("snakemake", "lct") and len(words) > 1 and \
                    not any(re.fullmatch(r"[A-Z]+", w) for w in words) and words[:2] != ["lct", "train"]
                if runnable:  # placeholders (`--train-ips N`) and mentions of `lct train` are not commands
                    found.append(shlex.join(words))
    return sorted(set(found))


COMMANDS = _commands()


def test_readme_has_the_commands_a_site_user_types():
    text = "\n".join(COMMANDS)
    for needed in ("snakemake --profile profiles/demo all", "snakemake --profile slurm all_tables",
                   "snakemake -n all_tables", "snakemake --profile slurm cell --config cell=", "lct estimate",
                   "snakemake --profile slurm fetch_weights"):
        assert needed in text, (needed, COMMANDS)


@pytest.mark.parametrize("command", [c for c in COMMANDS if not re.search(r"--report|--unlock|--sdm|--lint", c)])
def test_readme_command_runs_as_typed(command):
    words = shlex.split(command)
    if words[0] == "snakemake":
        if "-n" not in words:
            words.insert(1, "-n")  # plans, queues nothing
        cmd = [sys.executable, "-m", "snakemake", *words[1:]]
        if "--profile" in words and words[words.index("--profile") + 1] == "slurm" and \
                not (Path.home() / ".config/snakemake/slurm").exists():
            pytest.skip("no ~/.config/snakemake/slurm (envs/setup.sh installs it)")
    else:
        cmd = [sys.executable, "-m", "lct", *words[1:]]
    env = {k: v for k, v in os.environ.items() if k != "LCT_SITE_CONFIG"}
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180, env=env)
    assert r.returncode == 0, f"{command}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
