"""
Synthetic disagreement sweep, after the paper's: number of training raters x amount of disagreement between them.

For every cell, raters are drawn by `trl_rfm.testing.make_synthetic_preferences` (hidden attributes shown as marker words;
`disagreement = 0`: identical raters, `1`: mixtures of opposed opinion groups), a tiny transformer is trained from
scratch as an RFM (d = 8 and d = 32, `RFMRewardTrainer`) and as a non-adaptive reward model (stock
`trl.RewardTrainer`, same initialisation and pairs), and raters never seen in training are evaluated after adapting
on `k` of their comparisons (RFM: MAP weights on frozen features; linear adaptive baseline: the same on the frozen
last hidden state of the non-adaptive model, prior centred on its score head). The prior precision is chosen by the
evidence of the training raters' own held-out pairs. Labels are noise-free (the oracle scores 100%).

    python benchmarks/synthetic_sweep.py                      # writes runs/synthetic/results.json + sweep_accuracy.png
    python benchmarks/synthetic_sweep.py --raters 20 --disagreements 1.0 --seeds 0    # one cell

Trains with `trl_rfm.testing.from_scratch` and evaluates with `trl_rfm.evaluation`, like the Polis benchmark.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import HfArgumentParser  # noqa: E402

from trl_rfm import (  # noqa: E402
    compute_feature_differences,
    compute_score_head_input_differences,
    effective_dimension,
    group_by_user,
    prior_from_model,
)
from trl_rfm.adaptation.features import compute_response_features  # noqa: E402
from trl_rfm.evaluation import accuracy_vs_k, accuracy_vs_k_with_evidence_prior  # noqa: E402
from trl_rfm.testing import build_tokenizer, make_synthetic_preferences  # noqa: E402
from trl_rfm.testing.from_scratch import ModelArguments, train_reward_model, train_rfm  # noqa: E402


def curves(diffs: dict, parts: dict, prior_mean, model_l2, args, shots: list[int], seed: int) -> dict:
    """Held-out accuracy per k (pooled, mean over draws): with the prior precision `model_l2` when given, and with
    the one chosen by the evidence of the training raters' `val` pairs."""
    users = sorted(set(parts["heldout_test"]["user_id"]))
    adapt = group_by_user(diffs["heldout_adaptation"], parts["heldout_adaptation"]["user_id"], users)[:2]
    test = group_by_user(diffs["heldout_test"], parts["heldout_test"]["user_id"], users)[:2]
    val = group_by_user(diffs["val"], parts["val"]["user_id"])[:2]
    options = dict(shots=shots, num_draws=args.num_draws, seed=seed, average="pooled")
    evidence, evidence_l2 = accuracy_vs_k_with_evidence_prior(*val, *adapt, *test, prior_mean, **options)
    out = {"curve_evidence": {k: float(np.mean(v)) for k, v in evidence.items()}, "evidence_l2": evidence_l2}
    if model_l2 is not None:
        curve = accuracy_vs_k(*adapt, *test, prior_mean, model_l2, **options)
        out["curve"] = {k: float(np.mean(v)) for k, v in curve.items()}
    return out


@dataclass
class SweepArguments(ModelArguments):
    raters: str = field(default="20,60,256", metadata={"help": "Comma-separated numbers of training raters."})
    disagreements: str = field(default="0,0.5,1.0", metadata={"help": "Comma-separated disagreement levels."})
    feature_dims: str = field(default="8,32", metadata={"help": "Comma-separated RFM feature dimensions d."})
    seeds: str = field(default="0", metadata={"help": "Comma-separated seeds."})
    train_pairs_per_rater: int = field(default=32, metadata={"help": "Training pairs per training rater."})
    min_training_steps: int = field(default=240, metadata={"help": "Epochs are raised until this many steps."})
    num_heldout_raters: int = field(default=50, metadata={"help": "Raters never seen in training."})
    adaptation_pairs: int = field(default=30, metadata={"help": "Adaptation pool per held-out rater (max k)."})
    test_pairs: int = field(default=30, metadata={"help": "Test pairs per held-out rater."})
    shots: str = field(default="0,10,30", metadata={"help": "Comma-separated k."})
    num_draws: int = field(default=3, metadata={"help": "Random draws of the k adaptation pairs."})
    output_dir: str = field(default="runs/synthetic", metadata={"help": "Where results.json is written."})
    figure: str | None = field(
        default=None,
        metadata={"help": "Plot path; default `<output_dir>/sweep_accuracy.png` (docs/results.md's figure: pass it)."},
    )


