"""
The lowest TRL that pyproject.toml declares, proven: the parity suite's fast scenarios (`tests/test_trl_parity.py -m
"not slow"`) run in a side virtual environment with TRL, accelerate and datasets at their declared floors (read from
pyproject.toml: `trl>=1.13` and the floors of accelerate and datasets, which are TRL 1.16's own), the rest of this
environment's packages reused (`--system-site-packages`: torch is not downloaded again). pip may move other packages
there to satisfy those floors (datasets 4.7 caps huggingface_hub below 2, which takes transformers back to 5.24): the
test prints the versions it ran.

The environment is built once and cached (`~/.cache/trl-rfm/venv-trl-<floor>`, or `$TRL_RFM_LOWEST_TRL_VENV`); it
needs a package index the first time, and the test is skipped, with the reason, only when it cannot be built.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PINNED = ("trl", "accelerate", "datasets")  # installed at their floors; the rest comes from this environment
VERSIONS = (
    "import accelerate, datasets, transformers, trl; "
    "print(trl.__version__, accelerate.__version__, datasets.__version__, transformers.__version__)"
)


def declared_floors() -> dict[str, str]:
    """`{package: lowest version}` of `PINNED`, from pyproject.toml's dependencies."""
    text = (REPO / "pyproject.toml").read_text()
    floors = {}
    for name in PINNED:
        match = re.search(rf'^\s*"{name}>=([0-9][0-9.]*)', text, flags=re.MULTILINE)
        assert match, f"pyproject.toml declares no floor for {name}"
        floors[name] = match.group(1)
    return floors


def _versions(python: Path) -> list[str] | None:
    if not python.exists():
        return None
    result = subprocess.run([str(python), "-c", VERSIONS], capture_output=True, text=True)
    return result.stdout.split() if result.returncode == 0 else None


@pytest.fixture(scope="module")
def lowest_python() -> Path:
    floors = declared_floors()
    default = Path.home() / ".cache" / "trl-rfm" / f"venv-trl-{floors['trl']}"
    venv = Path(os.environ.get("TRL_RFM_LOWEST_TRL_VENV", default))
    python = venv / "bin" / "python"
    wanted = [floors[name] for name in PINNED]
    versions = _versions(python)
    if versions is None or [_normal(v) for v in versions[:3]] != [_normal(v) for v in wanted]:
        steps = [
            [sys.executable, "-m", "venv", "--clear", "--system-site-packages", str(venv)],
            # torch first, pinned: an unpinned resolve could pull a CUDA build of several GB.
            [str(python), "-m", "pip", "install", "-q", "torch==2.13.0"],
            [str(python), "-m", "pip", "install", "-q", *(f"{name}=={floors[name]}" for name in PINNED)],
        ]
        for step in steps:
            result = subprocess.run(step, capture_output=True, text=True)
            if result.returncode != 0:
                pytest.skip(
                    f"cannot build the TRL {floors['trl']} environment ({' '.join(step[-3:])}): {result.stderr[-500:]}"
                )
        versions = _versions(python)
    assert versions is not None and [_normal(v) for v in versions[:3]] == [_normal(v) for v in wanted], versions
    return python


def _normal(version: str) -> tuple[int, ...]:
    numbers = [int(part) for part in re.findall(r"\d+", version)[:3]]
    return tuple(numbers + [0] * (3 - len(numbers)))


def test_parity_scenarios_pass_on_the_lowest_declared_trl(lowest_python, capsys):
    trl, accelerate, datasets, transformers = _versions(lowest_python)
    with capsys.disabled():
        print(f"\nTRL {trl}, accelerate {accelerate}, datasets {datasets}, transformers {transformers}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    command = [str(lowest_python), "-m", "pytest", "tests/test_trl_parity.py", "-m", "not slow", "-q",
               "-p", "no:cacheprovider", "-W", "ignore"]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, f"on TRL {trl}: {summary}\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}"
    assert re.search(r"\d+ passed", summary) and "failed" not in summary, summary
