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
    --user_weights_learning_rate 3e-2 \
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
    --user_weights_learning_rate 3e-2 \
    --eval_strategy epoch \
    --bf16 False \
    --use_cpu True
(DeepSpeed on CPU: `--config_file examples/accelerate/deepspeed_zero3.yaml --num_processes 2 --mixed_precision no`
in place of `--multi_gpu --num_processes 2`, and `--ddp_backend gloo` in place of `--use_cpu True`.)

Options: the script's own flags (`--help`), TRL's `ModelConfig` flags (`--use_peft`, `--lora_r`, ...), and every
field of `RFMConfig`: `trl.RewardConfig`'s (`--output_dir`, `--learning_rate`, `--max_length`, ...) plus
`--num_features`, `--feature_normalization`, `--population_weights`, `--user_column`, `--unknown_users`,
`--user_weights_init_std`, `--user_weights_l2`, `--population_loss_weight`, `--user_weights_learning_rate`,
`--feature_head_learning_rate`, `--feature_covariance_l2` (documented in `trl_rfm.RFMConfig`).
"""

import os
import sys
from argparse import ArgumentDefaultsHelpFormatter, RawDescriptionHelpFormatter
from dataclasses import dataclass, field

from trl import ModelConfig, ScriptArguments, TrlParser  # light: no torch, no transformers


SYNTHETIC = "synthetic"
TINY = "tiny"
LOCAL_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass
class RFMScriptArguments(ScriptArguments):
    """
    Arguments of the script: TRL's [`~trl.ScriptArguments`] with `dataset_name` defaulting to `"synthetic"`.

    Args:
        dataset_name (`str`, *optional*, defaults to `"synthetic"`):
            `"synthetic"`, a Hub dataset id, a local `.json`/`.jsonl`/`.parquet`/`.csv` file, a directory written by
            `Dataset.save_to_disk`/`DatasetDict.save_to_disk`, or a directory of data files.
        num_users (`int`, *optional*, defaults to `16`):
            Raters of the synthetic dataset (alias: `--synthetic_num_users`).
        train_pairs_per_user (`int`, *optional*, defaults to `128`):
            Training comparisons per synthetic rater (alias: `--synthetic_pairs_per_user`).
        disagreement (`float`, *optional*, defaults to `1.0`):
            How much the synthetic raters disagree, from 0 (identical) to 1 (opposed opinion groups) (alias:
            `--synthetic_disagreement`).
    """

    dataset_name: str | None = field(
        default=SYNTHETIC,
        metadata={
            "help": "`synthetic`, a Hub dataset id, a local .json/.jsonl/.parquet/.csv file, a `save_to_disk` "
            "directory, or a directory of data files."
        },
    )
    num_users: int = field(
        default=16, metadata={"help": "Raters of the synthetic dataset.", "aliases": ["--synthetic_num_users"]}
    )
    train_pairs_per_user: int = field(
        default=128,
        metadata={"help": "Training comparisons per synthetic rater.", "aliases": ["--synthetic_pairs_per_user"]},
    )
    disagreement: float = field(
        default=1.0,
        metadata={
            "help": "Disagreement of the synthetic raters: 0 (identical) to 1 (opposed groups).",
            "aliases": ["--synthetic_disagreement"],
        },
    )


class HelpFormatter(RawDescriptionHelpFormatter, ArgumentDefaultsHelpFormatter):
    """The docstring's command lines as written, and each flag's default."""


def parse_args():
    """`--help` lists the script's and `ModelConfig`'s flags without importing torch (`RFMConfig` would)."""
    if {"-h", "--help"} & set(sys.argv[1:]):
        TrlParser((RFMScriptArguments, ModelConfig), description=__doc__, formatter_class=HelpFormatter).parse_args(
            ["--help"]
        )
    from trl_rfm import RFMConfig

    return TrlParser((RFMScriptArguments, RFMConfig, ModelConfig)).parse_args_and_config()


def load_preferences(script_args: RFMScriptArguments, seed: int):
    """The dataset (as a `DatasetDict`) and, for synthetic data, the texts that make up its vocabulary."""
    from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

    name = script_args.dataset_name
    if name == SYNTHETIC:
        from trl_rfm.testing import make_synthetic_preferences

        data = make_synthetic_preferences(
            num_users=script_args.num_users,
            num_heldout_users=0,
            train_pairs_per_user=script_args.train_pairs_per_user,
            disagreement=script_args.disagreement,
            seed=seed,
        )
        splits = {script_args.dataset_train_split: data.train, script_args.dataset_test_split: data.test}
        return DatasetDict(splits), data.vocabulary_texts()
    if os.path.isdir(name) and any(
        os.path.exists(os.path.join(name, marker)) for marker in ("dataset_info.json", "dataset_dict.json")
    ):
        dataset = load_from_disk(name)
    elif os.path.isfile(name):
        extension = os.path.splitext(name)[1].lower()
        if extension not in LOCAL_FILE_BUILDERS:
            raise ValueError(
                f"Cannot load the dataset file {name!r}: supported extensions are {sorted(LOCAL_FILE_BUILDERS)}."
            )
        dataset = load_dataset(LOCAL_FILE_BUILDERS[extension], data_files=name)
    else:  # a Hub id or a directory of data files
        dataset = load_dataset(name, name=script_args.dataset_config, streaming=script_args.dataset_streaming)
    if isinstance(dataset, Dataset):
        dataset = DatasetDict({script_args.dataset_train_split: dataset})
    return dataset, None


def preference_texts(dataset) -> list[str]:
    """Every text of a preference dataset (standard or conversational), to build a tokenizer that knows its words."""
    texts = []
    for column in ("prompt", "chosen", "rejected"):
        if column not in dataset.column_names:
            continue
        for value in dataset[column]:
            messages = value if isinstance(value, list) else [{"content": value}]
            texts.extend(message["content"] for message in messages)
    return texts


if __name__ == "__main__":
    script_args, training_args, model_args = parse_args()
    from transformers import set_seed
    from trl import get_peft_config, get_quantization_config

    from trl_rfm import RFMRewardTrainer
    from trl_rfm.testing import build_tiny_causal_lm, build_tokenizer

    # Same weights in every process and every run with the same seed, however many processes there are.
    set_seed(training_args.seed)

    ##############
    # Load dataset
    ##############
    # Loaded first: the tiny model's tokenizer is built on the dataset's words.
    dataset, vocabulary_texts = load_preferences(script_args, training_args.seed)
    if script_args.dataset_train_split not in dataset:
        raise ValueError(
            f"The dataset has no split {script_args.dataset_train_split!r} (`--dataset_train_split`); its splits are "
            f"{list(dataset)}."
        )
    train_dataset = dataset[script_args.dataset_train_split]
    eval_dataset = None
    if training_args.eval_strategy != "no":
        if script_args.dataset_test_split not in dataset:
            raise ValueError(
                f"`--eval_strategy {training_args.eval_strategy.value}` needs a split {script_args.dataset_test_split!r} "
                f"(`--dataset_test_split`); the dataset's splits are {list(dataset)}."
            )
        eval_dataset = dataset[script_args.dataset_test_split]

    ################
    # Model & Tokenizer
    ################
    if model_args.model_name_or_path is None:
        raise ValueError("Pass `--model_name_or_path`: a model id, a local path, or `tiny` for a tiny local model.")
    if model_args.use_peft and model_args.lora_task_type not in ("SEQ_CLS", "FEATURE_EXTRACTION"):
        raise ValueError(
            f"`--lora_task_type {model_args.lora_task_type}` cannot wrap a reward model: pass `--lora_task_type SEQ_CLS`."
        )
    if model_args.model_name_or_path == TINY:
        tokenizer = build_tokenizer(vocabulary_texts or preference_texts(train_dataset))
        model = build_tiny_causal_lm(tokenizer, seed=training_args.seed)
    else:
        # The trainer loads the model (a causal LM, or a Reward Feature Model to continue training) and its tokenizer.
        model_init_kwargs = dict(
            revision=model_args.model_revision,
            attn_implementation=model_args.attn_implementation,
            dtype=model_args.dtype,
        )
        if training_args.model_init_kwargs is not None:
            model_init_kwargs.update(training_args.model_init_kwargs)
        training_args.model_init_kwargs = model_init_kwargs
        tokenizer = None
        model = model_args.model_name_or_path

    ##########
    # Training
    ##########
    trainer = RFMRewardTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.accelerator.print("✅ Training completed.")

    ############################
    # Save model and push to Hub
    ############################
    trainer.save_model(training_args.output_dir)
    trainer.save_state()  # trainer_state.json: the logged losses and metrics
    trainer.accelerator.print(f"💾 Model saved to {training_args.output_dir}.")

    if training_args.eval_strategy != "no":
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)

    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
        trainer.accelerator.print(f"🤗 Model pushed to the Hub in https://huggingface.co/{trainer.hub_model_id}.")

    # Tear the process group down before the interpreter exits: a gloo group left to static destructors can abort a
    # rank ("terminate called without an active exception") after everything was saved, failing the launcher.
    trainer.accelerator.end_training()
