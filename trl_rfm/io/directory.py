"""
Atomic saves: a model is written into a temporary sibling folder and moved into place, onto a missing or empty
destination by one atomic rename; into a non-empty one file by file, stale weights removed first and the user file
last. A save interrupted at any point leaves either the previous model, or a mix the loader rejects (the user file
carries a fingerprint of the feature head it belongs to, checked at every load).
"""

import contextlib
import fnmatch
import os
import shutil
import tempfile
from collections.abc import Iterator

from .feature_head import ADAPTER_CONFIG_NAME, ADAPTER_SAFE_WEIGHTS_NAME
from .user_weights_file import USER_WEIGHTS_NAME


# Files a save writes or supersedes; stale ones would shadow the new weights (transformers prefers model.safetensors
# over an index, and an adapter_config.json turns a directory into an adapter).
MODEL_FILE_PATTERNS = (
    "config.json",
    "model*.safetensors",
    "model*.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model*.bin.index.json",
    ADAPTER_CONFIG_NAME,
    ADAPTER_SAFE_WEIGHTS_NAME,
    "adapter_model.bin",
    USER_WEIGHTS_NAME,
)


@contextlib.contextmanager
def staged_directory(save_directory: str | os.PathLike) -> Iterator[str]:
    """Yields an empty folder beside `save_directory`; on success its files replace the destination's (see module
    docstring), on failure it is removed and the destination is untouched."""
    destination = os.path.abspath(os.fspath(save_directory))
    if os.path.isfile(destination):
        raise NotADirectoryError(f"Cannot save a model to {destination}: it is a file.")
    parent = os.path.dirname(destination)
    os.makedirs(parent, exist_ok=True)
    # A leading underscore: the Trainer's Hub uploads skip `_*`, so a staging folder left by a crash is never pushed.
    staging = tempfile.mkdtemp(prefix=f"_tmp-{os.path.basename(destination)}-", dir=parent)
    try:
        yield staging
        _commit(staging, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _is_model_file(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in MODEL_FILE_PATTERNS)


def _commit(staging: str, destination: str) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp creates 0700 folders; a saved model gets the usual permissions
    if not os.path.exists(destination) or (os.path.isdir(destination) and not os.listdir(destination)):
        os.replace(staging, destination)  # one atomic rename
        return
    new_names = set(os.listdir(staging))
    # 1. Stale model files first: left beside the new ones they could shadow them. The old user file stays until
    #    the end; until then its fingerprint no longer matches and loading fails instead of mixing models.
    for name in os.listdir(destination):
        if name not in new_names and name != USER_WEIGHTS_NAME and _is_model_file(name):
            _remove(os.path.join(destination, name))
    # 2. The new files, the user table last.
    for name in sorted(new_names, key=lambda name: name == USER_WEIGHTS_NAME):
        target = os.path.join(destination, name)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        os.replace(os.path.join(staging, name), target)
    if USER_WEIGHTS_NAME not in new_names and os.path.exists(os.path.join(destination, USER_WEIGHTS_NAME)):
        os.remove(os.path.join(destination, USER_WEIGHTS_NAME))


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)
