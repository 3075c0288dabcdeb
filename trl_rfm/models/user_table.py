"""The table of per-user reward weights `w_u` and the population weights `w_pop`, and the users' id vocabulary."""

import contextlib
import math
import os
import warnings
from collections.abc import Hashable, Iterable, Sequence

import torch
from torch import nn


POPULATION_INDEX = -1  # row of the user table (as returned by `UserWeights.forward`) holding the population weights
# "1": `check_user_index` checks an accelerator's indices synchronously, with an `IndexError` naming the bad ones, at
# the cost of one host-device synchronisation per forward.
DEBUG_USER_INDEX_ENV = "TRL_RFM_DEBUG_USER_INDEX"


def check_user_index(user_index: torch.Tensor, num_users: int) -> torch.Tensor:
    """
    `user_index` (rows of the user table, `-1` for the population) as a long tensor. Any other negative index, or one
    past the users, would silently read another user's row, so the range is checked on every forward, without making
    the host wait for the device:

    - on the CPU: an `IndexError` naming the bad values;
    - on a CUDA device: `torch._assert_async`, queued with the forward; a bad index fails the next synchronisation as a
      device-side assert (which ends the process's CUDA context). With `TRL_RFM_DEBUG_USER_INDEX=1`, and on other
      accelerators only then, the check is synchronous and raises the `IndexError`.

    The indices trl-rfm makes are in range by construction (`get_user_index`, the trainer's dataset preparation, and
    through them `PersonalizedReward` and the server); only an index built by hand can reach the model bad.
    """
    user_index = torch.as_tensor(user_index)
    if user_index.is_floating_point() or user_index.is_complex():
        raise TypeError(f"`user_index` must hold integers, got dtype {user_index.dtype}.")
    user_index = user_index.long()
    bad = (user_index < POPULATION_INDEX) | (user_index >= num_users)
    message = (
        f"out of range: valid rows are 0..{num_users - 1} for the model's {num_users} users and {POPULATION_INDEX} for "
        "the population weights."
    )
    if user_index.device.type == "cpu":
        try:  # checked at once, without reading the tensor from Python: no synchronisation to count
            torch._assert_async(bad.logical_not().all(), "")
        except RuntimeError:
            raise IndexError(f"`user_index` {sorted(set(user_index[bad].tolist()))[:5]} {message}") from None
    elif os.environ.get(DEBUG_USER_INDEX_ENV) == "1":
        if bad.any():  # one synchronisation per forward, asked for
            raise IndexError(f"`user_index` {sorted(set(user_index[bad].tolist()))[:5]} {message}")
    elif user_index.device.type == "cuda":
        torch._assert_async(bad.logical_not().all(), f"`user_index` {message}")
    return user_index


def normalize_user_id(user_id: Hashable) -> str:
    """Users are keyed by the string form of their id, so ids survive JSON and safetensors metadata unchanged.
    Integral floats (`17.0`, as pandas reads an integer CSV column with a gap) are the integer's id (`"17"`); numpy and
    torch scalars are read as their Python value; None, NaN, infinities, empty strings, bytes and containers raise a
    `ValueError`."""
    if user_id is None or (isinstance(user_id, float) and user_id != user_id):
        raise ValueError(f"User id must not be None or NaN, got {user_id!r}.")
    if isinstance(user_id, (list, tuple, dict, set)):
        raise ValueError(f"User id must be a scalar (str or int), got {type(user_id).__name__} {user_id!r}.")
    if getattr(user_id, "ndim", 0):  # a numpy array or tensor with elements, not a scalar
        raise ValueError(f"User id must be a scalar (str or int), got an array of shape {tuple(user_id.shape)}.")
    if isinstance(user_id, (bytes, bytearray)):
        raise ValueError(f"User id must be a str or an int, got bytes {user_id!r}; decode it first.")
    if isinstance(user_id, float) or type(user_id).__module__ == "numpy" and hasattr(user_id, "is_integer"):
        # Integer ids read from a CSV column with a gap become floats (17 -> 17.0): the same user as 17.
        user_id = float(user_id)
        if not math.isfinite(user_id):
            raise ValueError(f"User id must be finite, got {user_id!r}.")
        if user_id.is_integer():
            user_id = int(user_id)
    elif hasattr(user_id, "item") and callable(user_id.item) and getattr(user_id, "ndim", 0) == 0:
        user_id = user_id.item()  # a numpy or torch scalar: its Python value
        return normalize_user_id(user_id)
    user_id = str(user_id)
    if not user_id.strip():
        raise ValueError("User id must not be an empty string.")
    return user_id


