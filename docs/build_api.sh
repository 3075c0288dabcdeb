#!/usr/bin/env bash
# Builds the API reference of trl_rfm from its docstrings with pdoc (`pip install -e ".[docs]"`) into $1 (default: a
# temporary directory) and fails on any warning or error, so a broken docstring fails CI.
# Usage: bash docs/build_api.sh [output_dir]
set -euo pipefail
out="${1:-$(mktemp -d)}"
log="$(mktemp)"
export HF_HUB_OFFLINE=1 TRL_EXPERIMENTAL_SILENCE=1
if ! python -m pdoc trl_rfm --docformat google -o "$out" >"$log" 2>&1; then
    cat "$log" >&2
    echo "build_api.sh: pdoc failed" >&2
    exit 1
fi
# Any warning fails (a docstring pdoc cannot parse, a submodule that does not import, ...), except annotations of
# signatures inherited from transformers that pdoc evaluates in our module's namespace ("Import of Literal failed"),
# and TYPE_CHECKING imports of transformers' optional dependencies (transformers 5.25's `kernels_mode` annotation needs
# the `kernels` package); a TYPE_CHECKING import of trl_rfm itself that fails still fails the build.
if grep -iE "warn|error" "$log" \
    | grep -vE "Error parsing type annotation .* Import of [A-Za-z_]+ failed" \
    | grep -vE "Failed to run TYPE_CHECKING code .*: No module named '([^t]|t[^r]|tr[^l]|trl[^_])" \
    | grep -q .; then
    cat "$log" >&2
    echo "build_api.sh: pdoc reported warnings" >&2
    exit 1
fi
echo "API reference written to $out"