def run_cell(args: SweepArguments, num_raters: int, disagreement: float, seed: int) -> dict:
    data = make_synthetic_preferences(
        num_users=num_raters,
        num_heldout_users=args.num_heldout_raters,
        train_pairs_per_user=args.train_pairs_per_rater,
        test_pairs_per_user=8,
        heldout_pairs_per_user=args.adaptation_pairs + args.test_pairs,
        disagreement=disagreement,
        seed=seed,
    )
    # Each held-out rater's pairs are independent draws: the first ones form the adaptation pool, the rest the test.
    position = {}
    is_adaptation = []
    for user in data.heldout["user_id"]:
        position[user] = position.get(user, 0) + 1
        is_adaptation.append(position[user] <= args.adaptation_pairs)
    parts = {
        "train": data.train,
        "val": data.test,
        "heldout_adaptation": data.heldout.select([i for i, a in enumerate(is_adaptation) if a]),
        "heldout_test": data.heldout.select([i for i, a in enumerate(is_adaptation) if not a]),
    }
    tokenizer = build_tokenizer(data.vocabulary_texts())
    shots = [int(k) for k in args.shots.split(",")]
    steps_per_epoch = int(np.ceil(len(data.train) / args.batch_size))
    cell_args = ModelArguments(**{name: getattr(args, name) for name in ModelArguments.__dataclass_fields__})
    cell_args.num_train_epochs = max(args.num_train_epochs, np.ceil(args.min_training_steps / steps_per_epoch))
    names = ["val", "heldout_adaptation", "heldout_test"]
    result = {"raters": num_raters, "disagreement": disagreement, "seed": seed, "epochs": cell_args.num_train_epochs}
    for d in [int(x) for x in args.feature_dims.split(",")]:
        cell_args.num_features = d
        model, _ = train_rfm(data.train, tokenizer, cell_args, seed)
        diffs = {n: compute_feature_differences(model, tokenizer, parts[n], 256, show_progress=False) for n in names}
        population, model_l2 = prior_from_model(model)  # the fitted prior: a [d, d] precision
        evaluated = curves(diffs, parts, population, model_l2, args, shots, seed)
        test = parts["heldout_test"]
        phi = compute_response_features(
            model, tokenizer, list(test["prompt"]) * 2, list(test["chosen"]) + list(test["rejected"])
        )
        # Main curve: the library's default prior for new users (`prior_from_model`), as in the Polis benchmark.
        result[f"rfm_d{d}"] = {
            "curve": evaluated["curve"],
            "l2": prior_from_model(model, isotropic=True)[1],  # its isotropic equivalent, for the record
            "curve_evidence": evaluated["curve_evidence"],
            "evidence_l2": evaluated["evidence_l2"],
            "effective_dimension": effective_dimension(phi),
        }
    rm = train_reward_model(data.train, tokenizer, cell_args, seed)
    diffs = {n: compute_score_head_input_differences(rm, tokenizer, parts[n], 256, show_progress=False) for n in names}
    head = rm.score.weight[0].detach().float()
    evaluated = curves(diffs, parts, head, None, args, shots, seed)
    curve, l2 = evaluated["curve_evidence"], evaluated["evidence_l2"]
    result["rm"] = {"accuracy": curve[0]}  # k = 0 of the linear baseline is the reward model itself
    result["linear"] = {"curve": curve, "l2": l2}
    print(json.dumps(result, default=float), flush=True)
    return result


def plot(results: list[dict], args: SweepArguments, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    raters = [int(r) for r in args.raters.split(",")]
    disagreements = [float(x) for x in args.disagreements.split(",")]
    shots = [int(k) for k in args.shots.split(",") if int(k) > 0]
    dims = [int(x) for x in args.feature_dims.split(",")]
    fig, axes = plt.subplots(len(shots), len(raters), figsize=(3.2 * len(raters), 2.9 * len(shots)), squeeze=False)
    for row, k in enumerate(shots):
        for col, n in enumerate(raters):
            ax = axes[row][col]

            def series(key, kk):
                values = []
                for x in disagreements:
                    cell = [r for r in results if r["raters"] == n and r["disagreement"] == x]
                    values.append(
                        100 * np.mean([c[key]["curve"][kk] if "curve" in c[key] else c[key]["accuracy"] for c in cell])
                    )
                return values

            for d in dims:
                ax.plot(disagreements, series(f"rfm_d{d}", k), marker="o", label=f"RFM d={d}")
            ax.plot(disagreements, series("linear", k), marker="s", label="linear head on RM features")
            ax.plot(disagreements, series("rm", 0), marker="x", ls="--", color="gray", label="non-adaptive RM")
            ax.set_title(f"{n} training raters, k={k}", fontsize=9)
            ax.set_xlabel("disagreement")
            ax.set_ylabel("held-out raters: accuracy (%)")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(args: SweepArguments) -> list[dict]:
    torch.set_num_threads(args.num_threads)
    datasets.disable_progress_bars()
    start = time.time()
    results = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for n in [int(r) for r in args.raters.split(",")]:
            for x in [float(v) for v in args.disagreements.split(",")]:
                results.append(run_cell(args, n, x, seed))
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(
            {"arguments": asdict(args), "results": results, "seconds": time.time() - start}, f, indent=1, default=float
        )
    plot(results, args, args.figure or os.path.join(args.output_dir, "sweep_accuracy.png"))
    return results


if __name__ == "__main__":
    (sweep_args,) = HfArgumentParser(SweepArguments).parse_args_into_dataclasses()
    main(sweep_args)
