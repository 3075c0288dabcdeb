# Copyright 2026 The trl-rfm authors. Licensed under the Apache License, Version 2.0.
r"""
PPO with one user's personalised reward, through a standard exported reward model.

TRL removed `PPOTrainer` in 1.13 (it lived in `trl.experimental.ppo` up to 1.12), and other RLHF frameworks expect an
ordinary `AutoModelForSequenceClassification` reward model. So PPO takes two steps, in two environments:

1. `--stage export` (trl-rfm's environment): train a tiny Reward Feature Model on the marker task (or load
   `--model_name_or_path`), export user `--user_id` as a standard sequence-classification reward model (LoRA merged,
   `num_labels=1`, score = `r_u`), and save a tiny policy beside it (or use `--policy_name_or_path`).

```
python examples/ppo_exported_reward.py --stage export --output_dir ppo-rfm --user_id likes_funny
```

2. `--stage ppo` (any environment with `trl<=1.12`; this stage imports only torch, transformers and trl). It ends
   with a before/after summary: the user's exported reward of the initial and the trained policy's samples, and how
   often they contain the marker word "funny" (`likes_funny` prefers it, `avoids_funny` avoids it):

```
python -m venv --system-site-packages ~/.cache/trl-rfm/venv-trl-1.12
~/.cache/trl-rfm/venv-trl-1.12/bin/pip install torch==2.13.0 "trl==1.12.*"
~/.cache/trl-rfm/venv-trl-1.12/bin/python examples/ppo_exported_reward.py --stage ppo --output_dir ppo-rfm \
    --total_episodes 64 --per_device_train_batch_size 4 --num_mini_batches 1 --response_length 8 \
    --missing_eos_penalty 1.0 --learning_rate 3e-3 --use_cpu --bf16 False --report_to none
```

The reward model is `ppo-rfm/reward_model_<user_id>`, the starting policy `ppo-rfm/initial_policy`, the prompts
`ppo-rfm/prompts.jsonl`, the trained policy `ppo-rfm/ppo_policy`. Models trained with `feature_normalization="none"`
(what the export stage trains by default) export to the trunk's stock class (e.g. `LlamaForSequenceClassification`);
RFMs with the default normalised features (`layernorm`) need `--score_head normalized` (a small remote-code head, loaded with
`trust_remote_code=True`), see `docs/policy.md`:

```
python examples/ppo_exported_reward.py --stage export --model_name_or_path rfm-tiny --score_head normalized \
    --user_id user_0 --output_dir ppo-rfm-user0
```
"""

import json
import os
from argparse import ArgumentDefaultsHelpFormatter, RawDescriptionHelpFormatter
from dataclasses import dataclass, field


class HelpFormatter(RawDescriptionHelpFormatter, ArgumentDefaultsHelpFormatter):
    """The docstring's command lines as written, and each flag's default."""


@dataclass
class ScriptArguments:
    stage: str = field(
        default="export",
        metadata={"help": "`export` (needs trl-rfm) writes the user's reward model; `ppo` (needs trl<=1.12) trains."},
    )
    output_dir: str = field(default="ppo-rfm", metadata={"help": "Directory for the models of both stages."})
    user_id: str = field(default="likes_funny", metadata={"help": "The user whose reward PPO maximises."})
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "The Reward Feature Model (path or Hub id); default: train one on the marker task.",
            "aliases": ["--rfm_path"],
        },
    )
    policy_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Initial policy; default: a tiny random one.", "aliases": ["--policy_path"]},
    )
    score_head: str = field(
        default="linear",
        metadata={
            "help": "`linear` (stock class; needs feature_normalization='none') or `normalized` (remote code).",
            "choices": ["linear", "normalized"],
        },
    )
    feature_normalization: str = field(
        default="none", metadata={"help": "Feature normalisation of the reward model trained when none is given."}
    )
    num_prompts: int = field(default=64, metadata={"help": "Prompts in the PPO dataset."})
    num_eval_prompts: int = field(default=8, metadata={"help": "Prompts for the before/after summary (ppo stage)."})
    eval_samples_per_prompt: int = field(default=8, metadata={"help": "Samples per prompt for the summary."})


