# /// script
# dependencies = [
#     "trl-rfm",
# ]
# ///

"""
DPO with a personalised reward, by relabelling: sample candidate completions from the policy, score them with each
user's reward `r_u` (one feature pass for all users), keep best-vs-worst (or every pair above a margin) per user, and
train the stock `trl.DPOTrainer` on the resulting `prompt/chosen/rejected` pairs.

Offline smoke test (a tiny reward model is trained on the marker task, users `likes_funny` / `avoids_funny`):
python examples/dpo_relabel_personalized.py \
    --output_dir dpo-relabel-personalized \
    --user_id likes_funny \
    --num_candidates 4 \
    --max_new_tokens 8 \
    --max_steps 20 \
    --per_device_train_batch_size 8 \
    --learning_rate 1e-4 \
    --logging_steps 5 \
    --use_cpu True \
    --bf16 False \
    --report_to none

Without `--user_id`, each prompt is relabelled for the user of its `user_id` column (`--condition_on_user True` makes
the prompts name their user, so one policy learns them all). `--pairing all_pairs --margin 0.5` keeps every clear pair.
"""

import os
from dataclasses import dataclass, field

from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer, TrlParser

from trl_rfm import PersonalizedReward, relabel_preferences, sample_candidates
from trl_rfm.marker_task import make_prompt_dataset, prepare_marker_models


@dataclass
class RelabelScriptArguments:
    rfm_path: str | None = field(
        default=None,
        metadata={"help": "A trained Reward Feature Model; default: train a tiny one on the marker task."},
    )
    policy_path: str | None = field(default=None, metadata={"help": "Policy to fine-tune; default: a tiny random LM."})
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Prompts (json/jsonl/parquet), optionally with a `completions` column of candidates."},
    )
    user_id: str | None = field(default=None, metadata={"help": "Relabel for this user only; default: every user."})
    condition_on_user: bool = field(
        default=False, metadata={"help": "Marker task: prompts name their user, so one policy can serve all."}
    )
    num_prompts: int = field(default=64, metadata={"help": "Marker-task prompts to relabel."})
    num_candidates: int = field(default=4, metadata={"help": "Completions sampled per prompt (when not given)."})
    max_new_tokens: int = field(default=16, metadata={"help": "Length of sampled candidates."})
    pairing: str = field(default="best_vs_worst", metadata={"help": "`best_vs_worst` or `all_pairs`."})
    margin: float = field(default=0.0, metadata={"help": "Keep pairs whose reward difference exceeds this."})


def main():
    parser = TrlParser((RelabelScriptArguments, DPOConfig))
    script_args, training_args = parser.parse_args_and_config()
    reward_model, reward_tokenizer, policy_path = prepare_marker_models(
        training_args.output_dir, script_args.rfm_path, script_args.policy_path, seed=training_args.seed
    )
    reward = PersonalizedReward(reward_model, reward_tokenizer)
    users = [script_args.user_id] if script_args.user_id is not None else reward_model.user_ids

    if script_args.dataset_name is not None:
        extension = os.path.splitext(script_args.dataset_name)[1].lstrip(".").replace("jsonl", "json")
        prompts = load_dataset(extension, data_files=script_args.dataset_name, split="train")
    else:
        prompts = make_prompt_dataset(
            users, num_prompts=script_args.num_prompts, condition_on_user=script_args.condition_on_user
        )
    policy = AutoModelForCausalLM.from_pretrained(policy_path)
    tokenizer = AutoTokenizer.from_pretrained(policy_path)
    if "completions" in prompts.column_names:
        candidates = prompts["completions"]
    else:
        candidates = sample_candidates(
            policy, tokenizer, prompts["prompt"], script_args.num_candidates, script_args.max_new_tokens
        )
    # One user: every prompt is relabelled for them. Otherwise each prompt for the user of its `user_id` column, or,
    # without that column, for every user of the reward model.
    if script_args.user_id is None and "user_id" in prompts.column_names:
        user_kwargs = {"prompt_user_ids": prompts["user_id"]}
    else:
        user_kwargs = {"user_ids": users}
    pairs = relabel_preferences(
        reward, prompts["prompt"], candidates, pairing=script_args.pairing, margin=script_args.margin, **user_kwargs
    )
    print(f"{len(pairs)} relabelled pairs for {len(set(pairs['user_id']))} user(s)")

    trainer = DPOTrainer(
        model=policy_path,
        args=training_args,
        train_dataset=pairs.select_columns(["prompt", "chosen", "rejected"]),
        processing_class=tokenizer,
    )
    trainer.train()
    trainer.save_model(training_args.output_dir)


if __name__ == "__main__":
    main()
