r"""
`trl-rfm reward`: TRL's `trl reward` for a Reward Feature Model (a personalised reward model). Every flag of
`trl reward` and its `--config recipe.yaml` work unchanged; the RFM's own options (`RFMConfig`: `--num_features`,
`--user_column`, `--user_weights_learning_rate`, ...) come on top. A dataset with a rater id per comparison (column
`user_id`, or `--user_column`) trains one row of weights per rater; without one, a plain reward model with reward
features. `--model_name_or_path` may be a causal LM, an existing sequence-classification reward model (personalised:
its score is the population reward at step 0), or a Reward Feature Model to continue training.

    trl-rfm reward --model_name_or_path Qwen/Qwen2-0.5B-Instruct --dataset_name preferences.jsonl \
        --output_dir Qwen2-0.5B-RFM --per_device_train_batch_size 8 --learning_rate 1e-5
    trl-rfm reward --config recipe.yaml

Offline: `--model_name_or_path tiny` (a tiny Llama-shaped LM with a word-level tokenizer on the dataset's words) and
`--dataset_name synthetic` (the default: raters who disagree). `examples/train_rfm.py` runs this same code.

The module imports neither torch nor `trl_rfm` at the top (only TRL's light argument classes), so that a `--help`
answers fast; it uses absolute imports only, so that the example can load it by path.
"""

import os
import sys
from argparse import ArgumentDefaultsHelpFormatter, RawDescriptionHelpFormatter
from dataclasses import dataclass, field

from trl import ModelConfig, ScriptArguments, TrlParser  # light: no torch, no transformers


PROG = "trl-rfm reward"
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


def make_parser(prog: str | None = PROG, description: str | None = __doc__, light: bool = False) -> TrlParser:
    """`trl reward`'s parser with [`RFMConfig`] in place of `RewardConfig` (`--config recipe.yaml` included).
    `light=True`: the script's and `ModelConfig`'s flags only, for a `--help` that imports no torch."""
    if light:
        return TrlParser(
            (RFMScriptArguments, ModelConfig), prog=prog, description=description, formatter_class=HelpFormatter
        )
    from trl import DatasetMixtureConfig

    from trl_rfm import RFMConfig

    dataclass_types = (RFMScriptArguments, RFMConfig, ModelConfig, DatasetMixtureConfig)
    return TrlParser(dataclass_types, prog=prog, description=description, formatter_class=HelpFormatter)


def parse_args(argv: list[str] | None = None, prog: str | None = PROG, description: str | None = __doc__):
    """`--help` lists the script's and `ModelConfig`'s flags without importing torch (`RFMConfig` would)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if {"-h", "--help"} & set(argv):
        make_parser(prog, description, light=True).parse_args(["--help"])
    return make_parser(prog, description).parse_args_and_config(args=argv)


def load_preferences(script_args: RFMScriptArguments, seed: int, dataset_args=None):
    """The dataset (as a `DatasetDict`) and, for synthetic data, the texts that make up its vocabulary. A dataset
    mixture (`--datasets`, `trl reward`'s `DatasetMixtureConfig`) takes precedence over `--dataset_name`."""
    from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

    if dataset_args is not None and dataset_args.datasets:
        from trl import get_dataset

        return get_dataset(dataset_args), None
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


def train(script_args, training_args, model_args, dataset_args=None):
    """`trl reward`'s script with [`RFMRewardTrainer`]: loads the data and the model, trains, saves (model, tokenizer,
    user weights, `trainer_state.json`), evaluates and pushes as asked."""
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
    dataset, vocabulary_texts = load_preferences(script_args, training_args.seed, dataset_args)
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
            trust_remote_code=training_args.trust_remote_code,
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


def main(argv: list[str] | None = None, prog: str | None = PROG, description: str | None = __doc__) -> None:
    """`trl-rfm reward [flags of trl reward] [RFM flags] [--config recipe.yaml]`."""
    train(*parse_args(argv, prog, description))


if __name__ == "__main__":
    main()
