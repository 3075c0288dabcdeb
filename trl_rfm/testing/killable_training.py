"""
A training job meant to be killed: a tiny causal LM trained as an RFM on CPU (a rater column, a checkpoint every few
steps), then the final save, then new users fitted with `adapt_users` and saved over it. Every moment worth killing it
at is named (`checkpoint-4/os.replace#2`: the second rename of the checkpoint-4 save) and reported to the process that
started it, which can have the job stop there and then send it `SIGKILL` (`tests/test_kill_resume.py`).

Run again on the same folder, the job resumes as a user would: `resume_from_checkpoint=True` when a complete checkpoint
exists, else from the start (after deleting the incomplete checkpoints, as the trainer's error asks).
"""

import json
import os
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass

import peft.peft_model
import safetensors.torch
import torch
import transformers.modeling_utils
from peft import LoraConfig
from transformers import AutoTokenizer, TrainerCallback, TrainerState

from ..adaptation.adapt_users import adapt_users
from ..io import directory, save_load, user_weights_file
from ..io.save_load import save_reward_feature_model
from ..trainer.checkpointing import checkpoints_of, is_complete_checkpoint
from ..trainer.rfm_config import RFMConfig
from ..trainer.rfm_trainer import RFMRewardTrainer
from .synthetic import make_synthetic_preferences
from .tiny_models import quiet_cpu_args


@dataclass
class JobSpec:
    """What the job trains, and where. The same spec, run again, resumes the same run."""

    model_path: str  # a causal LM saved with its tokenizer
    output_dir: str
    lora: bool = False
    max_steps: int = 8
    save_steps: int = 2
    batch_size: int = 8
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def job_data(seed: int = 0):
    """4 training raters (16 comparisons each: 8 steps of 8) and 2 new users to adapt (8 comparisons each)."""
    return make_synthetic_preferences(
        num_users=4, num_heldout_users=2, train_pairs_per_user=16, heldout_pairs_per_user=8, seed=seed
    )


# The writes, renames and links of a save (trl-rfm's staging and commit, transformers', PEFT's and the Trainer's), each
# a moment to kill at: (owner, attribute, name of the moment).
_FILE_OPERATIONS = [
    (os, "replace", "os.replace"),
    (os, "rename", "os.rename"),
    (os, "link", "os.link"),
    (directory, "_exchange", "renameat2-exchange"),
    (user_weights_file, "save_file", "write-user-file"),
    (save_load, "save_file", "rewrite-adapter-file"),
    (safetensors.torch, "save_file", "safetensors.save_file"),
    (transformers.modeling_utils, "safe_save_file", "write-model-file"),
    (peft.peft_model, "safe_save_file", "write-adapter-file"),
    (torch, "save", "torch.save"),
]


class KillSwitch:
    """
    Names each moment of the job as `<phase>/<kind>#<n>` (phases: `step-<k>`, `checkpoint-<k>`, `final-save`,
    `adapt`, `adapt-save`), sends `("moment", name)` through `send`, and at `stop_at` sends `("stopped", name)` and
    waits there to be killed.
    """

    def __init__(self, send, stop_at: str | None = None):
        self.send, self.stop_at = send, stop_at
        self.phase = "setup"
        self.counts = Counter()

    def moment(self, kind: str) -> None:
        if self.phase == "setup":
            return
        self.counts[self.phase, kind] += 1
        name = f"{self.phase}/{kind}#{self.counts[self.phase, kind]}"
        self.send(("moment", name))
        if name == self.stop_at:
            self.send(("stopped", name))
            while True:  # until SIGKILL
                time.sleep(60)

    def set_phase(self, phase: str) -> None:
        self.phase = phase

    def install(self) -> None:
        """Wraps the file operations of a save, for the rest of this (throw-away) process."""
        for owner, attribute, kind in _FILE_OPERATIONS:
            setattr(owner, attribute, self._wrap(getattr(owner, attribute), kind))
        save_to_json = TrainerState.save_to_json

        def save_trainer_state(state, json_path):
            if os.path.basename(json_path) != "trainer_state.json":
                return save_to_json(state, json_path)
            # As transformers writes it (open, then write): a kill in between leaves an empty file.
            text = json.dumps(asdict(state), indent=2, sort_keys=True) + "\n"
            with open(json_path, "w", encoding="utf-8") as handle:
                self.moment("trainer_state.json-opened")
                handle.write(text)

        TrainerState.save_to_json = save_trainer_state

    def _wrap(self, function, kind):
        def wrapped(*args, **kwargs):
            self.moment(kind)
            return function(*args, **kwargs)

        return wrapped

    def watch(self, trainer) -> None:
        """Names the training steps (forward, backward, optimizer step) and the checkpoint saves of `trainer`."""
        switch = self
        base = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model

        def on_forward(module, args, output):
            switch.moment("forward")
            if output.requires_grad:
                output.register_hook(lambda grad: switch.moment("backward"))

        base.feature_head.register_forward_hook(on_forward)
        save_checkpoint = trainer._save_checkpoint

        def named_save_checkpoint(model, trial):
            switch.set_phase(f"checkpoint-{trainer.state.global_step}")
            save_checkpoint(model, trial)
            switch.set_phase("between-steps")

        trainer._save_checkpoint = named_save_checkpoint

        class StepPhases(TrainerCallback):
            def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
                optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper around torch's
                optimizer.register_step_pre_hook(lambda *_: switch.moment("optimizer.step"))

            def on_step_begin(self, args, state, control, **kwargs):
                switch.set_phase(f"step-{state.global_step + 1}")

            def on_step_end(self, args, state, control, **kwargs):
                switch.set_phase("between-steps")

        trainer.add_callback(StepPhases())


