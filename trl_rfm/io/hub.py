"""Uploading Reward Feature Models to the Hub, with the users' weights (personal data) left out unless asked."""

import contextlib
import tempfile
from collections.abc import Iterator

from accelerate.utils import is_peft_model
from transformers.utils.hub import hf_api

from .model_card import build_model_card
from .save_load import save_reward_feature_model


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
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=commit_message,
            commit_description=commit_description,
            token=token,
            revision=revision,
            create_pr=create_pr,
        )


@contextlib.contextmanager
def uploads_excluding(patterns: list[str]) -> Iterator[None]:
    """
    Adds `patterns` to the `ignore_patterns` of every folder upload that transformers makes meanwhile.

    The Trainer uploads its whole output folder (`Trainer.push_to_hub`, and the checkpoints of `hub_strategy`) through
    transformers' shared `HfApi`, with no way to pass extra ignore patterns; this is how the user weights are kept out
    of those uploads. Scoped to the `with` block.
    """
    api = hf_api()
    upload_folder = api.upload_folder

    def upload_folder_excluding(*args, ignore_patterns=None, **kwargs):
        ignore_patterns = [ignore_patterns] if isinstance(ignore_patterns, str) else list(ignore_patterns or [])
        return upload_folder(*args, ignore_patterns=[*ignore_patterns, *patterns], **kwargs)

    api.upload_folder = upload_folder_excluding  # an instance attribute shadows the method, only on this instance
    try:
        yield
    finally:
        del api.upload_folder
