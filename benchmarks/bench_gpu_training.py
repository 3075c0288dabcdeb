"""
GPU training throughput of a Reward Feature Model: bf16 + LoRA on a randomly initialised ~0.5B-parameter Qwen2-shaped
backbone, one GPU, DeepSpeed ZeRO-2 and ZeRO-3 (the configs of `examples/accelerate/`). Records tokens/s, peak GPU
memory and model FLOPs utilisation (MFU), and prints a table (and writes `results.json` in `--output_dir`).

No weights are downloaded: the backbone is `Qwen2Config` with Qwen2-0.5B's shape (hidden 896, 24 layers, 14 heads,
2 KV heads, MLP 4864, vocabulary 151,936: 494M parameters), randomly initialised; the tokenizer is trl-rfm's word-level
one, and the synthetic comparisons are lengthened with filler words to `--sequence_length` tokens.

    python benchmarks/bench_gpu_training.py                                  # both ZeRO stages, H100 defaults
    python benchmarks/bench_gpu_training.py --stages 3 --per_device_train_batch_size 16 --sequence_length 1024

Each stage runs in its own `accelerate launch --config_file examples/accelerate/deepspeed_zero{2,3}.yaml
--num_processes 1` process (this file, with `--worker`). CPU smoke test of the code path (no meaningful figures):

    python benchmarks/bench_gpu_training.py --smoke_test

MFU = achieved model FLOPs / `--peak_tflops` (H100 SXM dense bf16: 989). Model FLOPs per token are those of the
PaLM appendix B count, `6 N + 12 L H T` (N: non-embedding parameters, L layers, H hidden size, T sequence length),
times 2/3 for LoRA: the frozen weights get no weight gradient, so the backward pass costs one forward, not two.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers import HfArgumentParser, Qwen2Config, TrainerCallback  # noqa: E402


REPO = Path(__file__).resolve().parents[1]
QWEN2_0_5B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                  intermediate_size=4864, vocab_size=151936)  # fmt: skip
SMOKE_TEST = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128, vocab_size=512)  # fmt: skip


@dataclass
class BenchmarkArguments:
    stages: str = field(default="2,3", metadata={"help": "Comma-separated DeepSpeed ZeRO stages to run (2, 3)."})
    sequence_length: int = field(default=512, metadata={"help": "Tokens per sequence (prompt + response)."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Comparisons (pairs) per step."})
    gradient_checkpointing: bool = field(default=True, metadata={"help": "Activation checkpointing of the trunk."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (all linear layers of the trunk)."})
    num_features: int = field(default=32, metadata={"help": "Reward features d."})
    num_users: int = field(default=64, metadata={"help": "Raters in the synthetic data."})
    warmup_steps: int = field(default=5, metadata={"help": "Untimed steps."})
    timed_steps: int = field(default=20, metadata={"help": "Timed steps."})
    peak_tflops: float = field(default=989.0, metadata={"help": "Peak dense bf16 TFLOP/s of the GPU (H100 SXM: 989)."})
    output_dir: str | None = field(default=None, metadata={"help": "Where results.json goes (temporary if unset)."})
    smoke_test: bool = field(default=False, metadata={"help": "Tiny model, fp32, CPU: checks the code path only."})
    worker: bool = field(default=False, metadata={"help": "Internal: run one stage in this (launched) process."})
    stage: int = field(default=2, metadata={"help": "Internal: the stage of a worker."})


class StepTimer(TrainerCallback):
    """Times the optimisation steps after the warm-up and counts the tokens they processed."""

    def __init__(self, warmup_steps: int):
        self.warmup_steps, self.trainer = warmup_steps, None
        self.start_time = self.start_tokens = None
        self.seconds = self.tokens = 0.0

    def _synchronize(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.warmup_steps:
            self._synchronize()
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            self.start_time, self.start_tokens = time.perf_counter(), self.trainer._total_train_tokens

    def on_train_end(self, args, state, control, **kwargs):
        self._synchronize()
        self.seconds = time.perf_counter() - self.start_time
        self.tokens = self.trainer._total_train_tokens - self.start_tokens


def _long_preferences(args: BenchmarkArguments):
    from trl_rfm.testing import make_synthetic_preferences

    steps = args.warmup_steps + args.timed_steps
    pairs_per_user = -(-steps * args.per_device_train_batch_size // args.num_users)
    data = make_synthetic_preferences(
        num_users=args.num_users, num_heldout_users=0, train_pairs_per_user=pairs_per_user, seed=0
    )
    # Filler words in the prompt bring every sequence to about `sequence_length` tokens; the preference signal (the
    # attribute words of the responses) stays in the responses.
    filler = ("the answer is here so we think " * args.sequence_length).split()

    def lengthen(row):
        response_words = max(len(row["chosen"].split()), len(row["rejected"].split()))
        padding = filler[: max(0, args.sequence_length - response_words - len(row["prompt"].split()) - 4)]
        return {"prompt": " ".join(padding) + " " + row["prompt"]}

    return data, data.train.map(lengthen)


def run_worker(args: BenchmarkArguments) -> None:
    from peft import LoraConfig
    from transformers import AutoModel

    from trl_rfm import RFMConfig, RFMRewardTrainer
    from trl_rfm.testing import build_tokenizer

    output_dir = Path(args.output_dir)
    training_args = RFMConfig(
        output_dir=str(output_dir / f"zero{args.stage}"),
        num_features=args.num_features,
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_checkpointing=args.gradient_checkpointing,
        max_steps=args.warmup_steps + args.timed_steps,
        max_length=args.sequence_length + 16,
        learning_rate=1e-4,
        logging_steps=args.warmup_steps + args.timed_steps,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        bf16=not args.smoke_test,
        ddp_backend="gloo" if args.smoke_test else None,  # DeepSpeed's process group on a machine without GPUs
        seed=0,
    )
    data, train_dataset = _long_preferences(args)
    tokenizer = build_tokenizer(data.vocabulary_texts())
    shape = SMOKE_TEST if args.smoke_test else QWEN2_0_5B
    config = Qwen2Config(
        **shape,
        max_position_embeddings=max(4096, 2 * args.sequence_length),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        dtype=torch.float32 if args.smoke_test else torch.bfloat16,
    )
    backbone = AutoModel.from_config(config, dtype=config.dtype)  # random init; partitioned when ZeRO-3 is on
    num_parameters = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in backbone.parameters())
    num_embedding = config.vocab_size * config.hidden_size
    peft_config = LoraConfig(
        task_type="SEQ_CLS", r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0, target_modules="all-linear"
    )
    timer = StepTimer(args.warmup_steps)
    trainer = RFMRewardTrainer(
        model=backbone,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[timer],
    )
    timer.trainer = trainer
    trainer.train()

    tokens_per_second = timer.tokens / timer.seconds
    n, layers, hidden = num_parameters - num_embedding, config.num_hidden_layers, config.hidden_size
    flops_per_token = (6 * n + 12 * layers * hidden * args.sequence_length) * 2 / 3  # LoRA: no frozen weight grads
    result = {
        "zero_stage": args.stage,
        "backbone_parameters": num_parameters,
        "sequence_length": args.sequence_length,
        "pairs_per_step": args.per_device_train_batch_size,
        "gradient_checkpointing": args.gradient_checkpointing,
        "tokens_per_second": tokens_per_second,
        "seconds_per_step": timer.seconds / args.timed_steps,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan"),
        "mfu": tokens_per_second * flops_per_token / (args.peak_tflops * 1e12),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }
    if trainer.accelerator.is_main_process:
        (output_dir / f"zero{args.stage}.json").write_text(json.dumps(result, indent=2))


def run_all(args: BenchmarkArguments) -> None:
    from rich.console import Console
    from rich.table import Table

    args.output_dir = args.output_dir or tempfile.mkdtemp(prefix="trl-rfm-gpu-bench-")
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    results = []
    for stage in [int(s) for s in args.stages.split(",")]:
        worker_args = {**asdict(args), "worker": True, "stage": stage}
        argv = [f"--{k}={v}" for k, v in worker_args.items() if v is not None and k != "stages"]
        command = [
            sys.executable, "-m", "accelerate.commands.launch",
            "--config_file", str(REPO / "examples" / "accelerate" / f"deepspeed_zero{stage}.yaml"),
            "--num_processes", "1", "--num_machines", "1", "--dynamo_backend", "no",
            "--mixed_precision", "no" if args.smoke_test else "bf16",
            __file__, *argv,
        ]  # fmt: skip
        subprocess.run(command, check=True, cwd=REPO)
        results.append(json.loads((Path(args.output_dir) / f"zero{stage}.json").read_text()))
    (Path(args.output_dir) / "results.json").write_text(json.dumps(results, indent=2))

    table = Table(title=f"RFM training, bf16 + LoRA r={args.lora_r}, 1 GPU ({results[0]['device']})")
    for column in ("DeepSpeed", "tokens/s", "s/step", "peak memory (GiB)", "MFU"):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(
            f"ZeRO-{r['zero_stage']}", f"{r['tokens_per_second']:,.0f}", f"{r['seconds_per_step']:.3f}",
            f"{r['peak_memory_gib']:.1f}", f"{r['mfu']:.1%}",
        )  # fmt: skip
    Console().print(table)
    print(f"backbone: {results[0]['backbone_parameters'] / 1e6:.0f}M parameters, {args.sequence_length} tokens per "
          f"sequence, {args.per_device_train_batch_size} pairs per step; results in {args.output_dir}/results.json")  # fmt: skip


if __name__ == "__main__":
    (arguments,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses()
    run_worker(arguments) if arguments.worker else run_all(arguments)
