"""
Uploading Reward Feature Models to the Hub, with the users' weights (personal data) left out unless asked. An upload
that leaves them out says so in its `config.json` (`num_saved_users`: the users, `user_weights_withheld: true`) and its
model card, so that loading it cannot silently turn the users into the population (see `save_load`).
"""

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future

from accelerate.utils import is_peft_model
from transformers.utils import CONFIG_NAME
from transformers.utils.hub import hf_api

from .model_card import build_model_card
from .save_load import SAVED_USERS_ATTRIBUTE, save_reward_feature_model
from .user_weights_file import USER_WEIGHTS_NAME, USERS_WITHHELD_ATTRIBUTE


RFM_MODEL_TYPE = "reward_feature_model"  # `RewardFeatureConfig.model_type` (not imported: models import this module)


def push_to_hub(
    model,
    repo_id: str,
    *,
    push_user_weights: bool = False,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    max_shard_size: int | str | None = "50GB",
    tags: list[str] | None = None,
    model_card=None,
):
    """
    Uploads a [`RewardFeatureModel`] or a `PeftModel` around one to the Hub in one commit: weights, config and model
    card. The user table is personal data and stays local unless `push_user_weights=True`; without it, the repo is a
    population model that anyone can adapt to new users. Returns `huggingface_hub.CommitInfo`.
    """
    api = hf_api()
    repo_id = api.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
    if revision is not None and not revision.startswith("refs/pr"):
        api.create_branch(repo_id=repo_id, branch=revision, token=token, exist_ok=True)
    base = model.get_base_model() if is_peft_model(model) else model
    if model_card is None:
        model_card = build_model_card(
            base,
            hub_model_id=repo_id,
            is_adapter=is_peft_model(model),
            num_training_users=base.num_users,
            includes_user_weights=push_user_weights,
            tags=tags,
        )
    save_kwargs = {} if is_peft_model(model) or max_shard_size is None else {"max_shard_size": max_shard_size}
    if commit_message is None:
        commit_message = "Upload Reward Feature Model" + (" with user weights" if push_user_weights else "")
    with tempfile.TemporaryDirectory() as folder:
        save_reward_feature_model(
            model, folder, save_user_weights=push_user_weights, model_card=model_card, **save_kwargs
        )
        if not push_user_weights and base.num_users:
            mark_users_withheld(os.path.join(folder, CONFIG_NAME), base.num_users)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=commit_message,
            commit_description=commit_description,
            token=token,
            revision=revision,
            create_pr=create_pr,
        )


def mark_users_withheld(config_file: str, num_users: int | None = None) -> bool:
    """Rewrites a Reward Feature Model's `config.json` to say that its users' weights were withheld from the upload:
    `num_saved_users` (set to `num_users`, or kept) and `user_weights_withheld: true`. Returns whether it was one with
    users (other files are left as they are)."""
    with open(config_file, encoding="utf-8") as handle:
        config = json.load(handle)
    num_users = config.get(SAVED_USERS_ATTRIBUTE) if num_users is None else num_users
    if config.get("model_type") != RFM_MODEL_TYPE or not num_users:
        return False
    config[SAVED_USERS_ATTRIBUTE] = int(num_users)
    config[USERS_WITHHELD_ATTRIBUTE] = True
    with open(config_file, "w", encoding="utf-8") as handle:
        json.dump(config, handle, indent=2, sort_keys=True)
        handle.write("\n")
    return True


def _withholding_view(folder: str, view: str) -> None:
    """`folder` as seen by an upload that withholds the users: the same tree in `view`, files as symbolic links (no
    copy of the weights), without the user files, and with each `config.json` that records saved users rewritten by
    [`mark_users_withheld`]."""
    for root, _, files in os.walk(folder):
        target = os.path.join(view, os.path.relpath(root, folder))
        os.makedirs(target, exist_ok=True)
        for name in files:
            if name == USER_WEIGHTS_NAME:
                continue
            source = os.path.abspath(os.path.join(root, name))
            if name == CONFIG_NAME:
                shutil.copyfile(source, os.path.join(target, name))
                mark_users_withheld(os.path.join(target, name))
            else:
                os.symlink(source, os.path.join(target, name))


@contextlib.contextmanager
def uploads_withholding_users() -> Iterator[None]:
    """
    Every folder upload that transformers makes meanwhile leaves the user files out and uploads each `config.json`
    that records saved users marked as withholding them ([`mark_users_withheld`]); the local folder is not changed.

    The Trainer uploads its whole output folder (`Trainer.push_to_hub`, and the checkpoints of `hub_strategy`) through
    transformers' shared `HfApi`, with no way to change what is uploaded: this is how the user weights are kept out of
    those uploads. The upload reads a view of the folder (symbolic links in a temporary folder), removed when the
    upload ends (at once, or when its background job does). Scoped to the `with` block.
    """
    api = hf_api()
    upload_folder = api.upload_folder

    def upload_folder_withholding(*args, folder_path, ignore_patterns=None, **kwargs):
        ignore_patterns = [ignore_patterns] if isinstance(ignore_patterns, str) else list(ignore_patterns or [])
        view = tempfile.mkdtemp(prefix="trl-rfm-upload-")
        try:
            _withholding_view(os.fspath(folder_path), view)
            result = upload_folder(
                *args, folder_path=view, ignore_patterns=[*ignore_patterns, f"*{USER_WEIGHTS_NAME}"], **kwargs
            )
        except BaseException:
            shutil.rmtree(view, ignore_errors=True)
            raise
        if isinstance(result, Future):  # `run_as_future=True`: the upload goes on in the background
            result.add_done_callback(lambda _: shutil.rmtree(view, ignore_errors=True))
        else:
            shutil.rmtree(view, ignore_errors=True)
        return result

    api.upload_folder = upload_folder_withholding  # an instance attribute shadows the method, only on this instance
    try:
        yield
    finally:
        del api.upload_folder
