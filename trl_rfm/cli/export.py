"""`trl-rfm export`: one user of a saved Reward Feature Model as a standard reward model (see
[`trl_rfm.export_user_reward_model`])."""

from dataclasses import dataclass, field

from ..rewards.export import export_user_reward_model
from .common import parse_arguments


@dataclass
class ExportArguments:
    model_name_or_path: str = field(
        metadata={"help": "A saved Reward Feature Model (local path or Hub id); `--model_path` is a deprecated alias."}
    )
    output_dir: str = field(metadata={"help": "Where to write the user's reward model."})
    user_id: str | None = field(default=None, metadata={"help": "The user to export; default: the population."})
    score_head: str = field(
        default="auto",
        metadata={
            "help": "`auto`: `linear` when the model's features are not normalised, else `normalized`; `linear` (stock "
            "class, needs feature_normalization='none') or `normalized` (stock trunk + score head as remote code).",
            "choices": ["auto", "linear", "normalized"],
        },
    )


def main(argv: list[str] | None = None) -> None:
    """`trl-rfm export`: one user of a saved Reward Feature Model as a standard reward model."""
    from transformers import AutoModel, AutoTokenizer

    (args,) = parse_arguments("export", ExportArguments, argv)
    # The population's reward needs no user: a model whose users were withheld from its upload exports it too.
    model = AutoModel.from_pretrained(args.model_name_or_path, user_weights=None if args.user_id else False)
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    path = export_user_reward_model(model, args.user_id, args.output_dir, tokenizer, score_head=args.score_head)
    print(f"Exported the reward of {args.user_id or 'the population'} to {path}")
