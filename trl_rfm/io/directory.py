"""
Atomic saves: a model is written into a temporary sibling folder (`_tmp-<name>-<pid>-*`) and then committed:

- destination missing, or holding no model yet (a fresh folder, a Trainer checkpoint, an output folder with only
  logs or checkpoints): the folder is renamed onto a missing or empty destination in one step, otherwise its files are
  moved in one by one, `config.json` last, so that a crash leaves either no loadable model or the whole save;
- destination holding a model (saving over a previous one): the files of the destination that the new save does not
  supersede (tokenizer, checkpoints, notes, ...) are hard-linked into the staged folder, and the two folders are
  swapped in one atomic `renameat2(RENAME_EXCHANGE)` (Linux; elsewhere two renames, with the previous folder kept as
  `_old-<name>-<pid>-*` until the new one is in place, and restored by the next save if a crash came in between).

A save interrupted at any point therefore leaves the previous model intact and loadable, or the complete new one. A
staging folder left behind by a killed process (no `finally` ran) is removed by the next save into the same parent
folder, once its process is gone.
"""

import contextlib
import ctypes
import errno
import fnmatch
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
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
# Files whose presence means the folder holds a model that an interrupted save must not destroy.
MODEL_MARKERS = ("config.json", ADAPTER_CONFIG_NAME)
STAGING_PREFIX = "_tmp-"
BACKUP_PREFIX = "_old-"
STAGING_MARKER = ".trl_rfm_staging"  # inside a staging folder: {"pid", "host", "destination"}; removed at commit
# A staging folder whose marker is gone (its commit had begun): `_tmp-<name>-<pid>-<8 random characters>`.
_STAGING_WITH_PID = re.compile(r"^_tmp-.+-(\d+)-[a-z0-9_]{8}$")
_BACKUP = re.compile(r"^_old-(.+)-(\d+)-[a-z0-9_]{8}$")
# Staging folders of earlier trl-rfm versions, which carried no marker: `_tmp-<name>-<8 random characters>`.
_LEGACY_STAGING = re.compile(r"^_tmp-.+-[a-z0-9_]{8}$")
_STALE_AFTER_S = 24 * 3600  # a staging folder of another host is stale after this long


