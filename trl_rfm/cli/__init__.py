"""The `trl-rfm` command line: one module per command (`demo`, `adapt`, `evaluate`, `export`, `serve`), dispatched by
[`main`], sharing [`common`]'s argument parsing and file loading."""

from .main import COMMANDS, main
