"""
`trl-rfm data fetch <dataset>`: fetch a real dataset that is not on the Hub from a pinned commit of its git repository,
and check every file's name and row count against the manifest in `trl_rfm.data.fetch`.

    trl-rfm data fetch polis                          # into $TRL_RFM_POLIS_DIR, else ../shared/data/polis
    trl-rfm data fetch polis --output_dir data/polis  # then: --data_dir data/polis, or TRL_RFM_POLIS_DIR=data/polis

Needs git and network access (no network: one error line). See `docs/datasets.md`.
"""

import os
import sys
from dataclasses import dataclass, field

from .common import CLIError, parse_arguments


USAGE = """usage: trl-rfm data fetch <dataset> [--output_dir DIR]

datasets:
  polis      Six English Polis conversations (CC BY 4.0, The Computational Democracy Project), from the openData
             repository at a pinned commit; default folder: $TRL_RFM_POLIS_DIR, else ../shared/data/polis beside
             the checkout."""


@dataclass
class FetchArguments:
    output_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder to write the dataset to (created if needed). Default: where the benchmarks, examples "
            "and tests look ($TRL_RFM_POLIS_DIR, else ../shared/data/polis beside the checkout)."
        },
    )


def main(argv: list[str] | None = None) -> None:
    """`trl-rfm data fetch <dataset> [--output_dir DIR]`."""
    from ..data.fetch import MANIFESTS, POLIS_DIR_ENV, default_polis_dir, fetch_data

    argv = sys.argv[1:] if argv is None else list(argv)
    if (
        not argv
        or argv[0] in ("-h", "--help")
        or (argv[0] == "fetch" and (len(argv) < 2 or argv[1] in ("-h", "--help")))
    ):
        print(USAGE)
        return
    if argv[0] != "fetch":
        raise CLIError(f"unknown subcommand {argv[0]!r}: `trl-rfm data fetch <dataset>` is the one there is.")
    name = argv[1]
    if name not in MANIFESTS:
        raise CLIError(f"unknown dataset {name!r}; one of: {', '.join(MANIFESTS)}.")
    (args,) = parse_arguments(f"data fetch {name}", FetchArguments, argv[2:])
    manifest = MANIFESTS[name]
    default_dir = default_polis_dir()
    output_dir = args.output_dir or default_dir
    print(
        f"{manifest.name}: {len(manifest.files)} files of {len(manifest.folders)} folders from {manifest.repository} "
        f"at {manifest.revision[:12]} into {output_dir}",
        flush=True,
    )
    written = fetch_data(output_dir, manifest)
    if written:
        copied = f" (and {', '.join(manifest.copied_files.values())})" if manifest.copied_files else ""
        print(f"Fetched {len(manifest.files)} files{copied}; every row count matches the manifest.")
    else:
        print("Already there: every file present, every row count matches the manifest. Nothing fetched.")
    if name == "polis":
        from ..data.polis import POLIS_ATTRIBUTION

        print(f"Licence: CC BY 4.0. {POLIS_ATTRIBUTION} (UPSTREAM_README.md has the full statement.)")
        if os.path.abspath(output_dir) != os.path.abspath(default_dir):
            print(
                f"Point the benchmarks and examples at it: --data_dir {output_dir} (or {POLIS_DIR_ENV}={output_dir})."
            )