@contextlib.contextmanager
def staged_directory(save_directory: str | os.PathLike) -> Iterator[str]:
    """Yields an empty folder beside `save_directory`; on success it replaces the destination (see module
    docstring), on failure it is removed and the destination is untouched."""
    destination = os.path.abspath(os.fspath(save_directory))
    if os.path.isfile(destination):
        raise NotADirectoryError(f"Cannot save a model to {destination}: it is a file.")
    parent = os.path.dirname(destination)
    os.makedirs(parent, exist_ok=True)
    recover_interrupted_swap(destination)
    remove_stale_staging(parent)
    # A leading underscore: the Trainer's Hub uploads skip `_*`, so a staging folder left by a crash is never pushed.
    staging = tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.path.basename(destination)}-{os.getpid()}-", dir=parent)
    try:
        with open(os.path.join(staging, STAGING_MARKER), "w", encoding="utf-8") as handle:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "destination": destination}, handle)
        yield staging
        os.remove(os.path.join(staging, STAGING_MARKER))
        _commit(staging, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _is_model_file(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in MODEL_FILE_PATTERNS)


def holds_model(directory: str) -> bool:
    return any(os.path.isfile(os.path.join(directory, name)) for name in MODEL_MARKERS)


def _commit(staging: str, destination: str) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp creates 0700 folders; a saved model gets the usual permissions
    if not os.path.exists(destination) or (os.path.isdir(destination) and not os.listdir(destination)):
        os.replace(staging, destination)  # one atomic rename
        return
    if not holds_model(destination):
        _move_in(staging, destination)
        return
    # Saving over a model: carry over what the new save does not supersede, then swap the two folders.
    new_names = set(os.listdir(staging))
    for name in os.listdir(destination):
        if name in new_names or name == STAGING_MARKER or _is_model_file(name):  # stale model files would shadow
            continue
        _link_tree(os.path.join(destination, name), os.path.join(staging, name))
    _swap(staging, destination)


def _move_in(staging: str, destination: str) -> None:
    """Moves the staged files into a destination that holds no model yet, `config.json` (what makes the folder a
    loadable model) last; stale weights files are removed first so that none can shadow the new ones."""
    new_names = set(os.listdir(staging))
    for name in os.listdir(destination):
        if name not in new_names and _is_model_file(name):
            _remove(os.path.join(destination, name))
    # `config.json` is the commit: a LoRA save's `adapter_config.json` goes in just before it, and a folder with the
    # adapter but without `config.json` is an unfinished save, not a model. (Swapping folders instead would lose files
    # other ranks write into a checkpoint folder meanwhile.)
    for name in sorted(new_names, key=lambda name: (name in MODEL_MARKERS, name == "config.json")):
        target = os.path.join(destination, name)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        os.replace(os.path.join(staging, name), target)


def _link_tree(source: str, target: str) -> None:
    """Hard-links `source` (a file, a link or a folder, recursively) to `target`, copying where links fail."""
    if os.path.islink(source):
        os.symlink(os.readlink(source), target)
    elif os.path.isdir(source):
        shutil.copytree(source, target, symlinks=True, copy_function=_link_or_copy)
    else:
        _link_or_copy(source, target)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(first: str, second: str) -> bool:
    """Atomically swaps two paths (Linux `renameat2(RENAME_EXCHANGE)`); `False` where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # filesystem or kernel without RENAME_EXCHANGE
        return False
    raise OSError(code, f"Cannot swap {first} and {second}: {os.strerror(code)}")


def _swap(staging: str, destination: str) -> None:
    """Puts `staging` at `destination`; the previous destination ends up at `staging` (removed by the caller)."""
    if _exchange(staging, destination):
        return
    parent, name = os.path.split(destination)
    backup = tempfile.mkdtemp(prefix=f"{BACKUP_PREFIX}{name}-{os.getpid()}-", dir=parent)
    os.rmdir(backup)  # only the unique name is wanted
    os.replace(destination, backup)
    # A crash here leaves no destination and the previous model in `backup`: `recover_interrupted_swap` restores it.
    os.replace(staging, destination)
    os.replace(backup, staging)  # removed with the staging folder


def recover_interrupted_swap(destination: str) -> str | None:
    """If a save was interrupted between the two renames of a swap (systems without `RENAME_EXCHANGE`), the
    destination is missing and its previous contents are in `_old-<name>-*`: puts them back. Returns the restored
    backup's path, or `None`."""
    if os.path.exists(destination):
        return None
    parent, name = os.path.split(destination)
    if not os.path.isdir(parent):
        return None
    prefix = f"{BACKUP_PREFIX}{name}-"
    backups = sorted(
        (os.path.join(parent, entry) for entry in os.listdir(parent) if entry.startswith(prefix)),
        key=os.path.getmtime,
    )
    if not backups:
        return None
    os.replace(backups[-1], destination)
    return backups[-1]


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _is_stale_staging(path: str) -> bool:
    marker = os.path.join(path, STAGING_MARKER)
    if os.path.isfile(marker):
        try:
            with open(marker, encoding="utf-8") as handle:
                owner = json.load(handle)
            pid, host = int(owner["pid"]), str(owner["host"])
        except (OSError, ValueError, KeyError, TypeError):
            return time.time() - os.path.getmtime(path) > 60  # a marker being written, or a broken one
        if host == socket.gethostname():
            return not _process_alive(pid)
        return time.time() - os.path.getmtime(path) > _STALE_AFTER_S
    # Marker removed: the commit had begun (after a swap the folder holds the previous model, left by a kill).
    match = _STAGING_WITH_PID.match(os.path.basename(path))
    if match:
        return not _process_alive(int(match.group(1)))
    # Older trl-rfm wrote no marker: such a folder is ours only if it holds nothing but what a save writes.
    if not _LEGACY_STAGING.match(os.path.basename(path)):
        return False
    names = os.listdir(path)
    return all(_is_model_file(name) or name in ("README.md",) or name.startswith(".") for name in names)


def remove_stale_staging(parent: str) -> list[str]:
    """Removes the staging folders (`_tmp-*`) and swap backups (`_old-*`) in `parent` left by saves whose process is
    gone (killed before it could clean up). Returns the removed paths."""
    removed = []
    try:
        entries = os.listdir(parent)
    except OSError:
        return removed
    for entry in entries:
        path = os.path.join(parent, entry)
        if not entry.startswith((STAGING_PREFIX, BACKUP_PREFIX)) or os.path.islink(path) or not os.path.isdir(path):
            continue
        try:
            if entry.startswith(BACKUP_PREFIX):
                # The previous folder of a swap cut in two, once the new one is in place (else it is restored).
                match = _BACKUP.match(entry)
                stale = bool(match) and os.path.isdir(os.path.join(parent, match.group(1)))
                stale = stale and not _process_alive(int(match.group(2)))
            else:
                stale = _is_stale_staging(path)
        except OSError:
            continue
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)
