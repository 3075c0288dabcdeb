"""
A personalised reward function for TRL's online trainers (`GRPOTrainer`, `RLOOTrainer`, `OnlineDPOTrainer`).

    reward = PersonalizedReward(rfm, tokenizer)                 # each sample's user read from its `user_id` column
    trainer = GRPOTrainer(model=policy, reward_funcs=reward, train_dataset=prompts_with_user_id, ...)

TRL calls a reward function as `f(prompts=..., completions=..., completion_ids=..., **dataset_columns)`, but only when
it is *not* an `nn.Module` (modules are called as sequence classifiers and never see the dataset columns). So this is a
plain callable holding the Reward Feature Model: it computes the features `phi` of the whole batch in one backbone pass
and takes, per row, the dot product with that row's user weights. Rows of many users cost what rows of one user cost.
"""

from collections.abc import Hashable, Sequence
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import is_peft_model
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..adaptation.features import tokenize_sequence
from ..models.limits import truncate_to_limit
from ..models.modeling_rfm import RewardFeatureModel


class PersonalizedReward:
    r"""
    The reward `r_u(x, y) = phi(x, y) · w_u` of a Reward Feature Model, as a TRL reward function.

    Called as `reward(prompts, completions, user_id=[...], **kwargs) -> list[float]`: the user of each sample comes
    from the dataset column `user_column` (TRL forwards every dataset column to reward functions), or every sample is
    scored for the fixed `user_id`. Prompts and completions may be plain text or conversations; either way they are
    tokenised as TRL's `RewardTrainer` tokenised the training pairs (chat template for conversations; prompt +
    completion + EOS for plain text), so the reward sees the inputs it was trained on.

    The model is moved, on first use, to the device of the current process (`accelerate.PartialState().device`), so
    under `accelerate launch` / `torchrun` every process scores its own samples on its own device.

    Args:
        model ([`RewardFeatureModel`], a `PeftModel` wrapping one, or `str`):
            The Reward Feature Model, or a path / Hub id to load it from.
        processing_class ([`~transformers.PreTrainedTokenizerBase`], *optional*):
            The reward model's tokenizer. Loaded from `model` when it is a path.
        user_column (`str`, *optional*, defaults to `"user_id"`):
            Dataset column holding each sample's user id.
        user_id (hashable, *optional*):
            Score every sample for this user instead of reading `user_column` (one policy per user).
        strict (`bool`, *optional*, defaults to `False`):
            Unknown users raise a `KeyError` instead of being scored with the population weights (with a warning).
        batch_size (`int`, *optional*, defaults to `64`):
            Sequences per backbone forward pass.
        max_length (`int`, *optional*):
            Longer sequences keep their *last* `max_length` tokens (the reward is read at the last token). `None`: the
            trunk's position limit (`max_position_embeddings`), with a warning when a sequence is truncated.
        device (`str` or `torch.device`, *optional*):
            Where to run the model; defaults to the current process's accelerator device.
        name (`str`, *optional*):
            The name TRL logs the reward under (`rewards/<name>/mean`); defaults to `"personalized_reward"` or
            `"reward_<user_id>"` for a fixed user.
    """

    def __init__(
        self,
        model: "RewardFeatureModel | PreTrainedModel | str",
        processing_class: PreTrainedTokenizerBase | None = None,
        user_column: str = "user_id",
        user_id: Hashable | None = None,
        strict: bool = False,
        batch_size: int = 64,
        max_length: int | None = None,
        device: "str | torch.device | None" = None,
        name: str | None = None,
    ):
        if isinstance(model, str):
            if processing_class is None:
                processing_class = AutoTokenizer.from_pretrained(model)
            model = AutoModel.from_pretrained(model)
        base = model.get_base_model() if is_peft_model(model) else model
        if not isinstance(base, RewardFeatureModel):
            raise TypeError(
                f"`model` must be a RewardFeatureModel (or a PeftModel wrapping one), got {type(base).__name__}. "
                "An ordinary reward model can be passed to TRL's `reward_funcs` directly."
            )
        if processing_class is None:
            raise ValueError("`processing_class` (the reward model's tokenizer) is required when `model` is a model.")
        if processing_class.pad_token_id is None:
            raise ValueError("The reward tokenizer has no pad token; set `processing_class.pad_token` first.")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be an integer >= 1, got {batch_size!r}.")
        if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
            raise ValueError(f"`max_length` must be an integer >= 1 or None, got {max_length!r}.")
        if user_id is not None and not base.has_user(user_id) and strict:
            raise KeyError(f"Unknown user id {user_id!r}; the model knows {base.num_users} users.")
        self.model = model.eval()
        self.rfm = base
        self.processing_class = processing_class
        self.user_column = user_column
        self.user_id = user_id
        self.strict = strict
        self.batch_size = batch_size
        self.max_length = max_length
        self._device = torch.device(device) if device is not None else None
        # TRL names each reward function by `__name__` in its logs and completion tables.
        self.__name__ = name or ("personalized_reward" if user_id is None else f"reward_{user_id}")

    # ------------------------------------------------------------------ TRL's reward-function interface
    def __call__(self, prompts: list, completions: list, **kwargs: Any) -> list[float]:
        if self.user_id is not None:
            user_ids = [self.user_id] * len(completions)
        elif self.user_column in kwargs:
            user_ids = list(kwargs[self.user_column])
        else:
            columns = sorted(
                k for k in kwargs if k not in ("trainer_state", "log_extra", "log_metric", "completion_ids")
            )
            raise KeyError(
                f"The batch has no {self.user_column!r} column to read users from (columns: {columns}). Add the user "
                "column to the prompt dataset, set `user_column`, or pass a fixed `user_id`."
            )
        if len(user_ids) != len(completions):
            raise ValueError(f"{len(user_ids)} user ids for {len(completions)} completions.")
        return self.score(prompts, completions, user_ids).tolist()

    # ------------------------------------------------------------------ scoring
    @property
    def device(self) -> torch.device:
        if self._device is None:
            self._device = PartialState().device
        return self._device

    def user_weights(self, user_ids: Sequence[Hashable | None]) -> torch.Tensor:
        """Weights of `user_ids` (`None`: population), unknown ids per `strict`. `[n, d]`, float32."""
        with torch.no_grad():
            table = self.rfm.user_weights().float()  # [U + 1, d]; read through forward (PEFT / ZeRO-3 safe)
            # Unknown ids: population row with a warning naming them, or a KeyError when strict.
            indices = self.rfm.get_user_index(user_ids, strict=self.strict)
        return table[indices.to(table.device)]

    def tokenize(self, prompts: list, completions: list) -> list[list[int]]:
        """Token ids of every prompt + completion, as TRL's `RewardTrainer` tokenises a training response."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions.")
        sequences = [
            tokenize_sequence(self.processing_class, prompt, completion)
            for prompt, completion in zip(prompts, completions, strict=True)
        ]
        if any(len(ids) == 0 for ids in sequences):
            raise ValueError("A prompt + completion tokenised to no tokens at all: nothing to read a reward from.")
        # Longer than `max_length`, or than the trunk's positions when it is None: the last tokens are kept.
        return truncate_to_limit(sequences, self.max_length, self.rfm, "sequences")

    @torch.no_grad()
    def features(self, prompts: list, completions: list) -> torch.Tensor:
        """The reward features `phi` of every prompt + completion, batched, one backbone pass per batch. `[N, d]`
        float32 on `self.device`."""
        return self.features_of_sequences(self.tokenize(prompts, completions))

    @torch.no_grad()
    def features_of_sequences(self, sequences: list[list[int]]) -> torch.Tensor:
        """The reward features `phi` of already tokenised sequences (e.g. by [`tokenize`]), in batches of
        `batch_size` sorted by length. `[N, d]` float32 on `self.device`."""
        if self.rfm.device != self.device:
            self.model.to(self.device)
        pad_token_id = self.processing_class.pad_token_id
        phi = torch.empty(len(sequences), self.rfm.config.num_features, device=self.device)
        # Batches of similar length waste little compute on padding.
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            width = max(len(sequences[i]) for i in rows)
            input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
            attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
            for j, i in enumerate(rows):
                input_ids[j, : len(sequences[i])] = torch.tensor(sequences[i])
                attention_mask[j, : len(sequences[i])] = 1
            phi[rows] = self.rfm.reward_features(
                input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device)
            )
        return phi

    @torch.no_grad()
    def score(self, prompts: list, completions: list, user_ids: Sequence[Hashable | None]) -> torch.Tensor:
        """Reward of each prompt + completion for its own user: `[N]` float32 on CPU."""
        phi = self.features(prompts, completions)  # [N, d]
        weights = self.user_weights(user_ids).to(phi.device)  # [N, d]
        return (phi * weights).sum(dim=-1).cpu()

    @torch.no_grad()
    def score_for_users(
        self, prompts: list, completions: list, user_ids: Sequence[Hashable | None] | None = None
    ) -> torch.Tensor:
        """Rewards of every prompt + completion for every user of `user_ids` (all the model's users when `None`):
        `[N, n_users]` float32 on CPU, from one backbone pass over the completions."""
        phi = self.features(prompts, completions)
        user_ids = self.rfm.user_ids if user_ids is None else list(user_ids)
        return (phi @ self.user_weights(user_ids).to(phi.device).T).cpu()

    def __repr__(self) -> str:
        who = f"user_id={self.user_id!r}" if self.user_id is not None else f"user_column={self.user_column!r}"
        return f"PersonalizedReward({who}, users={self.rfm.num_users}, strict={self.strict})"
