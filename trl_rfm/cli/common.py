"""What every `trl-rfm` command shares: parsing its arguments (usage naming the command, one flag vocabulary with
the old spellings kept as hidden deprecated aliases) and reading comparison files."""

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


def load_comparisons(path: str) -> Dataset:
    """A file of comparisons (`.json`, `.jsonl`, `.csv` or `.parquet`), read by `datasets.load_dataset`."""
    from ..data.raw import load_data_file

    return load_data_file(path)
