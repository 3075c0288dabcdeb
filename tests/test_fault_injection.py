"""
Interrupted saves: a save is killed at every file write, link, rename and swap it makes, and the folder must
then load as the previous model or the new one, never a mix, and never lose the previous one. A kill is an exception
raised from the step, with the cleanup of the dying save disabled (as under SIGKILL, no `finally` runs); the next save
must remove what it left behind. Also a real `SIGKILL` of a saving subprocess, Trainer checkpoints and the Hub push's
staging.
"""

import os
import shutil

import pytest
import torch
from safetensors import torch as safetensors_torch
from transformers import PreTrainedModel

from trl_rfm import RewardFeatureModel
from trl_rfm.io import directory, save_load, user_weights_file
from trl_rfm.io.user_weights_file import USER_WEIGHTS_NAME


USERS = ["alice", "bob", "7"]
TEXTS = ["the funny answer", "polite formal", "so well"]


class Killed(BaseException):
    """Stands for SIGKILL: a BaseException, so that no `except Exception` of the code under test swallows it."""


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory, tokenizer):
    from trl_rfm.testing import build_tiny_causal_lm

    path = tmp_path_factory.mktemp("lm") / "lm"
    build_tiny_causal_lm(tokenizer, hidden_size=32, num_hidden_layers=1, intermediate_size=64).save_pretrained(path)
    return str(path)


def _model(lm_dir, seed, users=USERS):
    torch.manual_seed(seed)
    model = RewardFeatureModel.from_backbone(lm_dir, num_features=4)
    with torch.no_grad():
        model.feature_head.weight.normal_(std=0.5)
        model.user_weights.population.normal_()
    model.add_users(users, weights=torch.randn(len(users), 4))
    return model.eval()


def _signature(model, batch):
    with torch.no_grad():
        return torch.cat([model.rewards_for_users(**batch), model(**batch).logits], dim=-1)


class StepKiller:
    """Counts the filesystem steps of a save (every write, link, rename, swap) and raises `Killed` at step `kill_at`."""

    TARGETS = [
        (os, "replace"),
        (os, "rename"),
        (os, "link"),
        (os, "remove"),
        (shutil, "copy2"),
        (directory, "_exchange"),
        (user_weights_file, "save_file"),
        (save_load, "save_file"),
        (safetensors_torch, "save_file"),
        (PreTrainedModel, "save_pretrained"),
    ]

    def __init__(self, monkeypatch, kill_at=None):
        self.steps, self.kill_at = [], kill_at
        for owner, name in self.TARGETS:
            original = getattr(owner, name)
            monkeypatch.setattr(owner, name, self._wrap(original, f"{getattr(owner, '__name__', owner)}.{name}"))

    def _wrap(self, original, label):
        def step(*args, **kwargs):
            if self.kill_at is not None and len(self.steps) == self.kill_at:
                self.steps.append(label)
                raise Killed(f"killed at step {self.kill_at} ({label})")
            self.steps.append(label)
            return original(*args, **kwargs)

        return step


def _staging_left(parent):
    return sorted(name for name in os.listdir(parent) if name.startswith(("_tmp-", "_old-")))


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_a_save_killed_at_any_step_leaves_the_old_or_the_new_model(tmp_path, lm_dir, tokenizer, monkeypatch, exchange):
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    old, new = _model(lm_dir, 0), _model(lm_dir, 1, users=[*USERS, "dana"])
    old_signature, new_signature = _signature(old, batch), _signature(new, batch)
    destination = tmp_path / "rfm"
    if not exchange:
        monkeypatch.setattr(directory, "_exchange", lambda first, second: False)

    def fresh_old_save():
        shutil.rmtree(destination, ignore_errors=True)
        old.save_pretrained(destination)
        tokenizer.save_pretrained(destination)
        (destination / "notes.txt").write_text("kept across saves")

    fresh_old_save()
    with monkeypatch.context() as patch:  # a dry run counts the steps of one save
        counter = StepKiller(patch)
        new.save_pretrained(destination)
    steps = list(counter.steps)
    assert any("exchange" in step or "replace" in step for step in steps) and len(steps) >= 6

    outcomes = []
    for kill_at in range(len(steps)):
        fresh_old_save()
        with monkeypatch.context() as patch:
            StepKiller(patch, kill_at)
            patch.setattr(directory.shutil, "rmtree", lambda *a, **k: None)  # a killed process cleans nothing up
            with pytest.raises(Killed):
                new.save_pretrained(destination)
        # The folder as the kill left it (a swap cut in two is restored by `recover_interrupted_swap` on load).
        directory.recover_interrupted_swap(str(destination))
        loaded = RewardFeatureModel.from_pretrained(destination)
        signature = _signature(loaded.eval(), batch)
        if loaded.user_ids == USERS:
            torch.testing.assert_close(signature, old_signature, rtol=0, atol=1e-6, msg=f"step {kill_at}")
            outcomes.append("old")
        else:
            assert loaded.user_ids == [*USERS, "dana"], f"step {kill_at}: a mix of users {loaded.user_ids}"
            torch.testing.assert_close(signature, new_signature, rtol=0, atol=1e-6, msg=f"step {kill_at}")
            outcomes.append("new")
        assert (destination / "notes.txt").read_text() == "kept across saves"
        assert (destination / "tokenizer.json").is_file()
        # The next save, by a live process, removes whatever the dead one left.
        with monkeypatch.context() as patch:  # the killed save's process is gone
            patch.setattr(directory, "_process_alive", lambda pid: pid != os.getpid())
            new.save_pretrained(destination)
        assert _staging_left(tmp_path) == [], f"step {kill_at} ({steps[kill_at]}) left {_staging_left(tmp_path)}"
        assert RewardFeatureModel.from_pretrained(destination).user_ids == [*USERS, "dana"]
    assert "old" in outcomes and set(outcomes) <= {"old", "new"}
    print(f"{len(steps)} kill points: {outcomes.count('old')} old, {outcomes.count('new')} new")


