# /// script
# dependencies = [
#     "trl-rfm",
# ]
# ///

"""
RLOO (REINFORCE leave-one-out) with a personalised reward: each prompt is scored by the Reward Feature Model for
the user in its `user_id` column (`PersonalizedReward`), so one run can fine-tune one policy per user (`--user_id`)
or one policy for all users (prompts name their user with `--condition_on_user`).

Offline smoke test (a tiny reward model is trained on the marker task, users `likes_funny` / `avoids_funny`, about a
minute on a laptop CPU):
python examples/rloo_personalized.py \
    --output_dir rloo-personalized \
    --user_id likes_funny \
    --max_steps 20 \
    --per_device_train_batch_size 8 \
    --num_generations 4 \
    --max_completion_length 8 \
    --learning_rate 1e-3 \
    --logging_steps 5 \
    --use_cpu True \
    --bf16 False \
    --report_to none

One user-conditioned policy for every user of the dataset:
python examples/rloo_personalized.py --output_dir rloo-all-users --condition_on_user True --max_steps 20 \
    --per_device_train_batch_size 8 --num_generations 4 --max_completion_length 8 --use_cpu True --bf16 False

With your own models: `--rfm_path path/to/rfm --policy_path Qwen/Qwen2-0.5B-Instruct` and a prompt dataset
with a `user_id` column (`--dataset_name path/to/prompts.jsonl`).
"""

import os
from dataclasses import dataclass, field

from datasets import load_dataset
from trl import RLOOConfig, RLOOTrainer, TrlParser

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
    parser = TrlParser((PersonalizedScriptArguments, RLOOConfig))
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
    trainer = RLOOTrainer(
        model=policy_path, reward_funcs=reward, args=training_args, train_dataset=load_prompts(script_args)
    )
    trainer.train()
    trainer.save_model(training_args.output_dir)


if __name__ == "__main__":
    main()
