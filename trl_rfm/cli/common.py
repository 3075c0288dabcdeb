"""What every `trl-rfm` command shares: parsing its arguments (usage naming the command, one flag vocabulary with
the old spellings kept as hidden deprecated aliases) and reading comparison files."""

import json
import os
import warnings
from collections.abc import Sequence

from datasets import Dataset


# Old flag -> the flag used for the same thing everywhere else.
DEPRECATED_FLAGS = {
    "--model_path": "--model_name_or_path",
    "--synthetic_num_users": "--num_users",
}


def rename_deprecated_flags(argv: Sequence[str], deprecated: dict[str, str] = DEPRECATED_FLAGS) -> list[str]:
    """`argv` with every deprecated flag (`--old value` or `--old=value`) replaced by its current name, warning once
    per flag."""
    renamed = []
    for argument in argv:
        flag, equals, value = argument.partition("=")
        if flag in deprecated:
            warnings.warn(f"`{flag}` is deprecated; use `{deprecated[flag]}`.", DeprecationWarning, stacklevel=3)
            argument = deprecated[flag] + equals + value
        renamed.append(argument)
    return renamed


def parse_arguments(command: str, dataclass_types, argv: Sequence[str] | None):
    """Parses `argv` into `dataclass_types` for `trl-rfm <command>` (so usage and errors name the command)."""
    import sys

    from transformers import HfArgumentParser

    argv = sys.argv[1:] if argv is None else argv
    parser = HfArgumentParser(dataclass_types, prog=f"trl-rfm {command}")
    return parser.parse_args_into_dataclasses(args=rename_deprecated_flags(argv))


class CLIError(ValueError):
    """An error of a `trl-rfm` command's input, printed as one line (the traceback only with `--debug`)."""


def _check_json_lines(path: str) -> None:
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise CLIError(f"{path}, line {number}: not valid JSON ({error.msg}, column {error.colno}).") from None
            if not isinstance(row, dict):
                raise CLIError(f"{path}, line {number}: a comparison must be a JSON object, got {type(row).__name__}.")


def load_comparisons(path: str) -> Dataset:
    """A file of comparisons (`.json`, `.jsonl`, `.csv` or `.parquet`), read by `datasets.load_dataset`. A missing
    or empty file, or a malformed JSON line, is a [`CLIError`] naming the file (and the line)."""
    from ..data.raw import load_data_file

    if not os.path.isfile(path):
        raise CLIError(f"{path} does not exist (or is not a file).")
    if os.path.getsize(path) == 0:
        raise CLIError(f"No comparisons in {path}: the file is empty.")
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".jsonl":
        _check_json_lines(path)
    elif suffix == ".json":
        try:
            with open(path, encoding="utf-8") as handle:
                json.load(handle)
        except json.JSONDecodeError as error:
            if "\n" in open(path, encoding="utf-8").read().strip():
                _check_json_lines(path)  # JSON lines in a .json file, as `datasets` accepts
            else:
                raise CLIError(f"{path}, line {error.lineno}: not valid JSON ({error.msg}).") from None
    try:
        dataset = load_data_file(path)
    except CLIError:
        raise
    except Exception as error:  # datasets wraps parse errors in its own generation errors
        cause = error.__cause__ or error
        raise CLIError(f"Cannot read the comparisons in {path}: {type(cause).__name__}: {cause}") from error
    if len(dataset) == 0:
        raise CLIError(f"No comparisons in {path}.")
    required = {"chosen", "rejected"}
    if not required <= set(dataset.column_names):
        raise CLIError(
            f"{path} lacks the column(s) {sorted(required - set(dataset.column_names))}: a comparison needs `chosen` "
            f"and `rejected` (and optionally `prompt`); the file has {dataset.column_names}."
        )
    return dataset


def synthetic_heldout_split(
    num_users: int,
    num_heldout_users: int,
    train_pairs_per_user: int,
    adaptation_pairs_per_user: int,
    test_pairs_per_user: int,
    disagreement: float,
    seed: int,
):
    """
    Synthetic raters for `demo` and `evaluate`: returns `(data, adaptation, test)`, where `data` is the
    [`SyntheticPreferences`] and each held-out rater's first `adaptation_pairs_per_user` pairs form the adaptation
    pool (`adaptation`), the next `test_pairs_per_user` their test set (`test`).
    """
    from ..testing.synthetic import make_synthetic_preferences

    data = make_synthetic_preferences(
        num_users=num_users,
        num_heldout_users=num_heldout_users,
        train_pairs_per_user=train_pairs_per_user,
        heldout_pairs_per_user=adaptation_pairs_per_user + test_pairs_per_user,
        disagreement=disagreement,
        seed=seed,
    )
    position: dict[str, int] = {}
    is_test = []
    for user_id in data.heldout["user_id"]:
        position[user_id] = position.get(user_id, -1) + 1
        is_test.append(position[user_id] >= adaptation_pairs_per_user)
    adaptation = data.heldout.select([i for i, t in enumerate(is_test) if not t])
    test = data.heldout.select([i for i, t in enumerate(is_test) if t])
    return data, adaptation, test
