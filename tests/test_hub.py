"""
The push path up to the network boundary: `HfApi.create_repo` and `HfApi.create_commit` are replaced by recorders, and
the Hub's model-card validation by a no-op; everything before them (saving, the model card, `upload_folder`'s choice
of files) is the real code. The recorder keeps a copy of every uploaded file, so the tests load what would have reached
the Hub.
"""

import json
import os
import re
import shutil

import huggingface_hub.hf_api
import pytest
import torch
from huggingface_hub import CommitInfo, HfApi, ModelCard, RepoUrl
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForSequenceClassification

from trl_rfm import RewardFeatureModel, RFMConfig, RFMRewardTrainer
from trl_rfm.io.hub import push_to_hub
from trl_rfm.io.user_weights_file import USER_WEIGHTS_NAME
from trl_rfm.testing import make_synthetic_preferences, quiet_cpu_args


USERS = ["alice", "bob", "carol"]


class FakeHub:
    """Records the repos created and the commits made, with a copy of each committed file."""

    def __init__(self, root):
        self.root = root
        self.repos, self.commits = [], []

    def create_repo(self, api, repo_id, **kwargs):
        self.repos.append(repo_id)
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_commit(self, api, repo_id, operations, commit_message, **kwargs):
        folder = self.root / f"commit-{len(self.commits)}"
        for operation in operations:
            target = folder / operation.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(operation.path_or_fileobj, target)
        files = sorted(operation.path_in_repo for operation in operations)
        self.commits.append(
            {"repo_id": repo_id, "message": commit_message, "files": files, "folder": folder, **kwargs}
        )
        return CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/{'0' * 40}",
            commit_message=commit_message,
            commit_description="",
            oid="0" * 40,
        )


@pytest.fixture
def hub(tmp_path, monkeypatch):
    fake = FakeHub(tmp_path / "hub")
    monkeypatch.setattr(HfApi, "create_repo", lambda api, repo_id, **kw: fake.create_repo(api, repo_id, **kw))
    monkeypatch.setattr(HfApi, "create_branch", lambda api, **kw: None)
    monkeypatch.setattr(HfApi, "create_commit", lambda api, **kw: fake.create_commit(api, **kw))
    monkeypatch.setattr(HfApi, "_validate_yaml", lambda api, content, **kw: None)  # the Hub's model-card check
    # Without hf_xet, `upload_folder` makes one `create_commit` (the boundary mocked here) instead of a pipeline.
    monkeypatch.setattr(huggingface_hub.hf_api, "is_xet_available", lambda: False)
    return fake


@pytest.fixture
def model(tmp_path, tiny_lm):
    tiny_lm.save_pretrained(tmp_path / "lm")
    torch.manual_seed(0)
    model = RewardFeatureModel.from_backbone(str(tmp_path / "lm"), num_features=8)
    model.add_users(USERS, weights=torch.randn(len(USERS), 8))
    return model.eval()


def test_push_leaves_user_weights_out_by_default(hub, model):
    model.push_to_hub("someone/rfm", commit_message="First version")
    (commit,) = hub.commits
    assert hub.repos == ["someone/rfm"] and commit["repo_id"] == "someone/rfm"
    assert commit["message"] == "First version"
    assert commit["files"] == ["README.md", "config.json", "model.safetensors"]
    assert json.loads((commit["folder"] / "config.json").read_text())["num_users"] == 0
    card = ModelCard.load(commit["folder"] / "README.md")
    assert card.data.library_name == "transformers"
    assert {"trl", "reward-model", "personalization", "trl-rfm"} <= set(card.data.tags)
    assert "Training raters: 3" in card.text and "**not** in this repository" in card.text
    assert "alice" not in (commit["folder"] / "README.md").read_text()
    # What reached the Hub is a population model, loaded as such on request (see the withheld-users tests below).
    pushed = RewardFeatureModel.from_pretrained(commit["folder"], user_weights=False)
    assert pushed.user_ids == []
    torch.testing.assert_close(pushed.get_population_weights(), model.get_population_weights())


def test_push_user_weights_is_an_explicit_opt_in(hub, model, tokenizer):
    model.push_to_hub("someone/rfm", push_user_weights=True, private=True)
    (commit,) = hub.commits
    assert commit["files"] == ["README.md", "config.json", "model.safetensors", USER_WEIGHTS_NAME]
    assert commit["message"] == "Upload Reward Feature Model with user weights"
    pushed = RewardFeatureModel.from_pretrained(commit["folder"]).eval()
    assert pushed.user_ids == USERS
    batch = tokenizer(["the funny answer", "polite formal"], return_tensors="pt", padding=True)
    torch.testing.assert_close(pushed.rewards_for_users(**batch), model.rewards_for_users(**batch), rtol=0, atol=1e-6)


