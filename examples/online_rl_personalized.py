# /// script
# dependencies = [
#     "trl-rfm",
# ]
# ///

r"""
Online RL with a personalised reward: GRPO, RLOO or Online DPO, with a Reward Feature Model as the reward. Each prompt
is scored for the user in its `user_id` column (`PersonalizedReward`), so one run fine-tunes one policy for one user
(`--user_id`) or one policy for all users (prompts that name their user, `--condition_on_user True`). At the end the
script samples the policy before and after training and prints, per user, the user's own mean reward of the samples.

Offline, without arguments for the models: a tiny Reward Feature Model is trained on the marker task (user
`likes_funny` prefers responses with the word "funny", `avoids_funny` prefers them without it; ~20 s) and the policy
is a tiny random LM; the summary then also shows how often the policy says "funny". About a minute each on 2 CPU cores:

python examples/online_rl_personalized.py \
    --trainer grpo \
    --output_dir grpo-likes-funny \
    --user_id likes_funny \
    --max_steps 20 \
    --per_device_train_batch_size 8 \
    --num_generations 4 \
    --max_completion_length 8 \
    --learning_rate 2e-3 \
    --use_cpu True \
    --bf16 False \
    --report_to none

python examples/online_rl_personalized.py --trainer rloo --output_dir rloo-all-users --condition_on_user True \
    --max_steps 20 --per_device_train_batch_size 8 --num_generations 4 --max_completion_length 8 \
    --learning_rate 2e-3 --use_cpu True --bf16 False --report_to none

python examples/online_rl_personalized.py --trainer online_dpo --output_dir online-dpo-avoids-funny \
    --user_id avoids_funny --max_steps 20 --per_device_train_batch_size 8 --max_new_tokens 8 \
    --learning_rate 1e-4 --use_cpu True --bf16 False --report_to none

With your own models (GPU): a Reward Feature Model saved with its tokenizer (a directory written by
`examples/train_rfm.py`, or a Hub id), a policy, and prompts with a `user_id` column:

python examples/online_rl_personalized.py \
    --trainer grpo \
    --model_name_or_path Qwen2-0.5B-RFM \
    --policy_name_or_path Qwen/Qwen2-0.5B-Instruct \
    --dataset_name prompts.jsonl \
    --output_dir Qwen2-0.5B-GRPO-personalized \
    --per_device_train_batch_size 8 \
    --num_generations 8 \
    --learning_rate 1.0e-6

Training options: every field of `trl.GRPOConfig`, `trl.RLOOConfig` or
`trl.experimental.online_dpo.OnlineDPOConfig` (per `--trainer`) is a flag, as in TRL's scripts.
"""

import sys
from argparse import ArgumentDefaultsHelpFormatter, RawDescriptionHelpFormatter
from dataclasses import dataclass, field


TRAINERS = {  # --trainer: (module, config class, trainer class)
    "grpo": ("trl", "GRPOConfig", "GRPOTrainer"),
    "rloo": ("trl", "RLOOConfig", "RLOOTrainer"),
    "online_dpo": ("trl.experimental.online_dpo", "OnlineDPOConfig", "OnlineDPOTrainer"),
}


@dataclass
class OnlineRLScriptArguments:
    trainer: str = field(default="grpo", metadata={"help": "TRL trainer.", "choices": list(TRAINERS)})
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "The Reward Feature Model (path or Hub id); default: a tiny one trained on the marker task."
        },
    )
    policy_name_or_path: str | None = field(
        default=None, metadata={"help": "The policy to fine-tune; default: a tiny random LM."}
    )
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Prompts with a user column: a .json/.jsonl/.parquet/.csv file or a Hub id; "
            "default: the marker task's prompts."
        },  # fmt: skip
    )
    user_column: str = field(default="user_id", metadata={"help": "Column naming each prompt's user."})
    user_id: str | None = field(
        default=None, metadata={"help": "Train for this one user (ignores the user column); default: every user."}
    )
    condition_on_user: bool = field(
        default=False, metadata={"help": "Marker task: prompts name their user, so one policy can serve all users."}
    )
    strict_users: bool = field(
        default=False, metadata={"help": "Unknown users raise instead of scoring as population."}
    )
    num_eval_prompts: int = field(default=8, metadata={"help": "Prompts per user for the before/after summary."})
    eval_samples_per_prompt: int = field(default=8, metadata={"help": "Samples per prompt for the summary."})


class HelpFormatter(RawDescriptionHelpFormatter, ArgumentDefaultsHelpFormatter):
    """The docstring's command lines as written, and each flag's default."""


