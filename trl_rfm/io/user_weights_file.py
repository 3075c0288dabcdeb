"""
The user-weights file: the per-user table of a Reward Feature Model and its id vocabulary, kept apart from the model.

User weights identify people (one row per rater), so they never go into `model.safetensors`, `config.json` or
`adapter_model.safetensors`; they live in `user_weights.safetensors` beside them:

- tensor `user_weights`: `[U, d]`, one row per user, in row order;
- metadata `user_ids`: the JSON list of the users' ids (same order), `num_features`, `format_version`, and
  `feature_fingerprint`, a hash of the feature head the rows were fitted to.

A row `w_u` only means something with the features `phi` it was fitted to (`r_u = phi · w_u`), so the fingerprint binds
the file to its model: a user file from another model, or a half-replaced directory, fails loudly instead of scoring
users with someone else's weights.
"""

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file


USER_WEIGHTS_NAME = "user_weights.safetensors"
# config.json attribute of an upload that left the user file out: the users it records (`num_saved_users`) exist, but
# their weights were withheld (personal data), so a load must say what to do rather than drop them.
USERS_WITHHELD_ATTRIBUTE = "user_weights_withheld"
USER_WEIGHTS_TENSOR = "user_weights"
FORMAT_VERSION = "1"


class UserWeightsFileError(ValueError):
    """A user-weights file that cannot be used with the model it is loaded with."""


@dataclass
class UserWeightsFile:
    """What `user_weights.safetensors` holds."""

    user_ids: list[str]
    weights: torch.Tensor  # [U, d]
    feature_fingerprint: str


def feature_fingerprint(feature_head_weight: torch.Tensor) -> str:
    """
    Hash of the feature head exactly as stored (dtype, shape and bytes), so that a user file can be matched to the
    features its rows were fitted to. It is computed from the tensor in the saved weights file, at save and at load
    time alike, hence independent of the dtype a model is later loaded in.
    """
    tensor = feature_head_weight.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def table_checksum(weights: torch.Tensor, user_ids_json: str) -> str:
    """SHA-256 of the user table as stored (dtype, shape, bytes) and of its ids (the metadata's JSON), written into the
    file's metadata and verified on every load, so that a flipped byte is an error rather than another weight."""
    tensor = weights.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    digest.update(b"|")
    digest.update(user_ids_json.encode("utf-8"))
    return digest.hexdigest()


def save_user_weights(path: str, user_ids: list[str], weights: torch.Tensor, fingerprint: str) -> None:
    """Writes a user-weights file atomically (a temporary file in the same folder, then `os.replace`)."""
    weights = weights.detach().cpu().contiguous()
    if weights.ndim != 2 or weights.shape[0] != len(user_ids):
        raise ValueError(f"{len(user_ids)} user ids for a user table of shape {tuple(weights.shape)}.")
    user_ids_json = json.dumps(list(user_ids))
    metadata = {
        "format": "pt",
        "format_version": FORMAT_VERSION,
        "user_ids": user_ids_json,
        "num_features": str(weights.shape[1]),
        "feature_fingerprint": fingerprint,
        "sha256": table_checksum(weights, user_ids_json),
    }
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    os.close(handle)
    try:
        save_file({USER_WEIGHTS_TENSOR: weights}, temporary, metadata=metadata)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def load_user_weights(
    path: str,
    num_features: int | None = None,
    expected_fingerprint: str | None = None,
    weights_file: str | None = None,
) -> UserWeightsFile:
    """
    Reads and validates a user-weights file. Every problem raises a [`UserWeightsFileError`] (a `ValueError`) naming
    the file and the mismatch; a missing file raises `FileNotFoundError`.

    Args:
        path: the `user_weights.safetensors` file.
        num_features: the model's feature dimension `d`, which the rows must have.
        expected_fingerprint: [`feature_fingerprint`] of the model's feature head, which the file must be saved for.
        weights_file: name of the file holding that feature head, for the error message.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"User weights file {path} does not exist.")
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
            keys = list(handle.keys())
            weights = handle.get_tensor(USER_WEIGHTS_TENSOR) if USER_WEIGHTS_TENSOR in keys else None
    except (SafetensorError, OSError, ValueError) as error:
        raise UserWeightsFileError(f"{path} is not a readable safetensors file ({error}); it is corrupt or truncated.")
    if weights is None:
        raise UserWeightsFileError(f"{path} has no {USER_WEIGHTS_TENSOR!r} tensor (it holds {keys}).")
    missing = [key for key in ("user_ids", "feature_fingerprint") if key not in metadata]
    if missing:
        raise UserWeightsFileError(f"{path} lacks the metadata {missing}: it was not written by trl-rfm.")
    if metadata.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
        raise UserWeightsFileError(
            f"{path} has format version {metadata['format_version']!r}; this trl-rfm reads version {FORMAT_VERSION}."
        )
    try:
        user_ids = json.loads(metadata["user_ids"])
    except json.JSONDecodeError as error:
        raise UserWeightsFileError(f"{path}: the `user_ids` metadata is not valid JSON ({error}).") from None
    if not isinstance(user_ids, list) or not all(isinstance(u, str) for u in user_ids):
        raise UserWeightsFileError(f"{path}: the `user_ids` metadata must be a JSON list of strings.")
    if weights.ndim != 2:
        raise UserWeightsFileError(f"{path}: the user table must be [users, features], not {tuple(weights.shape)}.")
    if len(user_ids) != weights.shape[0]:
        raise UserWeightsFileError(
            f"{path}: its vocabulary has {len(user_ids)} user ids but its table has {weights.shape[0]} rows."
        )
    if len(set(user_ids)) != len(user_ids):
        duplicates = sorted({u for u in user_ids if user_ids.count(u) > 1})[:5]
        raise UserWeightsFileError(f"{path}: duplicate user ids {duplicates}.")
    if num_features is not None and weights.shape[1] != num_features:
        raise UserWeightsFileError(
            f"{path}: its users have {weights.shape[1]} features but the model has num_features={num_features}."
        )
    if not torch.isfinite(weights).all():
        raise UserWeightsFileError(f"{path}: the user table contains NaN or infinite values.")
    checksum = metadata.get("sha256")  # absent in files written before checksums
    if checksum is not None and checksum != table_checksum(weights, metadata["user_ids"]):
        raise UserWeightsFileError(
            f"{path} is corrupt: its user table or user ids do not match the SHA-256 checksum stored in the file "
            f"({checksum[:12]}…), e.g. a flipped byte or a damaged copy. Restore the file from a good copy, or adapt "
            "the users again (`trl_rfm.fit_user_weights`)."
        )
    fingerprint = metadata["feature_fingerprint"]
    if expected_fingerprint is not None and fingerprint != expected_fingerprint:
        raise UserWeightsFileError(
            f"{path} was saved for another model: its feature fingerprint {fingerprint[:12]}… does not match the "
            f"feature head in {weights_file or 'the model weights'} ({expected_fingerprint[:12]}…). User weights only "
            "mean something with the features they were fitted to; use the user file saved with this model, or adapt "
            "the users again (`trl_rfm.fit_user_weights`)."
        )
    return UserWeightsFile(user_ids=user_ids, weights=weights, feature_fingerprint=fingerprint)
