"""The table of per-user reward weights `w_u` and the population weights `w_pop`."""

import math

import torch
from torch import nn


class UserWeights(nn.Module):
    r"""
    Holds one weight vector per known user and the population weights used for everyone else.

    It is read through `forward()`, which returns the whole table with the population weights as its last row, so
    that index `-1` means "population". Reading through `forward` (rather than `.weight`) is what makes the table work
    when it is wrapped by PEFT's `modules_to_save` or partitioned by DeepSpeed ZeRO-3, both of which hook the call.

    Args:
        num_users (`int`): rows of the user table.
        num_features (`int`): the feature dimension `d`.
        population_weights (`str`): `"learned"` (a trained vector) or `"mean"` (the mean of the user rows).
    """

    def __init__(self, num_users: int, num_features: int, population_weights: str = "learned"):
        super().__init__()
        self.population_mode = population_weights
        self.weight = nn.Parameter(torch.empty(num_users, num_features))
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
        uses_population_parameter = self.population_mode == "learned" or self.num_users == 0
        self.population.requires_grad_(uses_population_parameter)

    def population_weights(self) -> torch.Tensor:
        if self.population_mode == "mean" and self.num_users > 0:
            return self.weight.mean(dim=0)
        return self.population

    def forward(self) -> torch.Tensor:
        return torch.cat([self.weight, self.population_weights()[None]], dim=0)  # [U + 1, d]

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
        table = torch.cat([kept, new_rows.to(old)], dim=0)
        if table.shape[0] != num_users:
            raise ValueError(f"Resizing the user table to {num_users} rows produced {table.shape[0]} rows.")
        self.weight = nn.Parameter(table.contiguous(), requires_grad=self.weight.requires_grad)
        self._sync_population_trainability()

    def extra_repr(self) -> str:
        return f"num_users={self.num_users}, num_features={self.num_features}, population={self.population_mode!r}"