def export_stage(script_args: ScriptArguments) -> None:
    from trl_rfm.testing import prepare_marker_models

    reward_model, reward_tokenizer, policy_path = prepare_marker_models(
        script_args.output_dir,
        script_args.model_name_or_path,
        script_args.policy_name_or_path,
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
    from trl_rfm.testing import make_prompt_dataset

    path = os.path.join(output_dir, f"reward_model_{user_id}")
    export_user_reward_model(reward_model, user_id, path, reward_tokenizer, score_head=score_head)
    make_prompt_dataset([user_id], num_prompts=num_prompts).to_json(os.path.join(output_dir, "prompts.jsonl"))
    with open(os.path.join(output_dir, "export.json"), "w") as f:
        json.dump(
            {"reward_model": path, "policy": policy_path, "score_head": score_head, "user_id": user_id}, f, indent=2
        )
    print(f"Exported the reward of {user_id!r} to {path}; policy: {policy_path}")


def ppo_stage(script_args: ScriptArguments, training_args) -> None:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.ppo import PPOTrainer

    with open(os.path.join(script_args.output_dir, "export.json")) as f:
        exported = json.load(f)
    trust_remote_code = exported["score_head"] == "normalized"
    policy_path = script_args.policy_name_or_path or exported["policy"]
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
    prompts = dataset["input_ids"][: script_args.num_eval_prompts]
    summary_args = (
        tokenizer,
        reward_model,
        prompts,
        script_args.eval_samples_per_prompt,
        training_args.response_length,
    )
    before = reward_summary(policy, *summary_args, seed=training_args.seed)
    trainer.train()
    trainer.save_model(training_args.output_dir)
    with open(os.path.join(training_args.output_dir, "log_history.json"), "w") as f:
        json.dump(trainer.state.log_history, f, indent=2)
    after = reward_summary(
        trainer.accelerator.unwrap_model(trainer.model).policy, *summary_args, seed=training_args.seed
    )
    if trainer.accelerator.is_main_process:
        print(f"\nUser {exported.get('user_id', '?')!r}: the policy's samples scored by the exported reward")
        print(f"{'':<8} {'reward':>8} {'marker rate':>12}")
        for name, summary in (("before", before), ("after", after)):
            print(f"{name:<8} {summary['reward']:>+8.3f} {summary['marker_rate']:>12.0%}")


def reward_summary(policy, tokenizer, reward_model, prompts, samples_per_prompt, max_new_tokens, seed, marker="funny"):
    """The exported reward's mean over fresh samples of `policy` (PPO's layout: query + response, read at the last
    token) and the fraction of samples containing `marker`."""
    import torch

    torch.manual_seed(seed)
    rewards, marked = [], []
    device = next(policy.parameters()).device
    with torch.no_grad():
        for prompt in prompts:
            query = torch.tensor([prompt], device=device)
            outputs = policy.generate(
                query,
                attention_mask=torch.ones_like(query),
                do_sample=True,
                max_new_tokens=max_new_tokens,
                num_return_sequences=samples_per_prompt,
                pad_token_id=tokenizer.pad_token_id,
            )
            for sequence in outputs.tolist():
                response = sequence[len(prompt) :]
                for stop in (tokenizer.eos_token_id, tokenizer.pad_token_id):
                    response = response[: response.index(stop)] if stop in response else response
                ids = torch.tensor([prompt + response], device=reward_model.device)
                rewards.append(reward_model(ids).logits[0, 0].item())
                marked.append(marker in tokenizer.decode(response).split())
    return {"reward": sum(rewards) / len(rewards), "marker_rate": sum(marked) / len(marked)}


def main() -> None:
    from trl import TrlParser  # light: no torch, no transformers

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = TrlParser(ScriptArguments, description=__doc__, formatter_class=HelpFormatter)
    script_args, remaining = parser.parse_args_into_dataclasses(return_remaining_strings=True)
    if script_args.stage == "export":
        if remaining:
            raise ValueError(f"Unused arguments for `--stage export`: {remaining}")
        export_stage(script_args)
    elif script_args.stage == "ppo":
        try:
            from trl.experimental.ppo import PPOConfig
        except ImportError as error:
            raise ImportError("`--stage ppo` needs TRL <= 1.12 (`pip install 'trl==1.12.*'`).") from error
        (training_args,) = TrlParser(PPOConfig).parse_args_into_dataclasses(
            args=remaining + ["--output_dir", os.path.join(script_args.output_dir, "ppo_policy")]
        )
        ppo_stage(script_args, training_args)
    else:
        raise ValueError(f"`--stage` must be `export` or `ppo`, got {script_args.stage!r}.")


if __name__ == "__main__":
    main()
