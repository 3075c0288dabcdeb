"""Real datasets that are not on the Hub, fetched from a pinned commit of their git repository and checked.

The Polis conversations (CC BY 4.0, The Computational Democracy Project) come from the `openData` repository: a
shallow, sparse checkout of the six conversations' folders at [`POLIS_MANIFEST`]'s commit, then every file's name and
row count checked against the manifest. `trl-rfm data fetch polis [--output_dir DIR]` runs [`fetch_polis`]; the
benchmarks, examples and tests read the folder that [`default_polis_dir`] names (`$TRL_RFM_POLIS_DIR`, else
`../shared/data/polis` beside the source checkout). The commands and sizes are in `docs/datasets.md`.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field


POLIS_DIR_ENV = "TRL_RFM_POLIS_DIR"

# The six English conversations the benchmarks use, and their rows (CSV records after the header, so statements with
# line breaks count once) at the pinned commit.
_POLIS_ROWS = {
    "15-per-hour-seattle": {"comments.csv": 54, "participants-votes.csv": 339, "summary.csv": 9, "votes.csv": 2995},
    "canadian-electoral-reform": {
        "comments.csv": 174,
        "participants-votes.csv": 448,
        "summary.csv": 9,
        "votes.csv": 12018,
    },
    "football-concussions": {
        "comments.csv": 298,
        "participants-votes.csv": 1487,
        "summary.csv": 9,
        "votes.csv": 14924,
    },
    "scoop-hivemind.affordable-housing": {
        "comments.csv": 165,
        "participants-votes.csv": 381,
        "summary.csv": 9,
        "votes.csv": 15076,
    },
    "scoop-hivemind.taxes": {"comments.csv": 148, "participants-votes.csv": 334, "summary.csv": 9, "votes.csv": 17379},
    "scoop-hivemind.ubi": {"comments.csv": 71, "participants-votes.csv": 234, "summary.csv": 9, "votes.csv": 7174},
}


@dataclass(frozen=True)
class DataManifest:
    """What to fetch from a git repository and how to check it.

    Args:
        name: The dataset's name in messages.
        repository: The git URL to fetch from.
        revision: The commit to check out (a full hash, so that the row counts below are those of known files).
        files: Each file's path inside the repository (`folder/file.csv`) and its number of rows: CSV records after
            the header (quoted line breaks do not start a record), every record for the files in `headerless_files`.
        headerless_files: File names (without folder) that have no header row (Polis's `summary.csv`: key,value rows).
        copied_files: Files of the repository's root copied next to the data under a new name (the licence and
            attribution text, which must travel with the data).
    """

    name: str
    repository: str
    revision: str
    files: Mapping[str, int]
    headerless_files: frozenset[str] = frozenset()
    copied_files: Mapping[str, str] = field(default_factory=dict)

    @property
    def folders(self) -> list[str]:
        """The top-level folders holding `files`: the sparse checkout's patterns."""
        return sorted({path.split("/")[0] for path in self.files})


POLIS_MANIFEST = DataManifest(
    name="Polis",
    repository="https://github.com/compdemocracy/openData.git",
    revision="0bc2ce0f32c673f68da20b57bce15c457aa787b5",
    files={f"{folder}/{name}": rows for folder, files in _POLIS_ROWS.items() for name, rows in files.items()},
    headerless_files=frozenset({"summary.csv"}),
    copied_files={"README.md": "UPSTREAM_README.md"},
)

# `trl-rfm data fetch <name>`: the datasets it knows.
MANIFESTS = {"polis": POLIS_MANIFEST}


def default_polis_dir() -> str:
    """The folder of the Polis conversations that benchmarks, examples and tests read when given none.

    `$TRL_RFM_POLIS_DIR` when set; otherwise `../shared/data/polis` beside the source checkout (where `trl-rfm data
    fetch polis` writes by default, outside the repository); for an installed package without a checkout,
    `~/.cache/trl-rfm/polis` (or under `$XDG_CACHE_HOME`).
    """
    if os.environ.get(POLIS_DIR_ENV):
        return os.environ[POLIS_DIR_ENV]
    checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if os.path.isfile(os.path.join(checkout, "pyproject.toml")):
        return os.path.normpath(os.path.join(checkout, "..", "shared", "data", "polis"))
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "trl-rfm", "polis")


def count_csv_rows(path: str | os.PathLike, header: bool = True) -> int:
    """Rows of a CSV file: its non-empty records (a quoted line break does not start one), less the header."""
    with open(path, newline="", encoding="utf-8") as handle:
        records = sum(1 for record in csv.reader(handle) if record)
    return records - 1 if header and records else records


