# Copyright 2026 The trl-rfm authors. Licensed under the Apache License, Version 2.0.
"""
PPO with one user's personalised reward, through a standard exported reward model.

TRL removed `PPOTrainer` in 1.13 (it lived in `trl.experimental.ppo` up to 1.12), and other RLHF frameworks expect an
ordinary `AutoModelForSequenceClassification` reward model. So PPO takes two steps, in two environments:

1. `--stage export` (trl-rfm's environment): train a tiny Reward Feature Model on the marker task (or load
   `--rfm_path`), export user `--user_id` as a standard sequence-classification reward model (LoRA merged,
   `num_labels=1`, score = `r_u`), and save a tiny policy beside it.

```
python examples/ppo_exported_reward.py --stage export --output_dir ppo-rfm --user_id likes_funny
```

2. `--stage ppo` (any environment with `trl<=1.12`; this stage imports only torch, transformers and trl):

```
python -m venv --system-site-packages ~/.cache/trl-rfm/venv-trl-1.12
~/.cache/trl-rfm/venv-trl-1.12/bin/pip install torch==2.13.0 "trl==1.12.*"
~/.cache/trl-rfm/venv-trl-1.12/bin/python examples/ppo_exported_reward.py --stage ppo --output_dir ppo-rfm \
    --total_episodes 64 --per_device_train_batch_size 4 --num_mini_batches 1 --response_length 8 \
    --missing_eos_penalty 1.0 --use_cpu --bf16 False --report_to none
```

The reward model is `ppo-rfm/reward_model_<user_id>`, the starting policy `ppo-rfm/initial_policy`. Models trained
with `feature_normalization="none"` export to the trunk's stock class (e.g. `LlamaForSequenceClassification`); the
default RMS-normalised features need `--score_head normalized` (a small remote-code head, loaded with
`trust_remote_code=True`), see `docs/policy.md`.
"""

import json
import os
from dataclasses import dataclass, field


@dataclass
class ScriptArguments:
    stage: str = field(
        default="export",
        metadata={"help": "`export` (needs trl-rfm) writes the user's reward model; `ppo` (needs trl<=1.12) trains."},
    )
    output_dir: str = field(default="ppo-rfm", metadata={"help": "Directory for the models of both stages."})
    user_id: str = field(default="likes_funny", metadata={"help": "The user whose reward PPO maximises."})
    rfm_path: str | None = field(
        default=None, metadata={"help": "A trained Reward Feature Model; default: train one on the marker task."}
    )
    policy_path: str | None = field(default=None, metadata={"help": "Initial policy; default: a tiny random one."})
    score_head: str = field(
        default="linear",
        metadata={"help": "`linear` (stock class; needs feature_normalization='none') or `normalized` (remote code)."},
    )
    feature_normalization: str = field(
        default="none", metadata={"help": "Feature normalisation of the reward model trained when none is given."}
    )
    num_prompts: int = field(default=64, metadata={"help": "Prompts in the PPO dataset."})


def export_stage(script_args: ScriptArguments) -> None:
    from trl_rfm.marker_task import prepare_marker_models

    reward_model, reward_tokenizer, policy_path = prepare_marker_models(
        script_args.output_dir,
        script_args.rfm_path,
        script_args.policy_path,
        feature_normalization=script_args.feature_normalization,
    )
    write_ppo_inputs(
        reward_model,
        reward_tokenizer,
        policy_path,
        script_args.user_id,
        script_args.output_dir,
        script_args.score_head,
        script_args.num_prompts,
    )


def write_ppo_inputs(reward_model, reward_tokenizer, policy_path, user_id, output_dir, score_head, num_prompts):
    """Exports `user_id`'s reward and writes the prompts and `export.json`, everything the `ppo` stage reads."""
    from trl_rfm import export_user_reward_model
    from trl_rfm.marker_task import make_prompt_dataset

    path = os.path.join(output_dir, f"reward_model_{user_id}")
    export_user_reward_model(reward_model, user_id, path, reward_tokenizer, score_head=score_head)
    make_prompt_dataset([user_id], num_prompts=num_prompts).to_json(os.path.join(output_dir, "prompts.jsonl"))
    with open(os.path.join(output_dir, "export.json"), "w") as f:
        json.dump({"reward_model": path, "policy": policy_path, "score_head": score_head}, f, indent=2)
    print(f"Exported the reward of {user_id!r} to {path}; policy: {policy_path}")


def ppo_stage(script_args: ScriptArguments, training_args) -> None:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.ppo import PPOTrainer

    with open(os.path.join(script_args.output_dir, "export.json")) as f:
        exported = json.load(f)
    trust_remote_code = exported["score_head"] == "normalized"
    policy_path = script_args.policy_path or exported["policy"]
    tokenizer = AutoTokenizer.from_pretrained(policy_path, padding_side="left")
    policy = AutoModelForCausalLM.from_pretrained(policy_path)
    ref_policy = AutoModelForCausalLM.from_pretrained(policy_path)
    reward_model = AutoModelForSequenceClassification.from_pretrained(
        exported["reward_model"], num_labels=1, trust_remote_code=trust_remote_code
    )
    value_model = AutoModelForSequenceClassification.from_pretrained(
        exported["reward_model"], num_labels=1, trust_remote_code=trust_remote_code
    )

    dataset = load_dataset("json", data_files=os.path.join(script_args.output_dir, "prompts.jsonl"), split="train")
    dataset = dataset.map(
        lambda row: {"input_ids": tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]},
        remove_columns=dataset.column_names,
    )
    trainer = PPOTrainer(
        args=training_args,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref_policy,
        reward_model=reward_model,
        value_model=value_model,
        train_dataset=dataset,
    )
    trainer.train()
    trainer.save_model(training_args.output_dir)
    with open(os.path.join(training_args.output_dir, "log_history.json"), "w") as f:
        json.dump(trainer.state.log_history, f, indent=2)


def main() -> None:
    from transformers import HfArgumentParser

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    script_args, remaining = HfArgumentParser(ScriptArguments).parse_args_into_dataclasses(
        return_remaining_strings=True
    )
    if script_args.stage == "export":
        if remaining:
            raise ValueError(f"Unused arguments for `--stage export`: {remaining}")
        export_stage(script_args)
    elif script_args.stage == "ppo":
        try:
            from trl.experimental.ppo import PPOConfig
        except ImportError as error:
            raise ImportError("`--stage ppo` needs TRL <= 1.12 (`pip install 'trl==1.12.*'`).") from error
        (training_args,) = HfArgumentParser(PPOConfig).parse_args_into_dataclasses(
            args=remaining + ["--output_dir", os.path.join(script_args.output_dir, "ppo_policy")]
        )
        ppo_stage(script_args, training_args)
    else:
        raise ValueError(f"`--stage` must be `export` or `ppo`, got {script_args.stage!r}.")


if __name__ == "__main__":
    main()
