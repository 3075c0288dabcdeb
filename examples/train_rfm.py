# /// script
# dependencies = [
#     "trl-rfm",
#     "peft",
# ]
# ///

r"""
Trains a Reward Feature Model (a personalised reward model) with [`RFMRewardTrainer`], in the style of TRL's
`examples/scripts/reward_modeling.py`. The dataset is a TRL preference dataset (`chosen`/`rejected`, optional
`prompt`) with a rater id per comparison (column `user_id`, or `--user_column`).

Works offline: `--model_name_or_path tiny` builds a tiny Llama-shaped LM with a word-level tokenizer on the dataset's
words, `--dataset_name synthetic` (the default) generates raters who disagree, and any model or dataset may be a local
path (a model directory; a `.json`/`.jsonl`/`.parquet`/`.csv` file or a directory written by `save_to_disk`). A JSONL
file holds one comparison per line, e.g.
    {"prompt": "Describe a cat.", "chosen": "A small furry pet.", "rejected": "A car.", "user_id": "alice"}
The output directory holds the model, its tokenizer and `user_weights.safetensors`: what `trl-rfm adapt`, `trl-rfm
export` and the policy examples (`--model_name_or_path`) read.

Smoke test on a laptop CPU (about a minute):
python examples/train_rfm.py \
    --model_name_or_path tiny \
    --dataset_name synthetic \
    --num_users 16 \
    --output_dir rfm-tiny \
    --num_features 8 \
    --per_device_train_batch_size 32 \
    --per_device_eval_batch_size 64 \
    --num_train_epochs 4 \
    --learning_rate 3e-3 \
    --eval_strategy epoch \
    --bf16 False \
    --use_cpu True

Full training:
python examples/train_rfm.py \
    --model_name_or_path Qwen/Qwen2-0.5B-Instruct \
    --dataset_name preferences.jsonl \
    --output_dir Qwen2-0.5B-RFM \
    --num_features 32 \
    --per_device_train_batch_size 8 \
    --num_train_epochs 1 \
    --gradient_checkpointing True \
    --learning_rate 1.0e-5 \
    --user_weights_learning_rate 1.0e-3 \
    --eval_strategy steps \
    --eval_steps 50 \
    --max_length 2048

LoRA:
python examples/train_rfm.py \
    --model_name_or_path Qwen/Qwen2-0.5B-Instruct \
    --dataset_name preferences.jsonl \
    --output_dir Qwen2-0.5B-RFM-LoRA \
    --num_features 32 \
    --per_device_train_batch_size 8 \
    --num_train_epochs 1 \
    --learning_rate 1.0e-4 \
    --user_weights_learning_rate 1.0e-3 \
    --eval_strategy steps \
    --eval_steps 50 \
    --max_length 2048 \
    --use_peft \
    --lora_task_type SEQ_CLS \
    --lora_r 32 \
    --lora_alpha 16

Several GPUs (DDP; set `num_processes` in the config or pass `--num_processes N`):
accelerate launch --config_file examples/accelerate/multi_gpu.yaml examples/train_rfm.py \
    --model_name_or_path Qwen/Qwen2-0.5B-Instruct \
    --dataset_name preferences.jsonl \
    --output_dir Qwen2-0.5B-RFM \
    --per_device_train_batch_size 8 \
    --gradient_checkpointing True \
    --learning_rate 1.0e-5

DeepSpeed ZeRO-2 / ZeRO-3: the same with `--config_file examples/accelerate/deepspeed_zero2.yaml` (or `..._zero3.yaml`).

Two processes on a CPU-only machine (DDP over gloo), to try multi-process training without GPUs:
accelerate launch --multi_gpu --num_processes 2 examples/train_rfm.py \
    --model_name_or_path tiny \
    --output_dir rfm-tiny-ddp \
    --num_features 8 \
    --per_device_train_batch_size 16 \
    --per_device_eval_batch_size 64 \
    --num_train_epochs 4 \
    --learning_rate 3e-3 \
    --eval_strategy epoch \
    --bf16 False \
    --use_cpu True
(DeepSpeed on CPU: `--config_file examples/accelerate/deepspeed_zero3.yaml --num_processes 2 --mixed_precision no`
in place of `--multi_gpu --num_processes 2`, and `--ddp_backend gloo` in place of `--use_cpu True`.)

The script is `trl-rfm reward` (`trl_rfm/cli/reward.py`, the same code): TRL's `trl reward` with the RFM trainer,
accepting every `trl reward` flag and `--config recipe.yaml`.

Options: the script's own flags (`--help`), TRL's `ModelConfig` flags (`--use_peft`, `--lora_r`, ...), and every
field of `RFMConfig`: `trl.RewardConfig`'s (`--output_dir`, `--learning_rate`, `--max_length`, ...) plus
`--num_features`, `--feature_normalization`, `--population_weights`, `--user_column`, `--unknown_users`,
`--user_weights_init_std`, `--user_weights_l2`, `--population_loss_weight`, `--user_weights_learning_rate`,
`--feature_head_learning_rate`, `--feature_covariance_l2` (documented in `trl_rfm.RFMConfig`).
"""

import importlib.util
import os
import sys


def reward_cli():
    """`trl_rfm/cli/reward.py`, loaded by path: importing it as `trl_rfm.cli.reward` would import `trl_rfm` (and torch)
    before a `--help` could answer."""
    package = importlib.util.find_spec("trl_rfm")  # locates the package without importing it
    path = os.path.join(os.path.dirname(package.origin), "cli", "reward.py")
    spec = importlib.util.spec_from_file_location("trl_rfm_reward_cli", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    reward_cli().main(sys.argv[1:], prog=os.path.basename(__file__), description=__doc__)
