"""
`trl-rfm evaluate`: few-shot adaptation of held-out users, RFM against baselines, as JSON and a plot.

With no data files it runs the synthetic high-disagreement setting (raters from opposed opinion groups, known true
preferences, a tiny transformer built locally): offline, minutes on a laptop CPU. With `--train_file`,
`--adaptation_file` and `--test_file` (JSON/JSONL/CSV/Parquet comparisons with a `user_id` column) it evaluates your
data on the backbone `--model_name_or_path`.
"""

import os
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table

from ..evaluation.harness import AdaptationEvaluationConfig, AdaptationEvaluationResult, evaluate_adaptation
from .common import load_comparisons, parse_arguments, synthetic_heldout_split


@dataclass
class EvaluateDataArguments:
    output_dir: str = field(default="trl-rfm-evaluation", metadata={"help": "Where results.json and the plot go."})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Backbone causal LM (path or Hub id); a tiny local one with synthetic data."}
    )
    train_file: str | None = field(default=None, metadata={"help": "Comparisons of the training users."})
    adaptation_file: str | None = field(default=None, metadata={"help": "Held-out users' adaptation comparisons."})
    test_file: str | None = field(default=None, metadata={"help": "Held-out users' test comparisons."})
    calibration_file: str | None = field(
        default=None, metadata={"help": "Training users' comparisons not trained on, for choosing l2 (optional)."}
    )
    user_column: str = field(default="user_id", metadata={"help": "Column with the rater id."})
    num_users: int = field(default=24, metadata={"help": "Synthetic: training raters."})
    num_heldout_users: int = field(default=24, metadata={"help": "Synthetic: held-out raters."})
    train_pairs_per_user: int = field(default=128, metadata={"help": "Synthetic: training pairs per rater."})
    test_pairs_per_user: int = field(default=50, metadata={"help": "Synthetic: test pairs per held-out rater."})
    disagreement: float = field(default=1.0, metadata={"help": "Synthetic: 0 (identical raters) to 1 (opposed)."})


def run_evaluation(data_args: EvaluateDataArguments, config: AdaptationEvaluationConfig) -> AdaptationEvaluationResult:
    console = Console()
    os.makedirs(data_args.output_dir, exist_ok=True)
    files = (data_args.train_file, data_args.adaptation_file, data_args.test_file)
    true_user_weights = None
    if any(files):
        if not all(files) or data_args.model_name_or_path is None:
            raise ValueError(
                "Evaluating your data needs --train_file, --adaptation_file, --test_file and --model_name_or_path."
            )
        from transformers import AutoTokenizer

        train, adaptation, test = (load_comparisons(f) for f in files)
        calibration = load_comparisons(data_args.calibration_file) if data_args.calibration_file else None
        backbone = data_args.model_name_or_path
        tokenizer = AutoTokenizer.from_pretrained(backbone)
        title = f"{os.path.basename(data_args.test_file)}: held-out users"
    else:
        from ..testing.tiny_models import build_tiny_causal_lm, build_tokenizer

        data, adaptation, test = synthetic_heldout_split(
            data_args.num_users,
            data_args.num_heldout_users,
            data_args.train_pairs_per_user,
            max(config.shot_list),
            data_args.test_pairs_per_user,
            data_args.disagreement,
            config.seed,
        )
        train, calibration, true_user_weights = data.train, data.test, data.true_user_weights
        # The id_rm baseline writes user ids into prompts: the word-level tokenizer must know them.
        tokenizer = build_tokenizer([*data.vocabulary_texts(), "user :", " ".join(true_user_weights)])
        backbone = os.path.join(data_args.output_dir, "backbone")
        build_tiny_causal_lm(tokenizer, seed=config.seed).save_pretrained(backbone)
        tokenizer.save_pretrained(backbone)
        title = f"Synthetic raters, disagreement {data_args.disagreement}: {data_args.num_heldout_users} held-out"

    result = evaluate_adaptation(
        backbone,
        tokenizer,
        train,
        adaptation,
        test,
        config=config,
        calibration_dataset=calibration,
        true_user_weights=true_user_weights,
        user_column=data_args.user_column,
        output_dir=os.path.join(data_args.output_dir, "models"),
        log=lambda message: console.print(f"[dim]{message}[/dim]"),
    )
    result.to_json(os.path.join(data_args.output_dir, "results.json"))
    result.plot(os.path.join(data_args.output_dir, "accuracy_vs_k.png"), title=title)

    table = Table(title=f"Held-out users ({result.num_heldout_users}): test accuracy, mean ± std over draws")
    table.add_column("k", justify="right")
    for method in result.accuracy:
        table.add_column(method, justify="right")
    for k in result.shots:
        cells = [f"{by_k[str(k)]['mean']:.1%} ± {by_k[str(k)]['std']:.1%}" for by_k in result.accuracy.values()]
        table.add_row(str(k), *cells)
    console.print(table)
    console.print(f"l2: {result.l2}; wrote {data_args.output_dir}/results.json and accuracy_vs_k.png")
    return result


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    data_args, config = parse_arguments("evaluate", (EvaluateDataArguments, AdaptationEvaluationConfig), argv)
    run_evaluation(data_args, config)