@pytest.mark.parametrize("state", ["absent", "empty", "checkpoint-files"])
def test_a_first_save_killed_at_any_step_leaves_nothing_loadable_or_the_whole_model(
    tmp_path, lm_dir, tokenizer, monkeypatch, state
):
    """Into a folder without a model (fresh, empty, or a Trainer checkpoint whose other ranks wrote their RNG state
    first): a kill leaves no `config.json` (loading fails, naming it) or the complete model, never a partial one."""
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    new = _model(lm_dir, 1)
    expected = _signature(new, batch)
    destination = tmp_path / "checkpoint-4"

    def prepare():
        shutil.rmtree(destination, ignore_errors=True)
        if state != "absent":
            destination.mkdir()
        if state == "checkpoint-files":
            (destination / "rng_state_1.pth").write_bytes(b"rng")

    prepare()
    with monkeypatch.context() as patch:
        counter = StepKiller(patch)
        new.save_pretrained(destination)
    steps = list(counter.steps)
    for kill_at in range(len(steps)):
        prepare()
        with monkeypatch.context() as patch:
            StepKiller(patch, kill_at)
            patch.setattr(directory.shutil, "rmtree", lambda *a, **k: None)
            with pytest.raises(Killed):
                new.save_pretrained(destination)
        if (destination / "config.json").is_file():
            loaded = RewardFeatureModel.from_pretrained(destination).eval()
            assert loaded.user_ids == USERS, f"step {kill_at}: {loaded.user_ids}"
            torch.testing.assert_close(_signature(loaded, batch), expected, rtol=0, atol=1e-6)
        else:
            with pytest.raises((OSError, ValueError), match="config.json|does not appear to have|checkpoint-4"):
                RewardFeatureModel.from_pretrained(destination)
        if state == "checkpoint-files":
            assert (destination / "rng_state_1.pth").read_bytes() == b"rng"
        with monkeypatch.context() as patch:
            patch.setattr(directory, "_process_alive", lambda pid: pid != os.getpid())
            new.save_pretrained(destination)
        assert _staging_left(tmp_path) == [], f"step {kill_at} ({steps[kill_at]}) left {_staging_left(tmp_path)}"


def test_push_to_hub_killed_at_any_step_uploads_nothing_or_the_whole_model(tmp_path, lm_dir, tokenizer, monkeypatch):
    """`push_to_hub` stages the save in a temporary folder: a kill at any step of it uploads nothing (and the
    temporary folder goes), otherwise the upload is the complete model."""
    from trl_rfm.io import hub as hub_module

    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    model = _model(lm_dir, 1)
    expected = _signature(model, batch)
    uploads = []

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            return type("Url", (), {"repo_id": repo_id})()

        def upload_folder(self, folder_path, **kwargs):
            uploads.append(sorted(os.listdir(folder_path)))
            loaded = RewardFeatureModel.from_pretrained(folder_path, user_weights=True).eval()
            torch.testing.assert_close(_signature(loaded, batch), expected, rtol=0, atol=1e-6)

    monkeypatch.setattr(hub_module, "hf_api", lambda: FakeApi())
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(hub_module.tempfile, "tempdir", str(system_tmp))
    with monkeypatch.context() as patch:
        counter = StepKiller(patch)
        model.push_to_hub("me/rfm", push_user_weights=True)
    steps = list(counter.steps)
    assert len(uploads) == 1 and USER_WEIGHTS_NAME in uploads[0]
    for kill_at in range(len(steps)):
        with monkeypatch.context() as patch:
            StepKiller(patch, kill_at)
            with pytest.raises(Killed):
                model.push_to_hub("me/rfm", push_user_weights=True)
        assert len(uploads) == 1, f"step {kill_at} ({steps[kill_at]}) uploaded a partial folder"
        assert os.listdir(system_tmp) == []
