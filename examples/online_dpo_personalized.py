# /// script
# dependencies = [
#     "trl-rfm",
# ]
# ///

"""
Online DPO with a personalised reward: two completions are sampled per prompt and the one the prompt's user prefers
(higher `r_u`, read from the prompt's `user_id` column by `PersonalizedReward`) becomes `chosen`. Uses
`trl.experimental.online_dpo.OnlineDPOTrainer` (TRL >= 1.13).

Offline smoke test (a tiny reward model is trained on the marker task, users `likes_funny` / `avoids_funny`):
python examples/online_dpo_personalized.py \
    --output_dir online-dpo-personalized \
    --user_id avoids_funny \
    --max_steps 20 \
    --per_device_train_batch_size 8 \
    --max_new_tokens 8 \
    --learning_rate 1e-4 \
    --logging_steps 5 \
    --use_cpu True \
    --bf16 False \
    --report_to none

`--condition_on_user True` (without `--user_id`) trains one policy for every user; `--rfm_path`,
`--policy_path` and `--dataset_name` (prompts with a `user_id` column) bring your own models and data.
"""

import os
from dataclasses import dataclass, field

from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import TrlParser
from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

from trl_rfm import PersonalizedReward
from trl_rfm.marker_task import make_prompt_dataset, prepare_marker_models


@dataclass
class PersonalizedScriptArguments:
    rfm_path: str | None = field(
        default=None,
        metadata={"help": "A trained Reward Feature Model; default: train a tiny one on the marker task."},
    )
    policy_path: str | None = field(default=None, metadata={"help": "Policy to fine-tune; default: a tiny random LM."})
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Prompt dataset (json/jsonl/parquet) with a user column; default: marker task."},
    )
    user_column: str = field(default="user_id", metadata={"help": "Dataset column naming each prompt's user."})
    user_id: str | None = field(
        default=None, metadata={"help": "Fine-tune for this one user (ignores the user column); default: every user."}
    )
    condition_on_user: bool = field(
        default=False, metadata={"help": "Marker task: prompts name their user, so one policy can serve all."}
    )
    strict_users: bool = field(
        default=False, metadata={"help": "Unknown users raise instead of scoring as population."}
    )


def load_prompts(script_args: PersonalizedScriptArguments):
    if script_args.dataset_name is not None:
        extension = os.path.splitext(script_args.dataset_name)[1].lstrip(".").replace("jsonl", "json")
        return load_dataset(extension, data_files=script_args.dataset_name, split="train")
    users = [script_args.user_id] if script_args.user_id is not None else None
    return make_prompt_dataset(users, num_prompts=256, condition_on_user=script_args.condition_on_user)


def main():
    parser = TrlParser((PersonalizedScriptArguments, OnlineDPOConfig))
    script_args, training_args = parser.parse_args_and_config()
    reward_model, reward_tokenizer, policy_path = prepare_marker_models(
        training_args.output_dir, script_args.rfm_path, script_args.policy_path, seed=training_args.seed
    )
    reward = PersonalizedReward(
        reward_model,
        reward_tokenizer,
        user_column=script_args.user_column,
        user_id=script_args.user_id,
        strict=script_args.strict_users,
    )
    trainer = OnlineDPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(policy_path),
        reward_funcs=reward,
        args=training_args,
        train_dataset=load_prompts(script_args),
        processing_class=AutoTokenizer.from_pretrained(policy_path),
    )
    trainer.train()
    trainer.save_model(training_args.output_dir)


if __name__ == "__main__":
    main()