class UserWeights(nn.Module):
    r"""
    Holds one weight vector per known user and the population weights used for everyone else.

    It is read through `forward()`, which returns the whole table with the population weights as its last row, so
    that index `-1` means "population". Reading through `forward` (rather than `.weight`) is what makes the table work
    when it is wrapped by PEFT's `modules_to_save` or partitioned by DeepSpeed ZeRO-3, both of which hook the call.

    Args:
        num_users (`int`): rows of the user table.
        num_features (`int`): the feature dimension `d`.
        population_weights (`str`): `"hierarchical"` (`w_u = w_pop + delta_u`: the table stores the offsets
            `delta_u` and the population vector is learned through every user's comparisons), `"learned"` (a vector
            trained by a loss of its own) or `"mean"` (the mean of the user rows).
    """

    def __init__(self, num_users: int, num_features: int, population_weights: str = "learned"):
        super().__init__()
        self.population_mode = population_weights
        self._weight_requires_grad = True
        self._set_table(torch.empty(num_users, num_features))
        self.population = nn.Parameter(torch.zeros(num_features))
        self.reset_parameters()

    @property
    def num_users(self) -> int:
        return self.weight.shape[0]

    @property
    def num_features(self) -> int:
        return self.weight.shape[1]

    def reset_parameters(self) -> None:
        # With unit-RMS features (||phi|| = sqrt(d)), rows drawn with std 1/sqrt(d) give rewards of unit scale.
        nn.init.normal_(self.weight, std=1.0 / math.sqrt(self.num_features))
        nn.init.zeros_(self.population)
        self._sync_population_trainability()

    def _sync_population_trainability(self) -> None:
        # In "mean" mode the population vector only matters while there are no users; leaving it trainable otherwise
        # would hand DDP a parameter that never receives a gradient.
        uses_population_parameter = self.population_mode in ("learned", "hierarchical") or self.num_users == 0
        self.population.requires_grad_(uses_population_parameter)

    def _set_table(self, table: torch.Tensor, requires_grad: bool | None = None) -> None:
        # Without users the table is an empty buffer, not a parameter: a parameter of 0 elements would count as
        # trainable yet never change (a plain reward model trained without a rater column must not carry one).
        if requires_grad is not None:
            self._weight_requires_grad = requires_grad
        if table.shape[0] == 0:
            self._parameters.pop("weight", None)
            self.register_buffer("weight", table)
        else:
            self.weight = nn.Parameter(table, requires_grad=self._weight_requires_grad)

    def population_weights(self) -> torch.Tensor:
        if self.population_mode == "mean" and self.num_users > 0:
            return self.weight.mean(dim=0)
        return self.population

    def forward(self) -> torch.Tensor:
        # Assembling the table computes nothing: autocast's type promotion of `cat` (which rejects an fp16 table under
        # a bf16 autocast) must not apply to it.
        device_type = self.population.device.type
        autocast_off = (
            torch.autocast(device_type, enabled=False)
            if device_type in ("cpu", "cuda", "xpu", "mps", "hpu") and torch.is_autocast_enabled(device_type)
            else contextlib.nullcontext()
        )
        with autocast_off:
            population = self.population_weights()[None]  # [1, d]
            rows = self.weight + population if self.population_mode == "hierarchical" else self.weight
            return torch.cat([rows, population], dim=0)  # [U + 1, d]

    def to_stored(self, rows: torch.Tensor) -> torch.Tensor:
        """What the table stores for users whose weights are `rows` [n, d]: the offsets from the population weights in
        `"hierarchical"` mode, the rows themselves otherwise."""
        if self.population_mode == "hierarchical":
            return rows - self.population.detach().to(rows)
        return rows

    @torch.no_grad()
    def resize(self, num_users: int, keep: torch.Tensor | None = None, new_rows: torch.Tensor | None = None) -> None:
        """
        Rebuilds the table with `num_users` rows: rows `keep` (indices into the old table, in order) come first, then
        `new_rows` (or copies of the population weights).
        """
        old = self.weight.data
        kept = old[keep] if keep is not None else old
        if new_rows is None:
            new_rows = self.population_weights().detach().expand(num_users - kept.shape[0], -1)
        table = torch.cat([kept, self.to_stored(new_rows.to(old))], dim=0)
        if table.shape[0] != num_users:
            raise ValueError(f"Resizing the user table to {num_users} rows produced {table.shape[0]} rows.")
        requires_grad = self.weight.requires_grad if isinstance(self.weight, nn.Parameter) else None
        self._set_table(table.contiguous(), requires_grad=requires_grad)
        self._sync_population_trainability()

    def extra_repr(self) -> str:
        return f"num_users={self.num_users}, num_features={self.num_features}, population={self.population_mode!r}"