def test_save_pretrained_with_push_to_hub_keeps_users_local_only(hub, model, tmp_path):
    model.save_pretrained(tmp_path / "local", push_to_hub=True, repo_id="someone/rfm")
    assert USER_WEIGHTS_NAME in os.listdir(tmp_path / "local")
    (commit,) = hub.commits
    assert USER_WEIGHTS_NAME not in commit["files"] and commit["repo_id"] == "someone/rfm"


def test_lora_push(hub, model):
    peft_model = get_peft_model(
        model, LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["feature_head", "user_weights"])
    )
    push_to_hub(peft_model, "someone/rfm-lora")
    (commit,) = hub.commits
    assert commit["files"] == ["README.md", "adapter_config.json", "adapter_model.safetensors", "config.json"]
    assert ModelCard.load(commit["folder"] / "README.md").data.library_name == "peft"
    pushed = RewardFeatureModel.from_pretrained(commit["folder"], user_weights=False)
    assert pushed.get_base_model().user_ids == []


def _trainer(tmp_path, tokenizer, peft_config=None, **overrides):
    data = make_synthetic_preferences(num_users=3, num_heldout_users=0, train_pairs_per_user=16, disagreement=1.0)
    args = dict(
        output_dir=str(tmp_path / "run"),
        num_features=4,
        per_device_train_batch_size=16,
        max_steps=2,
        hub_model_id="someone/rfm-run",
    )
    return RFMRewardTrainer(
        model=str(tmp_path / "lm"),
        args=quiet_cpu_args(RFMConfig, **{**args, **overrides}),
        train_dataset=data.train,
        eval_dataset=data.train,
        processing_class=tokenizer,
        peft_config=peft_config,
    )


def test_trainer_push_to_hub_leaves_user_weights_out_unless_asked(hub, model, tmp_path, tokenizer):
    trainer = _trainer(tmp_path, tokenizer)
    trainer.train()
    trainer.evaluate()
    trainer.push_to_hub()
    commit = hub.commits[-1]
    assert commit["repo_id"] == "someone/rfm-run" and commit["message"] == "End of training"
    assert {"README.md", "config.json", "model.safetensors"} <= set(commit["files"])
    assert USER_WEIGHTS_NAME not in commit["files"]
    assert USER_WEIGHTS_NAME in os.listdir(tmp_path / "run")  # the local copy keeps them
    card = ModelCard.load(commit["folder"] / "README.md")
    assert {"trl", "reward-model", "personalization", "trl-rfm"} <= set(card.data.tags)
    assert "eval_population_accuracy" in card.text and "Training raters: 3" in card.text

    trainer.push_to_hub(commit_message="With the raters' weights", push_user_weights=True)
    commit = hub.commits[-1]
    assert commit["message"] == "With the raters' weights" and USER_WEIGHTS_NAME in commit["files"]
    assert RewardFeatureModel.from_pretrained(commit["folder"]).user_ids == trainer.model.user_ids


def test_checkpoint_pushes_never_include_user_weights(hub, model, tmp_path, tokenizer):
    trainer = _trainer(
        tmp_path, tokenizer, push_to_hub=True, save_strategy="steps", save_steps=2, hub_strategy="checkpoint"
    )
    trainer.train()
    trainer._finish_current_push()
    assert hub.commits, "the checkpoint was not pushed"
    for commit in hub.commits:
        assert not any(name.endswith(USER_WEIGHTS_NAME) for name in commit["files"]), commit["files"]
    assert any(name.startswith("last-checkpoint/") for commit in hub.commits for name in commit["files"])
    assert USER_WEIGHTS_NAME in os.listdir(tmp_path / "run" / "checkpoint-2")


# ------------------------------------------------------------------------ loading what was pushed, by its Hub id
WITHHELD = re.compile(
    r"user_weights\.safetensors is missing.*records 3 user\(s\).*withheld from the upload.*`user_weights=False`.*"
    r"push_user_weights=True",
    re.DOTALL,
)


