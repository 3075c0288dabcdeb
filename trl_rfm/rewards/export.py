"""
Export one user of a Reward Feature Model as a standard reward model, for PPO and any other RLHF framework.

The export is the trunk's own sequence-classification architecture (a Llama trunk gives
`LlamaForSequenceClassification`), `num_labels=1`, LoRA merged, with the score head `w_u^T W_head`. Such a model reads
the last non-pad token and applies a linear head, which is exactly `r_u = phi · w_u` when the features are linear in
the last hidden state, i.e. for models trained with `feature_normalization="none"`.

Normalised features (`"layernorm"`, the trainer's default, or `"rms"`) are not linear in the hidden state:
`r_u = sqrt(d) · (w_u^T A x) / ||A x||` with `A = W_head diag(gamma)` and `x` the residual stream before the trunk's
final RMSNorm. A stock head can only see `x / ||x||` after that norm, and re-parameterising the residual stream cannot
turn `||x||` into `||A x||` (RMSNorm commutes only with orthogonal maps, which preserve `||x||`, and `A` has rank
`d < H`). So no stock checkpoint reproduces an RMS model exactly. Those models are exported, on request
(`score_head="normalized"`), with a 20-line score head shipped as remote code beside the weights: exact, loadable
with `from_pretrained(..., trust_remote_code=True)` and no `trl_rfm` import, and compatible with TRL's legacy
`PPOTrainer` (which calls `model.score(hidden_states)`).

Encoder trunks (BERT, RoBERTa, DeBERTa; `pooling="mean"` or `"cls"`) are refused, with the reason: no stock
`*ForSequenceClassification` reads what the RFM reads. `BertForSequenceClassification` reads `tanh(W h_CLS + b)`
through BERT's pooler (a tanh of the `[CLS]` state, never the mean of the tokens nor the raw `[CLS]` state), RoBERTa's
head is a dense + tanh layer on `<s>`, DeBERTa-v2's a `ContextPooler` on `[CLS]`. Score such models with the RFM
itself ([`PersonalizedReward`], `rewards_for_users`), which TRL's online trainers accept as a reward function.
"""

import copy
import os
import warnings
from collections.abc import Hashable

import torch
from accelerate.utils import is_peft_model
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from ..models.modeling_rfm import RewardFeatureModel
from ..models.pooling import is_encoder_config


SCORE_HEADS = ("auto", "linear", "normalized")
REMOTE_CODE_FILE = "modeling_user_reward.py"

_REMOTE_CODE = '''\
"""A user's reward exported from a Reward Feature Model (trl-rfm): `r_u = normalise(W_head h) . w_u`.

Written by `trl_rfm.export_user_reward_model`; needs only torch and transformers.
"""

import torch
from torch import nn
from {base_module} import {base_class}


class FeatureNormalizedScore(nn.Module):
    """Linear features, RMS- or layer-normalised in float32, then the user's weights: `[..., H] -> [..., 1]`."""

    def __init__(self, hidden_size, num_features, normalization="rms"):
        super().__init__()
        self.features = nn.Linear(hidden_size, num_features, bias=False)
        self.user = nn.Linear(num_features, 1, bias=False)
        self.normalization = normalization

    def forward(self, hidden_states):
        phi = self.features(hidden_states.to(self.features.weight.dtype)).float()
        if self.normalization == "layernorm":
            phi = nn.functional.layer_norm(phi, phi.shape[-1:], eps=1e-5)
        else:
            phi = phi * torch.rsqrt(phi.pow(2).mean(dim=-1, keepdim=True) + 1e-6)
        return phi @ self.user.weight.float().T


class UserRewardModel({base_class}):
    def __init__(self, config):
        super().__init__(config)
        normalization = getattr(config, "rfm_feature_normalization", "rms")
        self.score = FeatureNormalizedScore(config.hidden_size, config.rfm_num_features, normalization)
        self.post_init()
'''