def check_data_files(directory: str | os.PathLike, manifest: DataManifest = POLIS_MANIFEST) -> list[str]:
    """What in `directory` differs from `manifest`: one line per missing file or wrong row count (empty if none)."""
    problems = []
    for path, expected in manifest.files.items():
        location = os.path.join(directory, *path.split("/"))
        if not os.path.isfile(location):
            problems.append(f"{path}: missing")
            continue
        rows = count_csv_rows(location, header=os.path.basename(path) not in manifest.headerless_files)
        if rows != expected:
            problems.append(f"{path}: {rows} rows, expected {expected}")
    return problems


def _git(arguments: list[str], manifest: DataManifest, cwd: str | None = None) -> None:
    # Never ask for credentials (a wrong URL on GitHub answers with a login prompt) and give up on a stalled
    # connection instead of hanging: the command either fetches or fails with git's reason.
    env = {
        **os.environ,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_HTTP_LOW_SPEED_LIMIT": "1000",
        "GIT_HTTP_LOW_SPEED_TIME": "60",
    }
    try:
        result = subprocess.run(["git", *arguments], cwd=cwd, env=env, capture_output=True, text=True)
    except FileNotFoundError:
        raise OSError(f"Fetching the {manifest.name} data needs git, which is not on PATH.") from None
    if result.returncode != 0:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        reason = next(
            (line for line in reversed(lines) if line.startswith(("fatal:", "error:"))), lines[-1] if lines else ""
        )
        raise ConnectionError(
            f"Could not fetch the {manifest.name} data from {manifest.repository} (commit {manifest.revision[:12]}): "
            f"`git {arguments[0]}` failed: {reason or f'exit status {result.returncode}'}. Is the network available? "
            "docs/datasets.md has the commands to run by hand."
        )


def fetch_data(output_dir: str | os.PathLike, manifest: DataManifest = POLIS_MANIFEST) -> list[str]:
    """Fetches `manifest.files` into `output_dir` (same relative paths) and checks them; returns the files written.

    Nothing is fetched when `output_dir` already holds every file with the manifest's row counts (the list is then
    empty). Files that are present but differ are an error rather than overwritten. The checkout (shallow, sparse, no
    blobs but those of the manifest's folders) goes to a temporary folder beside `output_dir`, and files are moved in
    only once all of them check out, so a failed fetch leaves `output_dir` as it was.

    Raises:
        ConnectionError: git could not fetch (no network, unknown repository or commit).
        ValueError: `output_dir` holds different files, or the fetched files differ from the manifest.
    """
    output_dir = os.fspath(output_dir)
    present = check_data_files(output_dir, manifest)
    if not present:
        return []
    differing = [problem for problem in present if not problem.endswith(": missing")]
    if differing:
        raise ValueError(
            f"{output_dir} already holds {manifest.name} files that differ from the manifest ({'; '.join(differing)}): "
            "remove them or choose another output folder."
        )
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=parent) as checkout:
        _git(["init", "--quiet", checkout], manifest)
        _git(["remote", "add", "origin", manifest.repository], manifest, cwd=checkout)
        _git(["sparse-checkout", "set", *manifest.folders], manifest, cwd=checkout)
        _git(
            ["fetch", "--quiet", "--depth", "1", "--filter=blob:none", "origin", manifest.revision],
            manifest,
            cwd=checkout,
        )
        _git(["checkout", "--quiet", "--detach", manifest.revision], manifest, cwd=checkout)
        problems = check_data_files(checkout, manifest)
        if problems:
            raise ValueError(
                f"The {manifest.name} files of {manifest.repository} at {manifest.revision[:12]} differ from the "
                f"manifest: {'; '.join(problems)}."
            )
        moves = {**{path: path for path in manifest.files}, **manifest.copied_files}
        absent = [source for source in moves if not os.path.isfile(os.path.join(checkout, *source.split("/")))]
        if absent:
            raise ValueError(f"{manifest.repository} at {manifest.revision[:12]} has no {', '.join(absent)}.")
        for source, target in moves.items():
            target_path = os.path.join(output_dir, *target.split("/"))
            os.makedirs(os.path.dirname(target_path), exist_ok=True)
            shutil.move(os.path.join(checkout, *source.split("/")), target_path)
    return list(moves.values())


def fetch_polis(output_dir: str | os.PathLike | None = None) -> list[str]:
    """Fetches the six Polis conversations of [`POLIS_MANIFEST`] into `output_dir` (default: [`default_polis_dir`])
    and checks them; see [`fetch_data`]."""
    return fetch_data(default_polis_dir() if output_dir is None else output_dir, MANIFESTS["polis"])
