"""
Every command of the README and of `docs/*.md` runs, so none can silently break.

The fenced blocks of each page are read in order:

- a ```bash block is a command: it runs with `bash -euo pipefail` in the page's working directory (a temporary
  directory shared by the page's blocks, in page order, so a block can use what an earlier one wrote; `examples/`,
  `benchmarks/` and `docs/` are linked into it, so commands run as from the repository root; `docs/figures/` is a
  copy, so a command that regenerates a figure leaves the repository's own untouched);
- a ```python block runs (with this interpreter, in the same directory) only when marked `<!-- run -->` or
  `<!-- slow -->`; unmarked ones are illustrations with names defined in the prose;
- the HTML comment on the line before a block marks it: `<!-- slow -->` (runs only with the slow tests: training,
  CPU minutes) or `<!-- not run: <reason> -->` (network, GPU, packages, or the test suite itself; listed by
  `test_commands_not_run_say_why`); ```text blocks are output or formulas and never run.

A page whose blocks need a trained model either trains it in an earlier block or names `rfm-tiny`, the model
`examples/train_rfm.py` trains in `docs/training.md`: the session fixture runs that command once and copies its output
into every page's directory. `python -m pytest -m "not slow" tests/test_docs_commands.py` runs the fast blocks
(`--help`, `--version`, files) in well under a minute; `.ci/run` runs all.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\s*$")
MARK = re.compile(r"^<!--\s*(slow|run|not run:?\s*(?P<reason>.*?))\s*-->\s*$")
# The command of docs/training.md that trains `rfm-tiny`, which other pages name as their input.
RFM_TINY_PAGE = REPO / "docs" / "training.md"


def read_blocks(page: Path) -> list[dict]:
    """The fenced blocks of a page: language, code, line, and the mark on the line before (if any)."""
    lines = page.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        start, language = i, opening.group(1)
        i += 1
        while i < len(lines) and lines[i].rstrip() != "```":
            i += 1
        mark = MARK.match(lines[start - 1].strip()) if start > 0 else None
        blocks.append(
            {
                "language": language,
                "code": "\n".join(lines[start + 1 : i]) + "\n",
                "line": start + 1,
                "mark": None if mark is None else mark.group(1).split(":")[0].strip(),
                "reason": None if mark is None else mark.group("reason"),
            }
        )
        i += 1
    return blocks


def runnable(block: dict) -> bool:
    if block["mark"] == "not run" or block["language"] not in ("bash", "python"):
        return False
    return block["language"] == "bash" or block["mark"] in ("run", "slow")


def page_id(page: Path) -> str:
    return str(page.relative_to(REPO))


def block_params():
    params = []
    for page in PAGES:
        for index, block in enumerate(read_blocks(page)):
            if runnable(block):
                marks = [pytest.mark.slow] if block["mark"] == "slow" else []
                params.append(pytest.param(page, index, marks=marks, id=f"{page_id(page)}:{block['line']}"))
    return params


def run_block(block: dict, cwd: Path, timeout: float = 1800) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if block["language"] == "bash":
        command = ["bash", "-euo", "pipefail", "-c", block["code"]]
    else:
        command = [sys.executable, "-c", block["code"]]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def rfm_tiny(tmp_path_factory) -> Path:
    """`rfm-tiny`, trained by the `examples/train_rfm.py` command of docs/training.md."""
    blocks = [b for b in read_blocks(RFM_TINY_PAGE) if "--output_dir rfm-tiny " in b["code"] and runnable(b)]
    assert len(blocks) == 1, f"{page_id(RFM_TINY_PAGE)} must hold one command that trains rfm-tiny"
    work = tmp_path_factory.mktemp("rfm-tiny")
    (work / "examples").symlink_to(REPO / "examples")
    result = run_block(blocks[0], work)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return work / "rfm-tiny"


_workdirs: dict[Path, Path] = {}


@pytest.fixture
def page_dir(request, tmp_path_factory):
    """One working directory per page, shared by its blocks (they run in page order)."""
    page = request.node.callspec.params["page"]
    if page not in _workdirs:
        work = tmp_path_factory.mktemp(page.stem)
        for name in ("examples", "benchmarks"):
            (work / name).symlink_to(REPO / name)
        (work / "docs").mkdir()
        for entry in (REPO / "docs").iterdir():
            if entry.name == "figures":  # commands regenerate figures: into a copy, not the repository's files
                shutil.copytree(entry, work / "docs" / entry.name)
            else:
                (work / "docs" / entry.name).symlink_to(entry)
        _workdirs[page] = work
    return _workdirs[page]


@pytest.mark.parametrize(("page", "index"), block_params())
def test_command(page, index, page_dir, request):
    block = read_blocks(page)[index]
    needs_model = re.search(r"rfm-tiny(?![-\w])", block["code"]) and "--output_dir rfm-tiny " not in block["code"]
    if needs_model and not (page_dir / "rfm-tiny").exists():
        shutil.copytree(request.getfixturevalue("rfm_tiny"), page_dir / "rfm-tiny")
    result = run_block(block, page_dir)
    assert result.returncode == 0, (
        f"{page_id(page)}, line {block['line']}:\n{block['code']}\nstdout:\n{result.stdout[-3000:]}\n"
        f"stderr:\n{result.stderr[-5000:]}"
    )


def test_commands_not_run_say_why():
    """Blocks that are not run (network, GPU, packages, the test suite) say why; no command block lacks a language."""
    problems, skipped = [], []
    for page in PAGES:
        for block in read_blocks(page):
            where = f"{page_id(page)}:{block['line']}"
            if block["mark"] == "not run":
                skipped.append(where)
                if not block["reason"]:
                    problems.append(f"{where}: `not run` without a reason")
            if block["language"] == "":
                problems.append(f"{where}: a fence without a language (```bash, ```python or ```text)")
    assert not problems, "\n".join(problems)
    print(f"{len(skipped)} blocks not run:", *skipped, sep="\n  ")


def test_every_page_has_runnable_or_explained_blocks():
    """The README has at least one fast command and docs/index.md links every page of docs/."""
    assert any(runnable(b) and b["mark"] != "slow" for p in PAGES for b in read_blocks(p))
    index = (REPO / "docs" / "index.md").read_text()
    missing = [p.name for p in PAGES[1:] if p.name != "index.md" and f"({p.name}" not in index]
    assert not missing, f"docs/index.md does not link {missing}"
