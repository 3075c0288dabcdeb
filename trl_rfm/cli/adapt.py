"""
`trl-rfm adapt`: personalise a trained Reward Feature Model to new users from a file of their comparisons.

    trl-rfm adapt --model_name_or_path my-rfm --comparisons_file alice.jsonl --user_id alice --output_dir my-rfm-alice

The comparisons (JSON/JSONL/CSV/Parquet, any TRL preference format: `prompt`/`chosen`/`rejected` or implicit prompt)
go through the frozen model once; each user's weights are then a regularised logistic regression centred on the
population weights. The model is written with the users added (or replaced), or with `--weights_only` just their
weights, as a `user_weights.safetensors` file.
"""

import os
from dataclasses import dataclass, field

from rich.console import Console

from .common import CLIError, load_comparisons, parse_arguments


def parse_l2(value: str):
    """`--l2`: `model` -> None, `evidence`, or a positive number; anything else names the accepted values."""
    if value in ("model", "evidence"):
        return None if value == "model" else value
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is None or not number > 0 or number == float("inf"):
        raise CLIError(f"--l2 {value!r} is not accepted: use `model`, `evidence` or a positive number (e.g. 1.0).")
    return number


@dataclass
class AdaptArguments:
    model_name_or_path: str = field(metadata={"help": "The trained Reward Feature Model (path or Hub id)."})
    comparisons_file: str = field(metadata={"help": "The users' comparisons: .json, .jsonl, .csv or .parquet."})
    output_dir: str = field(metadata={"help": "Where to write the model with the users (or their weights alone)."})
    user_id: str | None = field(
        default=None,
        metadata={"help": "Id of the user, when the file has no user column (all its comparisons are theirs)."},
    )
    user_column: str = field(default="user_id", metadata={"help": "Column with the user id of each comparison."})
    l2: str = field(
        default="model",
        metadata={
            "help": "Prior precision: `model` (the spread of the model's training users' weights), `evidence` "
            "(chosen by marginal likelihood across the users of the file) or a number."
        },
    )
    weights_only: bool = field(
        default=False,
        metadata={"help": "Write only the new users' weights (user_weights.safetensors), not the whole model."},
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={"help": "The model's tokenizer (path or Hub id), when the model folder has none."},
    )
    batch_size: int = field(default=64, metadata={"help": "Comparisons per backbone batch."})
    population_only: bool = field(
        default=False,
        metadata={
            "help": "Load the model without its saved users (`user_weights=False`): for a model whose users' weights "
            "were withheld from its upload. The output then holds the adapted users only."
        },
    )
    max_length: int | None = field(default=None, metadata={"help": "Truncation length of the sequences."})


def run_adapt(args: AdaptArguments):
    from transformers import AutoTokenizer

    from ..adaptation.adapt_users import adapt_users
    from ..io.save_load import save_reward_feature_model
    from ..io.user_weights_file import USER_WEIGHTS_NAME, feature_fingerprint, save_user_weights
    from ..models.modeling_rfm import RewardFeatureModel
    from ..models.user_table import normalize_user_id

    console = Console()
    if args.weights_only and os.path.abspath(args.output_dir) == os.path.abspath(args.model_name_or_path):
        raise ValueError(
            "With --weights_only, --output_dir must differ from the model's folder (it would replace "
            "the model's user table by the new users alone)."
        )
    l2 = parse_l2(args.l2)
    comparisons = load_comparisons(args.comparisons_file)
    if args.user_id is not None:
        user_id = normalize_user_id(args.user_id)  # rejects an empty id with a clear message
        if args.user_column in comparisons.column_names:
            raise ValueError(f"Pass either --user_id or a file with a {args.user_column!r} column, not both.")
        comparisons = comparisons.add_column(args.user_column, [user_id] * len(comparisons))
    elif args.user_column not in comparisons.column_names:
        raise ValueError(
            f"{args.comparisons_file} has no {args.user_column!r} column; pass --user_id to give all its comparisons "
            "to one user."
        )

    tokenizer_path = args.tokenizer_name_or_path or args.model_name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    except (OSError, ValueError) as error:
        raise CLIError(
            f"No tokenizer could be loaded from {tokenizer_path} ({str(error).splitlines()[0]}). The features must be "
            "computed with the tokenizer the model was trained with: save it into the model folder, or pass "
            "--tokenizer_name_or_path."
        ) from error
    model = RewardFeatureModel.from_pretrained(
        args.model_name_or_path, user_weights=False if args.population_only else None
    )
    user_ids, weights = adapt_users(
        model, tokenizer, comparisons, args.user_column, l2=l2, batch_size=args.batch_size, max_length=args.max_length
    )
    os.makedirs(args.output_dir, exist_ok=True)
    if args.weights_only:
        path = os.path.join(args.output_dir, USER_WEIGHTS_NAME)
        save_user_weights(path, user_ids, weights, feature_fingerprint(model.feature_head.weight))
    else:
        # Model, users and tokenizer in one atomic commit: an interrupted run leaves the previous folder intact.
        save_reward_feature_model(model, args.output_dir, processing_class=tokenizer)
        path = args.output_dir
    counts = {u: 0 for u in user_ids}
    for u in comparisons[args.user_column]:
        counts[normalize_user_id(u)] += 1
    summary = ", ".join(f"{u} ({n} comparisons)" for u, n in list(counts.items())[:10])
    console.print(f"Adapted {len(user_ids)} user(s): {summary}{' ...' if len(user_ids) > 10 else ''} -> {path}")
    return model, user_ids


def main(argv: list[str] | None = None) -> None:
    (args,) = parse_arguments("adapt", AdaptArguments, argv)
    run_adapt(args)
