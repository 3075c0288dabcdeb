"""
The Reward Feature Model (Barreto et al., 2025, "Capturing Individual Human Preferences with Reward Features").

    tokens ──► trunk (causal LM or encoder, optionally LoRA) ──► h [B, H]      pooled: last real token (causal LMs),
                                                                            mean or [CLS] (encoders), `config.pooling`
    h      ──► feature_head Linear(H, d), normalised     ──► phi    [B, d]   reward features
    phi    ──► user_weights W[u]                          ──► r_u = phi · W[u]   [B]

Every user shares `phi`; a user is a `d`-vector. Scoring U users on the same responses costs one backbone pass
(`phi @ W.T`), and a new user is fitted by logistic regression on cached feature differences.

The trunk is registered under its own `base_model_prefix` (`model` for Llama/Qwen/Mistral, `transformer` for GPT-2,
`bert` for BERT, ...), the attribute its `*ForSequenceClassification` uses, so the RFM's parameters carry the names of
a transformers reward model on the same trunk (`model.layers.0.self_attn.q_proj.weight`, ...), head aside. Saves
made before, with the trunk under `backbone.`, are renamed on load.
"""

import os
from collections.abc import Hashable, Iterable, Sequence

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init

from ..io import hub, save_load
from ..io.feature_head import (
    HUB_KWARGS,
    check_feature_dimension,
    hub_kwargs_of,
    legacy_trunk_key_mapping,
    locate_feature_head,
)
from .configuration_rfm import RewardFeatureConfig
from .outputs import RewardFeatureModelOutput
from .pooling import last_token_index, pool_hidden_states, resolve_pooling  # noqa: F401  (last_token_index: re-export)
from .trunk import config_kwargs, is_legacy_renaming, rename_legacy_trunk_keys_hook, trunk_class
from .user_table import POPULATION_INDEX, UserVocabularyMixin, UserWeights, check_user_index