def run_job(spec: dict, send=None, stop_at: str | None = None, wait_when_done: bool = False) -> None:
    """Trains (or resumes) the job of `spec` (a [`JobSpec`] as a dict), saves the final model, adapts two new users
    and saves the model with them into the same folder. `send`: a `multiprocessing` connection or a callable that
    receives the moments (see [`KillSwitch`]); `stop_at`: a moment to stop at, until killed; `wait_when_done`: once
    done, wait to be killed too (so that a kill aimed a few milliseconds after the last moments always finds the
    process, instead of racing its exit)."""
    spec = JobSpec(**spec)
    send = getattr(send, "send", send) or (lambda message: None)
    torch.set_num_threads(1)
    switch = KillSwitch(send, stop_at)
    switch.install()
    data = job_data(spec.seed)
    tokenizer = AutoTokenizer.from_pretrained(spec.model_path)
    checkpoints = checkpoints_of(spec.output_dir)
    complete = [checkpoint for checkpoint in checkpoints if is_complete_checkpoint(checkpoint)]
    resume = bool(complete)
    send(("resume", os.path.basename(complete[-1]) if complete else None))
    if not resume:  # what the trainer's error asks of a user when no checkpoint is complete
        for checkpoint in checkpoints:
            shutil.rmtree(checkpoint)
    args = quiet_cpu_args(
        RFMConfig,
        output_dir=spec.output_dir,
        num_features=4,
        per_device_train_batch_size=spec.batch_size,
        max_steps=spec.max_steps,
        save_strategy="steps",
        save_steps=spec.save_steps,
        learning_rate=1e-3,
        seed=spec.seed,
        dataloader_num_workers=0,
    )
    trainer = RFMRewardTrainer(
        model=spec.model_path,
        args=args,
        train_dataset=data.train,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]) if spec.lora else None,
    )
    switch.watch(trainer)
    trainer.train(resume_from_checkpoint=True if resume else None)
    switch.set_phase("final-save")
    trainer.save_model(spec.output_dir)
    if trainer.args.world_size > 1:  # the distributed job ends with its final save
        send(("done", None))
        return
    switch.set_phase("adapt")
    model = trainer.model.eval()
    base = model.get_base_model() if spec.lora else model
    adapt_users(base, tokenizer, data.heldout, show_progress=False)
    switch.set_phase("adapt-save")
    # As `trl-rfm adapt --output_dir` saves: model, users and tokenizer in one commit.
    save_reward_feature_model(model, spec.output_dir, processing_class=tokenizer)
    switch.set_phase("done")
    send(("done", None))
    while wait_when_done:
        time.sleep(60)


def _file_reporter(report_dir: str, rank: int):
    """A `send` for processes started by a launcher (one per rank): one line per message in `rank<rank>.log`, with the
    process id first, so that the test can find and kill the rank."""
    path = os.path.join(report_dir, f"rank{rank}.log")

    def send(message) -> None:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps([os.getpid(), *message]) + "\n")

    return send


if __name__ == "__main__":
    # `accelerate launch -m trl_rfm.testing.killable_training SPEC_JSON REPORT_DIR [RANK:MOMENT]`
    import sys

    rank = int(os.environ.get("RANK", "0"))
    target_rank, _, moment = (sys.argv[3] if len(sys.argv) > 3 else ":").partition(":")
    run_job(
        json.loads(sys.argv[1]),
        _file_reporter(sys.argv[2], rank),
        moment if target_rank == str(rank) else None,
    )
