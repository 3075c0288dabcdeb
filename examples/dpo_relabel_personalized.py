# /// script
# dependencies = [
#     "trl-rfm",
# ]
# ///

r"""
DPO with a personalised reward, by relabelling: sample candidate completions from the policy, score them with each
user's reward `r_u` (one feature pass for all users), keep best-vs-worst (or every pair above a margin) per user, and
train the stock `trl.DPOTrainer` on the resulting `prompt/chosen/rejected` pairs. At the end the script samples the
policy before and after training and prints, per user, the user's own mean reward of the samples.

Offline, without arguments for the models: a tiny Reward Feature Model is trained on the marker task (user
`likes_funny` prefers responses with the word "funny", `avoids_funny` prefers them without it; ~20 s) and the policy
is a tiny random LM; the summary then also shows how often the policy says "funny". About a minute on 2 CPU cores:

python examples/dpo_relabel_personalized.py \
    --output_dir dpo-likes-funny \
    --user_id likes_funny \
    --num_candidates 4 \
    --max_new_tokens 8 \
    --max_steps 20 \
    --per_device_train_batch_size 8 \
    --learning_rate 1e-3 \
    --use_cpu True \
    --bf16 False \
    --report_to none

Without `--user_id`, each prompt is relabelled for the user of its `user_id` column (`--condition_on_user True` makes
the prompts name their user, so one policy learns them all). `--pairing all_pairs --margin 0.5` keeps every clear pair.

With your own models (GPU): a Reward Feature Model saved with its tokenizer (a directory written by
`examples/train_rfm.py`, or a Hub id), a policy, and prompts with a `user_id` column (and optionally a `completions`
column of candidates, which are then scored instead of sampled):

python examples/dpo_relabel_personalized.py \
    --model_name_or_path Qwen2-0.5B-RFM \
    --policy_name_or_path Qwen/Qwen2-0.5B-Instruct \
    --dataset_name prompts.jsonl \
    --num_candidates 8 \
    --max_new_tokens 256 \
    --output_dir Qwen2-0.5B-DPO-personalized \
    --learning_rate 5.0e-7

Training options: every field of `trl.DPOConfig` is a flag, as in TRL's scripts.
"""

import sys
from argparse import ArgumentDefaultsHelpFormatter, RawDescriptionHelpFormatter
from dataclasses import dataclass, field


@dataclass
class RelabelScriptArguments:
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
            "help": "Prompts (a .json/.jsonl/.parquet/.csv file or a Hub id), optionally with a user column "
            "and a `completions` column of candidates; default: the marker task's prompts."
        },  # fmt: skip
    )
    user_column: str = field(default="user_id", metadata={"help": "Column naming each prompt's user."})
    user_id: str | None = field(default=None, metadata={"help": "Relabel for this user only; default: every user."})
    condition_on_user: bool = field(
        default=False, metadata={"help": "Marker task: prompts name their user, so one policy can serve all users."}
    )
    num_prompts: int = field(default=64, metadata={"help": "Marker-task prompts to relabel."})
    num_candidates: int = field(default=4, metadata={"help": "Completions sampled per prompt (when not given)."})
    max_new_tokens: int = field(default=16, metadata={"help": "Length of sampled candidates."})
    pairing: str = field(
        default="best_vs_worst",
        metadata={"help": "Pairs per prompt and user.", "choices": ["best_vs_worst", "all_pairs"]},
    )
    margin: float = field(default=0.0, metadata={"help": "Keep pairs whose reward difference exceeds this."})
    num_eval_prompts: int = field(default=8, metadata={"help": "Prompts per user for the before/after summary."})
    eval_samples_per_prompt: int = field(default=8, metadata={"help": "Samples per prompt for the summary."})


class HelpFormatter(RawDescriptionHelpFormatter, ArgumentDefaultsHelpFormatter):
    """The docstring's command lines as written, and each flag's default."""


def parse_args():
    """Script arguments and `DPOConfig`. `--help` lists the script's own flags without importing torch."""
    from trl import TrlParser  # light: no torch, no transformers

    if {"-h", "--help"} & set(sys.argv[1:]):
        TrlParser(RelabelScriptArguments, description=__doc__, formatter_class=HelpFormatter).parse_args(["--help"])
    from trl import DPOConfig

    return TrlParser((RelabelScriptArguments, DPOConfig)).parse_args_and_config()


def load_prompts(script_args: RelabelScriptArguments, users: list[str] | None):
    """The prompts: the marker task's (offline default), a local data file, or a Hub dataset."""
    if script_args.dataset_name is None:
        from trl_rfm.testing import make_prompt_dataset

        return make_prompt_dataset(users, script_args.num_prompts, condition_on_user=script_args.condition_on_user)
    from trl_rfm.data.raw import load_raw_split

    return load_raw_split(script_args.dataset_name, split="train")


def main(script_args: RelabelScriptArguments, training_args) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOTrainer

    from trl_rfm import PersonalizedReward, RewardFeatureModel, relabel_preferences, sample_candidates
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
    reward = PersonalizedReward(reward_model, reward_tokenizer, user_column=script_args.user_column)
    policy = AutoModelForCausalLM.from_pretrained(policy_path)
    tokenizer = AutoTokenizer.from_pretrained(policy_path)

    ################
    # Dataset: relabel sampled candidates with each user's reward
    ################
    users = [script_args.user_id] if script_args.user_id is not None else reward_model.user_ids
    prompts = load_prompts(script_args, users)
    # One user: every prompt is relabelled for them. Otherwise each prompt for the user of its user column, or,
    # without that column, for every user of the reward model.
    if script_args.user_id is None and script_args.user_column in prompts.column_names:
        rows = list(zip(prompts["prompt"], prompts[script_args.user_column]))
        user_kwargs = {"prompt_user_ids": prompts[script_args.user_column]}
    else:
        rows = [(prompt, user) for user in users for prompt in prompts["prompt"]]
        user_kwargs = {"user_ids": users}
    # The summary's prompts: the first `num_eval_prompts` of each user (8 users at most), scored for that user.
    counts, eval_rows = {}, []
    for prompt, user in rows:
        if counts.get(user, 0) < script_args.num_eval_prompts and (user in counts or len(counts) < 8):
            counts[user] = counts.get(user, 0) + 1
            eval_rows.append((prompt, user))
    eval_prompts, eval_users = map(list, zip(*eval_rows))
    marker_word = MARKER_WORD if script_args.model_name_or_path is None else None
    summary_args = dict(
        samples_per_prompt=script_args.eval_samples_per_prompt,
        max_new_tokens=script_args.max_new_tokens,
        seed=training_args.seed,
    )
    before = personalized_policy_summary(
        policy, tokenizer, reward, eval_prompts, eval_users, **summary_args, marker_word=marker_word
    )

    if "completions" in prompts.column_names:
        candidates = prompts["completions"]
    else:
        candidates = sample_candidates(
            policy,
            tokenizer,
            prompts["prompt"],
            num_candidates=script_args.num_candidates,
            max_new_tokens=script_args.max_new_tokens,
        )
    pairs = relabel_preferences(
        reward, prompts["prompt"], candidates, pairing=script_args.pairing, margin=script_args.margin, **user_kwargs
    )
    print(f"{len(pairs)} relabelled pairs for {len(set(pairs['user_id']))} user(s)")

    ################
    # Training
    ################
    trainer = DPOTrainer(
        model=policy,
        args=training_args,
        train_dataset=pairs.select_columns(["prompt", "chosen", "rejected"]),
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
