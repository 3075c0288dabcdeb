"""
One optimisation step of `RFMRewardTrainer` vs TRL's `RewardTrainer` on the same backbone and batch.

Both trainers are built on the same randomly initialised Llama-shaped backbone (the RFM as a trunk + feature head +
user table, TRL's as `LlamaForSequenceClassification`), fed the same collated batch, and timed step by step,
interleaved, in one process, so that machine noise hits both alike. Prints a table and the median ratio.

    python benchmarks/bench_training_step.py                       # defaults: hidden 256, 4 layers, 16 pairs
    python benchmarks/bench_training_step.py --hidden_size 512 --num_layers 8 --steps 30
"""

import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from transformers import AutoModelForSequenceClassification, HfArgumentParser  # noqa: E402
from trl import RewardConfig, RewardTrainer  # noqa: E402

from trl_rfm import RFMConfig, RFMRewardTrainer  # noqa: E402
from trl_rfm.testing import build_tiny_causal_lm, build_tokenizer, make_synthetic_preferences  # noqa: E402


@dataclass
class BenchmarkArguments:
    hidden_size: int = field(default=256, metadata={"help": "Backbone hidden size."})
    num_layers: int = field(default=4, metadata={"help": "Backbone layers."})
    num_features: int = field(default=32, metadata={"help": "RFM feature dimension d."})
    num_users: int = field(default=64, metadata={"help": "Raters in the data (rows of the user table)."})
    batch_pairs: int = field(default=16, metadata={"help": "Pairs per step."})
    steps: int = field(default=20, metadata={"help": "Timed steps per trainer (after 3 warm-up steps)."})


def _common_args(output_dir: str, batch_pairs: int) -> dict:
    return dict(
        output_dir=output_dir,
        per_device_train_batch_size=batch_pairs,
        report_to="none",
        bf16=False,
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
        seed=0,
    )


def main(args: BenchmarkArguments) -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = make_synthetic_preferences(num_users=args.num_users, num_heldout_users=0, train_pairs_per_user=8)
    tokenizer = build_tokenizer(data.vocabulary_texts())
    lm = build_tiny_causal_lm(
        tokenizer,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=max(1, args.hidden_size // 64),
        intermediate_size=4 * args.hidden_size,
    )
    with tempfile.TemporaryDirectory() as tmp:
        lm.save_pretrained(tmp)
        baseline_model = AutoModelForSequenceClassification.from_pretrained(tmp, num_labels=1)
    baseline_model.config.pad_token_id = tokenizer.pad_token_id

    with tempfile.TemporaryDirectory() as out:
        rfm = RFMRewardTrainer(
            model=lm,
            args=RFMConfig(num_features=args.num_features, **_common_args(out, args.batch_pairs)),
            train_dataset=data.train,
            processing_class=tokenizer,
        )
        trl_trainer = RewardTrainer(
            model=baseline_model,
            args=RewardConfig(**_common_args(out, args.batch_pairs)),
            train_dataset=data.train.remove_columns("user_id"),
            processing_class=tokenizer,
        )
        trainers = {"trl.RewardTrainer": trl_trainer, "RFMRewardTrainer": rfm}
        rows = [rfm.train_dataset[i] for i in range(args.batch_pairs)]
        batches = {
            "trl.RewardTrainer": trl_trainer.data_collator(
                [{k: r[k] for k in ("chosen_ids", "rejected_ids")} for r in rows]
            ),
            "RFMRewardTrainer": rfm.data_collator(
                [{k: r[k] for k in ("chosen_ids", "rejected_ids", "user_index")} for r in rows]
            ),
        }
        for trainer in trainers.values():
            trainer.create_optimizer_and_scheduler(num_training_steps=args.steps + 3)
            trainer.model.train()
            trainer.current_gradient_accumulation_steps = 1  # set by `train()`, which this benchmark bypasses

        def step(name: str) -> float:
            trainer = trainers[name]
            start = time.perf_counter()
            trainer.training_step(trainer.model, dict(batches[name]))
            trainer.optimizer.step()
            trainer.optimizer.zero_grad()
            return time.perf_counter() - start

        for _ in range(3):
            for name in trainers:
                step(name)
        timings = {name: [] for name in trainers}
        for _ in range(args.steps):
            for name in trainers:  # interleaved, so drifts in machine load hit both
                timings[name].append(step(name))

    baseline = statistics.median(timings["trl.RewardTrainer"])
    table = Table(
        title=f"One training step: {args.batch_pairs} pairs, hidden {args.hidden_size}, {args.num_layers} layers"
    )
    for column in ("trainer", "median ms", "min ms", "ratio to TRL"):
        table.add_column(column, justify="right")
    for name, values in timings.items():
        median = statistics.median(values)
        table.add_row(name, f"{1e3 * median:.1f}", f"{1e3 * min(values):.1f}", f"{median / baseline:.3f}")
    Console().print(table)


if __name__ == "__main__":
    (benchmark_args,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses()
    main(benchmark_args)