class UserVocabularyMixin:
    """
    The users of a [`RewardFeatureModel`]: their ids (`self._user_ids`, in row order, and `self._user_index`) kept in
    step with the rows of its [`UserWeights`] table (`self.user_weights`), and `config.num_users`.
    """

    @property
    def user_ids(self) -> list[str]:
        """Ids of the users with a row in the table, in row order."""
        return list(self._user_ids)

    @property
    def num_users(self) -> int:
        return len(self._user_ids)

    def has_user(self, user_id: Hashable) -> bool:
        return normalize_user_id(user_id) in self._user_index

    def get_user_index(self, user_ids: Sequence[Hashable | None], strict: bool = False) -> torch.Tensor:
        """
        Rows of the user table for `user_ids` (a `LongTensor`). `None` selects the population weights; an unknown id
        does too, with a warning, unless `strict=True`, which raises a `KeyError` naming it.
        """
        indices, unknown = [], []
        for user_id in user_ids:
            if user_id is None:
                indices.append(POPULATION_INDEX)
                continue
            key = normalize_user_id(user_id)
            index = self._user_index.get(key)
            if index is None:
                unknown.append(key)
                index = POPULATION_INDEX
            indices.append(index)
        if unknown:
            shown = ", ".join(repr(u) for u in sorted(set(unknown))[:5])
            if strict:
                raise KeyError(
                    f"Unknown user id(s): {shown}. Known users: {self.num_users}; add them with `add_users`."
                )
            warnings.warn(f"Unknown user id(s) {shown}: scoring them with the population weights.", stacklevel=2)
        return torch.tensor(indices, dtype=torch.long, device=self.user_weights.weight.device)

    def get_user_weights(self, user_ids: Sequence[Hashable | None] | None = None, strict: bool = True) -> torch.Tensor:
        """Weights `w_u` of `user_ids` (`None` entries: population), or the whole user table. [n, d]"""
        table = self.user_weights()  # [U + 1, d]
        if user_ids is None:
            return table[:-1]
        return table[self.get_user_index(user_ids, strict=strict)]

    def get_population_weights(self) -> torch.Tensor:
        return self.user_weights()[POPULATION_INDEX]  # [d]

    @torch.no_grad()
    def add_users(self, user_ids: Iterable[Hashable], weights: torch.Tensor | None = None) -> None:
        """
        Adds users to the table, or replaces the weights of users already there. New users without `weights` start
        at the population weights, so they score like the population until trained or adapted.

        Args:
            user_ids: ids of the users (any hashable; keyed by their string form).
            weights: optional `[len(user_ids), d]` weights.
        """
        keys = [normalize_user_id(u) for u in user_ids]
        if len(set(keys)) != len(keys):
            raise ValueError("`user_ids` contains duplicates.")
        if weights is not None:
            weights = torch.as_tensor(weights, dtype=self.user_weights.weight.dtype)
            if weights.ndim != 2 or weights.shape != (len(keys), self.config.num_features):
                raise ValueError(
                    f"`weights` must have shape ({len(keys)}, {self.config.num_features}) = (users, num_features), "
                    f"got {tuple(weights.shape)}."
                )
            if not torch.isfinite(weights).all():
                raise ValueError("`weights` contains NaN or infinite values.")
        new_keys = [k for k in keys if k not in self._user_index]
        new_rows = None
        if weights is not None:
            position = {k: i for i, k in enumerate(keys)}
            new_rows = weights[[position[k] for k in new_keys]] if new_keys else weights[:0]
            for key in keys:
                if key in self._user_index:
                    self.user_weights.weight[self._user_index[key]] = self.user_weights.to_stored(
                        weights[position[key]]
                    )
        if new_keys:
            self.user_weights.resize(self.num_users + len(new_keys), new_rows=new_rows)
            self._set_user_ids(self._user_ids + new_keys)

    @torch.no_grad()
    def remove_users(self, user_ids: Iterable[Hashable]) -> None:
        """Removes users (their rows and ids) from the table; unknown ids raise a `KeyError`."""
        drop = {normalize_user_id(u) for u in user_ids}
        missing = drop - set(self._user_index)
        if missing:
            raise KeyError(f"Cannot remove unknown user id(s): {sorted(missing)[:5]}.")
        kept_ids = [u for u in self._user_ids if u not in drop]
        keep = torch.tensor([self._user_index[u] for u in kept_ids], dtype=torch.long)
        self.user_weights.resize(len(kept_ids), keep=keep)
        self._set_user_ids(kept_ids)

    def _set_user_ids(self, user_ids: list[str]) -> None:
        if len(user_ids) != self.user_weights.num_users:
            raise ValueError(f"{len(user_ids)} user ids for a table of {self.user_weights.num_users} rows.")
        self._user_ids = list(user_ids)
        self._user_index = {uid: i for i, uid in enumerate(self._user_ids)}
        self.config.num_users = len(self._user_ids)