def _as_hub_repo(cache_dir, repo_id, commit_folder):
    """Lays an uploaded folder out as `huggingface_hub`'s cache of the repo (a stand-in for the Hub: with
    `HF_HUB_OFFLINE=1` the loaders read it, and a file the repo lacks is missing as on the Hub)."""
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(commit_folder, repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    return {"cache_dir": str(cache_dir)}


def _assert_users_withheld(commit, tmp_path, population_model, num_users=3):
    """The upload says the users were withheld, and loading it (by Hub id or as a folder) refuses to drop them
    silently; `user_weights=False` loads the population model."""
    assert USER_WEIGHTS_NAME not in commit["files"]
    config = json.loads((commit["folder"] / "config.json").read_text())
    assert config["num_saved_users"] == num_users and config["user_weights_withheld"] is True
    card = (commit["folder"] / "README.md").read_text()
    assert "withheld" in card and "user_weights=False" in card
    hub = _as_hub_repo(tmp_path / f"hub-{len(list(tmp_path.glob('hub-*')))}", commit["repo_id"], commit["folder"])
    for source, options in [(commit["repo_id"], hub), (commit["folder"], {})]:
        with pytest.raises(FileNotFoundError, match=WITHHELD):
            RewardFeatureModel.from_pretrained(source, **options)
        with pytest.raises(FileNotFoundError, match=WITHHELD):
            AutoModelForSequenceClassification.from_pretrained(source, **options)
    loaded = RewardFeatureModel.from_pretrained(commit["repo_id"], user_weights=False, **hub)
    base = loaded.get_base_model() if hasattr(loaded, "get_base_model") else loaded
    assert base.user_ids == []
    torch.testing.assert_close(base.get_population_weights(), population_model.get_population_weights())
    return loaded


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_model_push_to_hub_withholds_the_users_and_a_hub_load_says_so(hub, model, tmp_path, lora):
    pushed = model
    if lora:
        pushed = get_peft_model(
            model, LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["feature_head", "user_weights"])
        )
    push_to_hub(pushed, "someone/rfm")
    _assert_users_withheld(hub.commits[-1], tmp_path, model)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_trainer_push_to_hub_withholds_the_users_and_a_hub_load_says_so(hub, model, tmp_path, tokenizer, lora):
    peft_config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]) if lora else None
    trainer = _trainer(tmp_path, tokenizer, peft_config=peft_config)
    trainer.train()
    trainer.push_to_hub()
    base = trainer.model.get_base_model() if lora else trainer.model
    _assert_users_withheld(hub.commits[-1], tmp_path, base)
    # The local output folder is not changed: it has the users, and its config.json does not say "withheld".
    local = RewardFeatureModel.from_pretrained(tmp_path / "run")
    assert (local.get_base_model() if lora else local).user_ids == base.user_ids
    assert "user_weights_withheld" not in json.loads((tmp_path / "run" / "config.json").read_text())

    trainer.push_to_hub(push_user_weights=True)
    commit = hub.commits[-1]
    assert USER_WEIGHTS_NAME in commit["files"]
    assert "user_weights_withheld" not in json.loads((commit["folder"] / "config.json").read_text())
    hub_options = _as_hub_repo(tmp_path / "hub-with-users", commit["repo_id"], commit["folder"])
    loaded = RewardFeatureModel.from_pretrained(commit["repo_id"], **hub_options)
    assert (loaded.get_base_model() if lora else loaded).user_ids == base.user_ids


def test_the_command_line_reads_a_withheld_users_upload_when_asked(hub, model, tmp_path, tokenizer):
    """`trl-rfm adapt` and the server name the way out (`--population_only`) and take it; `trl-rfm export` of the
    population needs no users."""
    from trl_rfm.cli.adapt import main as adapt_main
    from trl_rfm.cli.export import main as export_main
    from trl_rfm.serving.arguments import EngineArguments
    from trl_rfm.serving.engine import RewardEngine
    from trl_rfm.testing import make_synthetic_preferences

    model.push_to_hub("someone/rfm")
    folder = hub.commits[-1]["folder"]
    tokenizer.save_pretrained(folder)
    data = make_synthetic_preferences(num_users=0, num_heldout_users=1, heldout_pairs_per_user=8)
    data.heldout.remove_columns("user_id").to_json(tmp_path / "alice.jsonl")
    command = ["--model_name_or_path", str(folder), "--comparisons_file", str(tmp_path / "alice.jsonl"),
               "--user_id", "alice", "--output_dir", str(tmp_path / "adapted")]  # fmt: skip
    with pytest.raises(FileNotFoundError, match=WITHHELD):
        adapt_main(command)
    adapt_main([*command, "--population_only"])
    assert RewardFeatureModel.from_pretrained(tmp_path / "adapted").user_ids == ["alice"]

    export_main(["--model_name_or_path", str(folder), "--output_dir", str(tmp_path / "population-rm")])
    assert (tmp_path / "population-rm" / "config.json").is_file()

    with pytest.raises(FileNotFoundError, match=WITHHELD):
        RewardEngine.from_arguments(EngineArguments(model_name_or_path=str(folder), device="cpu"))
    engine = RewardEngine.from_arguments(
        EngineArguments(model_name_or_path=str(folder), device="cpu", population_only=True)
    )
    try:
        assert engine.reward.rfm.user_ids == []
    finally:
        engine.close()
