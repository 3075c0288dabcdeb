"""
Checkpoints of [`RFMRewardTrainer`]: [`RFMCheckpointingMixin`] makes transformers' `_save`, `_load_from_checkpoint` and
`_load_best_model` (called through `super()`) write and read trl-rfm's layout, where the user table lives in
`user_weights.safetensors` rather than in the weights file transformers reads (see [`trl_rfm.io`]).
"""

import contextlib
import os
from collections.abc import Iterator

import torch
from accelerate.utils import is_peft_model

from ..io.feature_head import ADAPTER_SAFE_WEIGHTS_NAME, locate_feature_head
from ..io.save_load import load_adapter_weights, save_reward_feature_model
from ..io.user_weights_file import USER_WEIGHTS_NAME, UserWeightsFileError, load_user_weights
from ..models.modeling_rfm import RewardFeatureModel
from ..models.user_table import UserWeights


def restore_checkpoint(model, checkpoint: str, load_model_weights: bool) -> None:
    """
    Puts the users of a Trainer checkpoint back into `model` (a `RewardFeatureModel` or a `PeftModel` around one). For
    a `PeftModel` the whole adapter is loaded here (see [`load_adapter_weights`]); for a full model, the Trainer has
    loaded the other weights (`load_model_weights=False`). The checkpoint must hold exactly the model's users, in the
    same order.
    """
    peft = is_peft_model(model)
    base = model.get_base_model() if peft else model
    head = locate_feature_head(checkpoint)
    file = os.path.join(checkpoint, USER_WEIGHTS_NAME)
    if not os.path.isfile(file):
        if base.num_users:
            raise FileNotFoundError(
                f"{file} is missing: checkpoint {checkpoint} has no user weights, so resuming would restart the "
                f"weights of the {base.num_users} users from scratch."
            )
        table = base.get_user_weights().detach()
    else:
        loaded = load_user_weights(file, base.config.num_features, head.fingerprint, head.file)
        if loaded.user_ids != base.user_ids:
            saved, current = set(loaded.user_ids), set(base.user_ids)
            raise UserWeightsFileError(
                f"{file} holds {len(saved)} users but the training data has {len(current)}: only in the checkpoint "
                f"{sorted(saved - current)[:5]}, only in the training data {sorted(current - saved)[:5]}"
                + (" (the same users in another order)" if saved == current else "")
                + ". Resume with the training data of the run that wrote the checkpoint."
            )
        table = loaded.weights
    if peft and load_model_weights:
        load_adapter_weights(model, head, table)
        return
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, UserWeights):  # PEFT keeps the trained copy and the original: both get the rows
                module.weight.copy_(table.to(module.weight))


@contextlib.contextmanager
def saving_in_rfm_layout(model, model_card) -> Iterator[None]:
    """
    Within the block, `model.save_pretrained` (what `Trainer._save` calls) writes trl-rfm's layout with `model_card`
    (a `PeftModel`'s own would put the user table in the adapter file and lose the users' ids). Scoped to this
    instance and this block.
    """

    def save_pretrained(save_directory, state_dict=None, is_main_process=True, **kwargs):
        save_reward_feature_model(
            model,
            save_directory,
            state_dict=state_dict,
            is_main_process=is_main_process,
            model_card=model_card() if is_main_process else False,
            **kwargs,
        )

    model.save_pretrained = save_pretrained  # an instance attribute shadows the method
    try:
        yield
    finally:
        del model.save_pretrained


class RFMCheckpointingMixin:
    """The checkpoint overrides of [`RFMRewardTrainer`]: transformers does the work, trl-rfm writes and restores the
    users."""

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        base_model = model.get_base_model() if is_peft_model(model) else model
        if not isinstance(base_model, RewardFeatureModel):
            return super()._save(output_dir, state_dict)
        with saving_in_rfm_layout(model, self._build_model_card):
            return super()._save(output_dir, state_dict)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = self.model if model is None else model
        if is_peft_model(model) and os.path.isfile(os.path.join(resume_from_checkpoint, ADAPTER_SAFE_WEIGHTS_NAME)):
            # PEFT's `load_adapter` needs the user table in the adapter file, where trl-rfm does not keep it.
            restore_checkpoint(model, resume_from_checkpoint, load_model_weights=True)
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        restore_checkpoint(model, resume_from_checkpoint, load_model_weights=False)

    def _load_best_model(self) -> None:
        checkpoint = self.state.best_model_checkpoint
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:  # their own checkpoints hold the whole model
            return super()._load_best_model()
        if is_peft_model(self.model) and os.path.isfile(os.path.join(checkpoint, ADAPTER_SAFE_WEIGHTS_NAME)):
            restore_checkpoint(self.model, checkpoint, load_model_weights=True)
            return
        super()._load_best_model()
        restore_checkpoint(self.model, checkpoint, load_model_weights=False)
