"""
Checkpoints of [`RFMRewardTrainer`]: [`RFMCheckpointingMixin`] makes transformers' `_save`, `_load_from_checkpoint` and
`_load_best_model` (called through `super()`) write and read trl-rfm's layout, where the user table lives in
`user_weights.safetensors` rather than in the weights file transformers reads (see [`trl_rfm.io`]).
"""

import contextlib
import json
import os
import re
import warnings
from collections.abc import Iterator

import torch
from accelerate.utils import is_peft_model
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..io.feature_head import ADAPTER_SAFE_WEIGHTS_NAME, locate_feature_head
from ..io.save_load import load_adapter_weights, save_reward_feature_model
from ..io.user_weights_file import USER_WEIGHTS_NAME, UserWeightsFileError, load_user_weights
from ..models.modeling_rfm import RewardFeatureModel
from ..models.user_table import UserWeights


_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def is_complete_checkpoint(checkpoint: str) -> bool:
    """A Trainer checkpoint is complete once `trainer_state.json`, the last file the Trainer writes into it (after
    the model, optimizer, scheduler and RNG states), is there and whole: transformers writes it in place, so a process
    killed between opening and writing it leaves an empty file."""
    try:
        with open(os.path.join(checkpoint, TRAINER_STATE_NAME), encoding="utf-8") as handle:
            json.load(handle)
    except (OSError, ValueError):
        return False
    return True


def checkpoints_of(output_dir: str) -> list[str]:
    """The `checkpoint-<step>` folders of `output_dir`, by step."""
    if not os.path.isdir(output_dir):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(output_dir) if (m := _CHECKPOINT.match(name))]
    return [
        os.path.join(output_dir, name) for _, name in sorted(found) if os.path.isdir(os.path.join(output_dir, name))
    ]


def latest_complete_checkpoint(output_dir: str) -> str | None:
    """The last complete checkpoint of `output_dir`, warning about later ones whose save was interrupted; `None` when
    there is no checkpoint at all. Raises when every checkpoint is incomplete."""
    checkpoints = checkpoints_of(output_dir)
    complete = [c for c in checkpoints if is_complete_checkpoint(c)]
    incomplete = [os.path.basename(c) for c in checkpoints if not is_complete_checkpoint(c)]
    if checkpoints and not complete:
        raise FileNotFoundError(
            f"No complete checkpoint in {output_dir}: {incomplete} lack a whole {TRAINER_STATE_NAME}, the last file "
            "of a checkpoint, so their saves were interrupted. Delete them and train from the start."
        )
    if not complete:
        return None
    skipped = [
        name
        for name in incomplete
        if checkpoints.index(os.path.join(output_dir, name)) > checkpoints.index(complete[-1])
    ]
    if skipped:
        warnings.warn(
            f"Resuming from {os.path.basename(complete[-1])}, the last complete checkpoint of {output_dir}: {skipped} "
            f"lack a whole {TRAINER_STATE_NAME} (their saves were interrupted) and are skipped; delete them.",
            stacklevel=3,
        )
    return complete[-1]


def check_checkpoint_is_complete(checkpoint: str) -> None:
    if not is_complete_checkpoint(checkpoint):
        parent = os.path.dirname(os.path.abspath(checkpoint))
        complete = [os.path.basename(c) for c in checkpoints_of(parent) if is_complete_checkpoint(c)]
        hint = f" Resume from {complete[-1]}, the last complete one," if complete else " Train from the start"
        raise FileNotFoundError(
            f"Checkpoint {checkpoint} is incomplete: it has no whole {TRAINER_STATE_NAME}, the last file the Trainer "
            f"writes, so its save was interrupted.{hint} and delete it."
        )


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
                module.weight.copy_(module.to_stored(table.to(module.weight)))


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

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """`Trainer.save_model`, returning on every rank only once the main process has written the model: the
        other ranks would otherwise go on (to read the folder, or to exit and tear down the process group) while
        the files are still being written. Call it on every rank, as transformers asks for DeepSpeed and FSDP (a
        script that calls it on the main process only would wait here for the others)."""
        super().save_model(output_dir, _internal_call)
        if not _internal_call:  # a checkpoint's save goes on with the optimizer state; transformers syncs after it
            self.accelerator.wait_for_everyone()

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """`Trainer.train`; `resume_from_checkpoint=True` resumes from the last *complete* checkpoint (one whose save
        was interrupted, without `trainer_state.json`, is skipped with a warning), and a given checkpoint that is
        incomplete is refused with a message naming the last complete one."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = latest_complete_checkpoint(self.args.output_dir) or True
        elif isinstance(resume_from_checkpoint, (str, os.PathLike)):
            check_checkpoint_is_complete(os.fspath(resume_from_checkpoint))
        return super().train(
            resume_from_checkpoint=resume_from_checkpoint,
            trial=trial,
            ignore_keys_for_eval=ignore_keys_for_eval,
            **kwargs,
        )

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