def parse_args():
    """Script arguments and the trainer's config. `--help` lists the script's own flags without importing torch."""
    from trl import TrlParser  # light: no torch, no transformers

    help_parser = TrlParser(OnlineRLScriptArguments, description=__doc__, formatter_class=HelpFormatter)
    if {"-h", "--help"} & set(sys.argv[1:]):
        help_parser.parse_args(["--help"])
    script_args, _ = help_parser.parse_args_into_dataclasses(return_remaining_strings=True)
    module, config_name, _ = TRAINERS[script_args.trainer]
    config_class = getattr(__import__(module, fromlist=[config_name]), config_name)
    return TrlParser((OnlineRLScriptArguments, config_class)).parse_args_and_config()


def load_prompts(script_args: OnlineRLScriptArguments, users: list[str] | None):
    """The prompts: the marker task's (offline default), a local data file, or a Hub dataset."""
    if script_args.dataset_name is None:
        from trl_rfm.testing import make_prompt_dataset

        return make_prompt_dataset(users, num_prompts=256, condition_on_user=script_args.condition_on_user)
    from trl_rfm.data.raw import load_raw_split

    return load_raw_split(script_args.dataset_name, split="train")


def main(script_args: OnlineRLScriptArguments, training_args) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_rfm import PersonalizedReward, RewardFeatureModel
    from trl_rfm.rewards.policy_summary import format_policy_summary, personalized_policy_summary
    from trl_rfm.testing.marker_task import MARKER_WORD

    ################
    # Reward model and policy
    ################
    if script_args.model_name_or_path is None:  # offline default: the marker task
        from trl_rfm.testing import prepare_marker_models

        reward_model, reward_tokenizer, policy_path = prepare_marker_models(
            training_args.output_dir, policy_path=script_args.policy_name_or_path, seed=training_args.seed
        )
    else:
        reward_model = RewardFeatureModel.from_pretrained(script_args.model_name_or_path)
        reward_tokenizer = AutoTokenizer.from_pretrained(script_args.model_name_or_path)
        policy_path = script_args.policy_name_or_path
        if policy_path is None:
            raise ValueError("With `--model_name_or_path`, pass the policy too: `--policy_name_or_path`.")
    reward = PersonalizedReward(
        reward_model,
        reward_tokenizer,
        user_column=script_args.user_column,
        user_id=script_args.user_id,
        strict=script_args.strict_users,
    )
    policy = AutoModelForCausalLM.from_pretrained(policy_path)
    tokenizer = AutoTokenizer.from_pretrained(policy_path)

    ################
    # Dataset
    ################
    users = [script_args.user_id] if script_args.user_id is not None else None
    prompts = load_prompts(script_args, users)
    # The summary's prompts: the first `num_eval_prompts` of each user (8 users at most), scored for that user.
    row_users = [script_args.user_id] * len(prompts) if users else prompts[script_args.user_column]
    counts, eval_rows = {}, []
    for i, user in enumerate(row_users):
        if counts.get(user, 0) < script_args.num_eval_prompts and (user in counts or len(counts) < 8):
            counts[user] = counts.get(user, 0) + 1
            eval_rows.append(i)
    eval_prompts, eval_users = [prompts[i]["prompt"] for i in eval_rows], [row_users[i] for i in eval_rows]
    max_new_tokens = getattr(training_args, "max_completion_length", None) or training_args.max_new_tokens
    marker_word = MARKER_WORD if script_args.model_name_or_path is None else None
    summary_args = dict(
        samples_per_prompt=script_args.eval_samples_per_prompt, max_new_tokens=max_new_tokens, seed=training_args.seed
    )
    before = personalized_policy_summary(
        policy, tokenizer, reward, eval_prompts, eval_users, **summary_args, marker_word=marker_word
    )

    ################
    # Training
    ################
    module, _, trainer_name = TRAINERS[script_args.trainer]
    trainer_class = getattr(__import__(module, fromlist=[trainer_name]), trainer_name)
    trainer = trainer_class(
        model=policy,
        reward_funcs=reward,
        args=training_args,
        train_dataset=prompts,
        processing_class=tokenizer,
    )
    trainer.train()

    ############################
    # Save model and push to Hub
    ############################
    trainer.save_model(training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)

    ################
    # Before / after, per user
    ################
    policy = trainer.accelerator.unwrap_model(trainer.model)
    after = personalized_policy_summary(
        policy, tokenizer, reward, eval_prompts, eval_users, **summary_args, marker_word=marker_word
    )
    if trainer.accelerator.is_main_process:
        print("\n" + format_policy_summary(before, after, marker_word))
    return {"before": before, "after": after}


if __name__ == "__main__":
    main(*parse_args())
