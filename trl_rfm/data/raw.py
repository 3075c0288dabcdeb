"""Reading a source's raw split and checking its columns, shared by the loaders of `trl_rfm.data`.

Every loader reads its upstream data with [`datasets.load_dataset`], so a Hub id (`"openai/summarize_from_feedback"`)
and a local copy of the same repository (a directory with the upstream files, and the upstream `README.md` when the
source has several configs) go through the same code path. A single local data file (`.jsonl`, `.json`, `.parquet`,
`.csv`) is also accepted and read with the matching packaged builder.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from datasets import Dataset, load_dataset


#: Columns of the canonical pairwise rows produced by every loader (`margin` is optional).
CANONICAL_COLUMNS = ("prompt", "chosen", "rejected", "user_id")

_BUILDER_BY_SUFFIX = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def load_data_file(path: str | os.PathLike, split: str = "train") -> Dataset:
    """Read one local data file (`.json`, `.jsonl`, `.csv` or `.parquet`) as a `Dataset`, with the packaged
    `datasets` builder its extension names; any other extension raises a `ValueError` naming the accepted ones."""
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in _BUILDER_BY_SUFFIX:
        raise ValueError(f"Unsupported data file {path!r}: use one of {', '.join(sorted(_BUILDER_BY_SUFFIX))}.")
    return load_dataset(_BUILDER_BY_SUFFIX[suffix], data_files={split: path}, split=split)


def load_raw_split(
    path_or_id: str | os.PathLike,
    split: str,
    name: str | None = None,
    data_files: str | list[str] | dict[str, str | list[str]] | None = None,
) -> Dataset:
    """Load one split of an upstream dataset, from the Hub or from a local directory or file.

    Args:
        path_or_id: Hub dataset id, local directory holding the upstream files, or a single local data file.
        split: Split to load (for a single file, the file is read as this split).
        name: Dataset config (e.g. `"comparisons"`); ignored for a single file.
        data_files: Optional explicit data files, forwarded to `load_dataset`.
    """
    path = os.fspath(path_or_id)
    if os.path.isfile(path):
        return load_data_file(path, split)
    return load_dataset(path, name, split=split, data_files=data_files)


def require_columns(dataset: Dataset, columns: Iterable[str], *, source: str, rater_column: str | None = None) -> None:
    """Raise a `ValueError` naming the missing columns (and the rater column, if it is among them).

    Args:
        dataset: The raw dataset to check.
        columns: Columns the loader reads.
        source: Human-readable name of the source, used in the message.
        rater_column: The column holding the rater id, reported specially because a dataset without raters cannot
            be used to train a personalised reward model.
    """
    found = list(dataset.column_names)
    missing = [column for column in columns if column not in found]
    if rater_column is not None and rater_column not in found:
        raise ValueError(
            f"{source}: rater column {rater_column!r} not found; columns found: {found}. "
            f"A personalised reward model needs the id of the rater of every comparison."
        )
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}; columns found: {found}.")


def column_values(dataset: Dataset, column: str) -> list:
    """All values of one column as a Python list, in one Arrow conversion (row-wise access is slow)."""
    return dataset.select_columns([column]).to_dict()[column]