def export_user_reward_model(
    model: "RewardFeatureModel | PreTrainedModel",
    user_id: Hashable | None,
    output_dir: str | os.PathLike,
    tokenizer: PreTrainedTokenizerBase | None = None,
    score_head: str = "auto",
    strict: bool = True,
) -> str:
    r"""
    Writes the reward of one user (or the population) as a standard `AutoModelForSequenceClassification` checkpoint.

    Args:
        model ([`RewardFeatureModel`] or a `PeftModel` wrapping one):
            The Reward Feature Model. A PEFT model is merged into a copy (`merge_and_unload`); `model` is not changed.
        user_id (hashable or `None`):
            The user to export; `None` exports the population reward.
        output_dir (`str` or `os.PathLike`):
            Where to write the checkpoint (config, safetensors weights, and the tokenizer when given).
        tokenizer ([`~transformers.PreTrainedTokenizerBase`], *optional*):
            The reward model's tokenizer: saved beside the model, and its pad token becomes the model's
            `pad_token_id`, which the sequence-classification model uses to find the last token.
        score_head (`str`, *optional*, defaults to `"auto"`):
            `"auto"`: `"linear"` for models with `feature_normalization="none"`, `"normalized"` otherwise (the only
            exact export of a normalised model). `"linear"`: the stock architecture with a linear score head, loadable by anything; exact for models with
            `feature_normalization="none"`, refused for RMS-normalised models (see the module docstring for why no
            exact linear head exists). `"normalized"`: the stock trunk plus a small normalising score head saved
            as remote code; exact for either normalisation, loaded with `trust_remote_code=True`.
        strict (`bool`, *optional*, defaults to `True`):
            Raise a `KeyError` for an unknown `user_id` (otherwise export the population weights with a warning).

    Returns:
        `str`: `output_dir`.
    """
    if score_head not in SCORE_HEADS:
        raise ValueError(f"`score_head` must be one of {SCORE_HEADS}, got {score_head!r}.")
    base = model.get_base_model() if is_peft_model(model) else model
    if not isinstance(base, RewardFeatureModel):
        raise TypeError(
            f"`model` must be a RewardFeatureModel or a PeftModel wrapping one, got {type(base).__name__}."
        )
    if is_encoder_config(base.config.text_config) or base.pooling != "last":
        raise ValueError(
            f"This model pools its trunk ({base.config.text_config.model_type!r}) with pooling={base.pooling!r}, "
            "which no stock sequence-classification model reproduces: those read the last non-pad token (decoders) "
            "or, for encoders, a pooler of their own (BertForSequenceClassification: tanh(W h_CLS + b); RoBERTa: "
            "dense + tanh on <s>; DeBERTa-v2: ContextPooler). Export is exact only for causal-LM trunks with "
            "pooling='last'; score encoder RFMs with the model itself (`PersonalizedReward`, `rewards_for_users`)."
        )
    normalization = base.config.feature_normalization
    if score_head == "auto":
        score_head = "linear" if normalization == "none" else "normalized"
    if score_head == "linear" and normalization != "none":
        raise ValueError(
            f"This model normalises its reward features (`feature_normalization={normalization!r}`), which a "
            "linear score head cannot reproduce exactly. Either export with `score_head='normalized'` (exact; the "
            "checkpoint then loads with `trust_remote_code=True`), or train the reward model with "
            "`RFMConfig(feature_normalization='none')` to get a plain linear-head export loadable anywhere."
        )
    if is_peft_model(model):
        # Merge into a copy so the caller's model keeps its adapters (and can keep training).
        base = copy.deepcopy(model).merge_and_unload()

    with torch.no_grad():
        weights = base.get_user_weights([user_id], strict=strict).float()[0]  # [d]
        hidden_size = base.config.text_config.hidden_size
        head_device = base.feature_head.weight.device
        # feature_head(I) = W_head^T: read through the module call so PEFT's modules_to_save copy is the one used.
        head = base.feature_head(torch.eye(hidden_size, device=head_device, dtype=base.feature_head.weight.dtype))
        head = head.float().T.cpu()  # [d, H]

    trunk = base.base_model
    config = copy.deepcopy(trunk.config)
    config.num_labels = 1
    config.id2label, config.label2id = {0: "LABEL_0"}, {"LABEL_0": 0}
    pad_token_id = tokenizer.pad_token_id if tokenizer is not None else config.pad_token_id
    if pad_token_id is None:
        raise ValueError(
            "No pad token id: pass the reward model's `tokenizer` (with a pad token). The exported model finds the "
            "last token of each sequence by its pad token."
        )
    config.pad_token_id = pad_token_id
    if tokenizer is not None and tokenizer.eos_token_id == pad_token_id:
        warnings.warn(
            "The pad token is the EOS token: the exported model pools on the last non-pad token, i.e. the token "
            "*before* a final EOS, while the Reward Feature Model pools on the EOS itself. Scores of sequences ending "
            "in EOS will differ; use a tokenizer with a distinct pad token for an exact export.",
            stacklevel=2,
        )
    try:
        exported = AutoModelForSequenceClassification.from_config(config, dtype=trunk.dtype)
    except ValueError as error:
        raise ValueError(
            f"transformers has no sequence-classification class for the trunk type {config.model_type!r}."
        ) from error
    exported_trunk = getattr(exported, exported.base_model_prefix)
    missing, unexpected = exported_trunk.load_state_dict(trunk.state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(
            f"The trunk weights do not fit {type(exported).__name__}: missing {missing}, unexpected {unexpected}."
        )

    os.makedirs(output_dir, exist_ok=True)
    if score_head == "linear":
        # phi · w_u = (W_head h) · w_u = (w_u^T W_head) h
        exported.score.weight.data.copy_((weights @ head)[None].to(exported.score.weight.dtype))
        exported.save_pretrained(output_dir)
    else:
        state = {f"{exported.base_model_prefix}.{k}": v for k, v in exported_trunk.state_dict().items()}
        state["score.features.weight"] = head.to(trunk.dtype)
        state["score.user.weight"] = weights[None]
        config.rfm_feature_normalization = base.config.feature_normalization
        _save_with_remote_head(exported, config, state, base.config.num_features, output_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(output_dir)
    return str(output_dir)


def _save_with_remote_head(exported, config, state, num_features, output_dir) -> None:
    from safetensors.torch import save_file

    base_class = type(exported)
    with open(os.path.join(output_dir, REMOTE_CODE_FILE), "w") as f:
        f.write(_REMOTE_CODE.format(base_module=base_class.__module__, base_class=base_class.__name__))
    config = copy.deepcopy(config)
    config.rfm_num_features = num_features
    config.architectures = ["UserRewardModel"]
    config.auto_map = {"AutoModelForSequenceClassification": f"{REMOTE_CODE_FILE[:-3]}.UserRewardModel"}
    config.save_pretrained(output_dir)
    save_file(
        {k: v.contiguous() for k, v in state.items()},
        os.path.join(output_dir, "model.safetensors"),
        metadata={"format": "pt"},
    )