class RewardFeatureModel(UserVocabularyMixin, PreTrainedModel):
    r"""
    A causal-LM trunk with a reward-feature head and per-user weights; a drop-in reward model for TRL.

    `forward(input_ids, attention_mask, user_index=None | user_ids=None)` returns `logits [B, 1]`, the reward of each
    row's user; with no users given, the population reward. [`reward_features`] returns `phi [B, d]` and
    [`rewards_for_users`] scores many users in one backbone pass.

    The trunk is the attribute named by `base_model_prefix`, the trunk's own (`model.model`, `model.transformer`,
    `model.bert`, ...), so that parameter names match `AutoModelForSequenceClassification`'s; `base_model` and
    `backbone` return it whatever its name.

    The ids of the users (`user_ids`) are kept beside the weight table, not in the config, since they identify people.
    """

    config_class = RewardFeatureConfig
    # Per instance, the trunk's own prefix (set in `__init__`); "model" is that of most decoder trunks.
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # The user table is personal data, saved apart in `user_weights.safetensors` (see `trl_rfm.io`).
    _keys_to_ignore_on_save = ["user_weights.weight"]
    _keys_to_ignore_on_load_missing = [r"^user_weights\.weight$"]

    def __init__(self, config: RewardFeatureConfig, backbone: PreTrainedModel | None = None):
        super().__init__(config)
        if backbone is not None:
            # A given trunk is already initialised (pretrained, or built and then partitioned by ZeRO-3, where
            # re-initialising would write into empty shards): `post_init` must only initialise the head and the table.
            for module in backbone.modules():
                module._is_hf_initialized = True
        trunk = backbone if backbone is not None else AutoModel.from_config(config.text_config)
        self.base_model_prefix = trunk_prefix(type(trunk))
        self.add_module(self.base_model_prefix, trunk)
        # Older saves and checkpoints hold the trunk under `backbone.`: `load_state_dict` (Trainer checkpoints, PEFT
        # adapters) renames their keys here; `from_pretrained` through transformers' `key_mapping`.
        self.register_load_state_dict_pre_hook(rename_legacy_trunk_keys_hook)
        self.feature_head = nn.Linear(config.text_config.hidden_size, config.num_features, bias=False)
        self.user_weights = UserWeights(config.num_users, config.num_features, config.population_weights)
        self._user_ids: list[str] = [f"user_{i}" for i in range(config.num_users)]
        self._user_index: dict[str, int] = {uid: i for i, uid in enumerate(self._user_ids)}
        self.post_init()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_backbone(
        cls,
        backbone: "str | PreTrainedConfig | PreTrainedModel",
        num_features: int = 32,
        user_ids: Iterable[Hashable] | None = None,
        feature_normalization: str = "rms",
        population_weights: str = "learned",
        pooling: str = "auto",
        **model_init_kwargs,
    ) -> "RewardFeatureModel":
        """
        Builds a fresh Reward Feature Model around a causal-LM trunk.

        Args:
            backbone: a model id or local path (loaded with `AutoModel.from_pretrained(backbone, **model_init_kwargs)`,
                which keeps the trunk and drops the LM head), a config (randomly initialised trunk), or a model
                instance (a `*ForCausalLM` contributes its trunk, `model.base_model`).
            num_features: the feature dimension `d`.
            user_ids: the ids of the training raters, one row each.
            pooling: `"last"`, `"cls"`, `"mean"` or `"auto"` (mean for encoders such as BERT, last token otherwise),
                stored resolved in the config; see [`RewardFeatureConfig`].
        """
        if isinstance(backbone, str):
            config = AutoConfig.from_pretrained(backbone, **config_kwargs(model_init_kwargs))
            if config.model_type == RewardFeatureConfig.model_type:
                raise ValueError(
                    f"{backbone!r} is already a Reward Feature Model; load it with "
                    "`RewardFeatureModel.from_pretrained` instead of wrapping it again."
                )
            trunk = AutoModel.from_pretrained(backbone, **model_init_kwargs)
        elif isinstance(backbone, PreTrainedConfig):
            trunk = AutoModel.from_config(backbone, **model_init_kwargs)
        elif isinstance(backbone, PreTrainedModel):
            trunk = backbone.base_model
        else:
            raise TypeError(
                f"`backbone` must be a model id/path, a config or a PreTrainedModel, got {type(backbone)}."
            )
        if isinstance(trunk, RewardFeatureModel):
            raise ValueError("`backbone` is already a RewardFeatureModel.")
        attn_implementation = trunk.config._attn_implementation  # the config's init would reset it on the trunk
        config = RewardFeatureConfig(
            attn_implementation=attn_implementation,
            text_config=trunk.config,
            num_features=num_features,
            feature_normalization=feature_normalization,
            population_weights=population_weights,
            pooling=resolve_pooling(pooling, trunk.config),
        )
        config._name_or_path = trunk.config._name_or_path  # where TRL looks for the tokenizer of a model instance
        model = cls(config, backbone=trunk)
        model.to(trunk.dtype)
        if user_ids is not None:
            model.add_users(user_ids)
        return model

    def _init_weights(self, module: nn.Module) -> None:
        if module is self.feature_head:
            init.normal_(module.weight, std=self.config.initializer_range)
        elif isinstance(module, UserWeights):
            init.normal_(module.weight, std=module.num_features**-0.5)
            init.zeros_(module.population)

    @property
    def backbone(self) -> PreTrainedModel:
        """The trunk (`base_model`), registered as `self.<base_model_prefix>`; read-only."""
        return getattr(self, self.base_model_prefix)

    @property
    def pooling(self) -> str:
        """The concrete pooling (`"last"`, `"cls"` or `"mean"`): `config.pooling` with `"auto"` resolved."""
        return resolve_pooling(self.config.pooling, self.config.text_config)

    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.backbone.set_input_embeddings(value)

    # ------------------------------------------------------------------ the math
    def reward_features(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **backbone_kwargs,
    ) -> torch.Tensor:
        """The reward features `phi(x, y)` of each sequence: `[B, T] -> [B, d]` (float32)."""
        if attention_mask is None:
            reference = input_ids if input_ids is not None else inputs_embeds[..., 0]
            pad_token_id = self.config.text_config.pad_token_id
            if input_ids is not None and pad_token_id is not None:
                attention_mask = (input_ids != pad_token_id).long()
            else:
                attention_mask = torch.ones(reference.shape[:2], dtype=torch.long, device=reference.device)
        backbone_kwargs.setdefault("use_cache", False)
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **backbone_kwargs
        ).last_hidden_state  # [B, T, H]
        pooled = pool_hidden_states(hidden, attention_mask, self.pooling)  # [B, H]
        phi = self.feature_head(pooled.to(self.feature_head.weight.dtype)).float()  # [B, d]
        if self.config.feature_normalization == "rms":
            # Fixes the phi/W scale ambiguity: ||phi|| = sqrt(d), all reward scale lives in the user weights.
            phi = phi * torch.rsqrt(phi.pow(2).mean(dim=-1, keepdim=True) + 1e-6)
        elif self.config.feature_normalization == "layernorm":
            # Centred as well as scaled: the component shared by all features, which a single direction of the
            # weights can read, is removed, so the consensus cannot occupy every feature at once.
            phi = nn.functional.layer_norm(phi, phi.shape[-1:], eps=1e-5)
        return phi

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        user_index: torch.LongTensor | None = None,
        user_ids: Sequence[Hashable | None] | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = False,
        return_dict: bool | None = None,
        **kwargs,
    ) -> RewardFeatureModelOutput:
        r"""
        Args:
            user_index (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                Rows of the user table (`-1`: population weights), as built by the trainer's collator.
            user_ids (sequence of ids, *optional*):
                Raw user ids, an alternative to `user_index`; unknown ids get the population weights, with a warning.
        """
        kwargs.pop("margin", None)  # TRL's compute_loss passes the whole batch to the model
        kwargs.pop("labels", None)
        phi = self.reward_features(input_ids, attention_mask, inputs_embeds, use_cache=use_cache, **kwargs)  # [B, d]
        table = self.user_weights().float()  # [U + 1, d], last row: population
        if user_ids is not None:
            if user_index is not None:
                raise ValueError("Pass either `user_index` or `user_ids`, not both.")
            user_index = self.get_user_index(user_ids)
        if user_index is None:
            user_index = torch.full((phi.shape[0],), POPULATION_INDEX, dtype=torch.long, device=phi.device)
        user_index = check_user_index(user_index, table.shape[0] - 1)
        weights = table[user_index.to(table.device)]  # [B, d]
        logits = (phi * weights).sum(dim=-1, keepdim=True)  # [B, 1]
        population_logits = phi @ table[POPULATION_INDEX, :, None]  # [B, 1]
        user_rows = table[:-1]
        if user_rows.shape[0] > 0:
            # Gaussian prior N(w_pop, sigma^2 I) on every user; w_pop is not pulled towards the users.
            # In "hierarchical" mode this is `||delta_u||^2`, which leaves w_pop free (its gradient cancels).
            population = table[POPULATION_INDEX]
            if self.config.population_weights != "hierarchical":
                population = population.detach()
            user_weights_penalty = (user_rows - population).pow(2).sum(-1).mean()
        else:
            user_weights_penalty = table.sum() * 0.0
        return RewardFeatureModelOutput(
            logits=logits,
            population_logits=population_logits,
            reward_features=phi,
            user_weights_penalty=user_weights_penalty,
        )

    @torch.no_grad()
    def rewards_for_users(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        user_ids: Sequence[Hashable | None] | None = None,
        strict: bool = False,
    ) -> torch.Tensor:
        """Rewards of every sequence for every user in one backbone pass: `[B, T] -> [B, n_users]` (all users if
        `user_ids` is None)."""
        phi = self.reward_features(input_ids, attention_mask)  # [B, d]
        table = self.user_weights().float()
        weights = table[:-1] if user_ids is None else table[self.get_user_index(user_ids, strict=strict)]
        return phi @ weights.T  # [B, n_users]

    # ------------------------------------------------------------------ persistence (see `trl_rfm.io`)
    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        is_main_process: bool = True,
        state_dict: dict | None = None,
        push_to_hub: bool = False,
        save_user_weights: bool = True,
        model_card=None,
        **kwargs,
    ) -> None:
        """
        Saves the model in safetensors, atomically: `config.json`, `model.safetensors` (trunk, feature head, population
        weights), `README.md` (model card) and, unless `save_user_weights=False`, `user_weights.safetensors`: the
        users' rows and ids, personal data, kept apart from the model.

        Args:
            save_user_weights: write the user file; without it the directory is a population model.
            model_card: a `huggingface_hub.ModelCard` for README.md; `None` generates one, `False` writes none.
            push_to_hub: then upload with [`push_to_hub`] (`repo_id`, `push_user_weights`, ... from `kwargs`).
            kwargs: `save_pretrained` options of transformers (`max_shard_size`, `variant`, ...).
        """
        push_options = ("repo_id", "push_user_weights", "commit_message", "commit_description", "private", "token")
        push_kwargs = {key: kwargs.pop(key) for key in (*push_options, "revision", "create_pr") if key in kwargs}
        save_load.save_reward_feature_model(
            self,
            save_directory,
            save_user_weights=save_user_weights,
            state_dict=state_dict,
            is_main_process=is_main_process,
            model_card=model_card,
            **kwargs,
        )
        if push_to_hub and is_main_process:
            repo_id = push_kwargs.pop("repo_id", os.path.basename(os.path.normpath(save_directory)))
            self.push_to_hub(repo_id, max_shard_size=kwargs.get("max_shard_size", "50GB"), **push_kwargs)

    def push_to_hub(self, repo_id: str, *, push_user_weights: bool = False, **kwargs):
        """
        Uploads the model to the Hub in one commit (weights, config, model card). The user weights are personal data
        and are uploaded only with `push_user_weights=True`; without them the repo scores the population and adapts
        to new users. `kwargs`: `commit_message`, `private`, `token`, `revision`, `create_pr`, `tags`, ... of
        transformers' `push_to_hub`. Returns the `huggingface_hub.CommitInfo`.
        """
        return hub.push_to_hub(self, repo_id, push_user_weights=push_user_weights, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path,
        *model_args,
        user_weights: "bool | str | os.PathLike | None" = None,
        backbone: "str | PreTrainedModel | None" = None,
        is_trainable: bool = False,
        **kwargs,
    ):
        """
        Loads a saved Reward Feature Model from a local directory or a Hub repo (one code path), full or LoRA; the
        transformers Auto classes land here too. Every other argument is transformers' `from_pretrained`'s.

        Args:
            user_weights: which users to load. `None` (default): those of the model's `user_weights.safetensors` if it
                has one, else none (a population model). `True`: the same, but the file is required. `False`: none.
                A path: the users of that file (e.g. a private copy kept apart from a model on the Hub). The file must
                have been saved with this model: its fingerprint of the feature head is checked.
            backbone: LoRA only, the trunk (id, path or model) when the adapter config does not name it.
            is_trainable: LoRA only, load the adapter for further training.

        Returns:
            A `RewardFeatureModel`, or for a LoRA directory a `peft.PeftModel` around one (`.merge_and_unload()` gives
            a plain `RewardFeatureModel`).
        """
        if pretrained_model_name_or_path is None:  # config + state_dict loading: nothing of ours on disk
            return super().from_pretrained(None, *model_args, **kwargs)
        hub_kwargs = hub_kwargs_of(kwargs)
        config = kwargs.get("config")
        if not isinstance(config, PreTrainedConfig):
            save_load.check_is_reward_feature_model(pretrained_model_name_or_path, hub_kwargs)
            config = cls.config_class.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        head = locate_feature_head(pretrained_model_name_or_path, hub_kwargs, kwargs.get("variant"))
        check_feature_dimension(head, config.num_features, "its config.json")
        if head.is_adapter:
            # The Auto classes add private flags (`_from_auto`, ...) that the trunk's own Auto loading adds again.
            model_kwargs = {
                k: v
                for k, v in kwargs.items()
                if k not in (*HUB_KWARGS, "config", "adapter_kwargs") and not k.startswith("_")
            }
            return save_load.load_peft_reward_feature_model(
                cls,
                pretrained_model_name_or_path,
                config,
                head,
                user_weights=user_weights,
                backbone=backbone,
                is_trainable=is_trainable,
                hub_kwargs=hub_kwargs,
                **model_kwargs,
            )
        legacy = legacy_trunk_key_mapping(trunk_prefix(trunk_class(config.text_config)))
        kwargs["key_mapping"] = {**legacy, **(kwargs.get("key_mapping") or {})}
        loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # `output_loading_info=True`
        # transformers keeps the load-time renamings to write the original names back on save: not the legacy one.
        conversions = getattr(model, "_weight_conversions", None)
        if legacy and conversions:
            model._weight_conversions = [c for c in conversions if not is_legacy_renaming(c, legacy)]
        save_load.attach_user_weights(model, pretrained_model_name_or_path, head, user_weights, hub_kwargs)
        return loaded


def trunk_prefix(trunk_type: type | None) -> str:
    """The attribute the trunk lives under: its class's `base_model_prefix`, which its `*ForSequenceClassification`
    uses too (`model`, `transformer`, `bert`, ...); `"model"` when it has none, or one the RFM already uses."""
    prefix = getattr(trunk_type, "base_model_prefix", "") or ""
    if not prefix.isidentifier() or hasattr(RewardFeatureModel, prefix) or prefix in ("feature_head", "user_weights"):
        return "model"  # `hasattr` also covers `backbone`, the read-only property
    return prefix


AutoConfig.register(RewardFeatureConfig.model_type, RewardFeatureConfig)
AutoModel.register(RewardFeatureConfig, RewardFeatureModel)
AutoModelForSequenceClassification.register(RewardFeatureConfig, RewardFeatureModel)
