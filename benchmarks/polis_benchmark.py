"""
Polis benchmark: personalised reward models on real per-person opinions, evaluated on participants never seen in
training, as a function of the number `k` of their comparisons used to adapt.

Data: six English Polis conversations, read from `--data_dir` (default `$TRL_RFM_POLIS_DIR`, else
`../shared/data/polis` beside the repository; `trl-rfm data fetch polis` fetches them, see docs/datasets.md). Pairs
are *derived from votes*: within one participant and one conversation, a statement they agreed with is preferred to
one they disagreed with (prompt = the conversation's topic). Attribution (CC BY 4.0): Data was gathered using the
Polis software (compdemocracy.org/polis) and is sub-licensed under CC BY 4.0 with Attribution to The Computational
Democracy Project.

Protocol, per seed (no leakage: every split is made on votes, before pairs are formed):
1. participants are split 80/20 into training and held-out participants;
2. each training participant's votes are split 80/20 into `train` (pairs for training) and `val` (pairs for choosing
   the adaptation prior, and for seen-user accuracy); each held-out participant's votes are split 50/50 into
   `adaptation` (the `k` pairs come from here) and `test`;
3. a small word-level transformer is trained from scratch on the `train` pairs, twice on the same initialisation:
   as an RFM with `RFMRewardTrainer` (d features, one weight row per training participant) and as a non-adaptive
   reward model with stock `trl.RewardTrainer`;
4. held-out participants: the RFM fits their weights on frozen features from `k` adaptation pairs (MAP logistic
   regression, prior centred on the population weights with its precision chosen by the evidence of the training
   participants' `val` pairs); the linear adaptive baseline does the same on the frozen last hidden state of the
   non-adaptive model (prior centred on its score head, so that k = 0 is the non-adaptive model itself). Accuracy is
   over the `test` pairs of every held-out participant (pooled); `k` larger than a participant's adaptation pairs
   uses all of them.

    python benchmarks/polis_benchmark.py                          # 3 seeds, writes runs/polis/results.json + figure
    python benchmarks/polis_benchmark.py --seeds 0 --methods rfm --user_weights_learning_rate 3e-2   # one variant
    python benchmarks/polis_benchmark.py --seeds 0 --statement_id_tokens True   # one learnable token per statement

Speed (the whole benchmark is CPU-bound on a ~0.2M-parameter model): gradient checkpointing, which TRL's configs turn
on by default, is turned off (it recomputes every forward for no memory benefit at this size: ~1/3 of a step); each
split's pairs are tokenised once (one call per distinct statement text, checked equal to TRL's tokenisation) and
shared by both trainers and every feature pass, instead of TRL tokenising every pair of every part once per model.

Everything reusable lives in the library: the data preparation (`trl_rfm.data.polis_evaluation_parts`,
`add_statement_ids`, `sample_users`), matched from-scratch training with length-grouped batches
(`trl_rfm.testing.from_scratch`, `trl_rfm.trainer.sampling`), tokenisation and features (`trl_rfm.adaptation.features`)
and the accuracy-vs-k protocol (`trl_rfm.evaluation`); this file keeps the command line, the loops and the report.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import time
import warnings
from dataclasses import asdict, dataclass, field


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import HfArgumentParser  # noqa: E402

from trl_rfm import (  # noqa: E402
    compute_feature_differences,
    compute_score_head_input_differences,
    effective_dimension,
    fit_user_weights,
    group_by_user,
    prior_from_model,
    select_l2,
    tokenize_preferences,
)
from trl_rfm.adaptation.features import compute_response_features  # noqa: E402
from trl_rfm.adaptation.prior import isotropic_equivalent  # noqa: E402
from trl_rfm.data import (  # noqa: E402
    POLIS_ATTRIBUTION,
    add_statement_ids,
    default_polis_dir,
    load_polis_votes,
    polis_evaluation_parts,
    sample_users,
)
from trl_rfm.evaluation import accuracy_vs_k, accuracy_vs_k_with_evidence_prior, pairwise_accuracy  # noqa: E402
from trl_rfm.testing import build_tokenizer  # noqa: E402
from trl_rfm.testing.from_scratch import ModelArguments, train_reward_model, train_rfm  # noqa: E402


DEFAULT_DATA_DIR = default_polis_dir()  # $TRL_RFM_POLIS_DIR, else ../shared/data/polis beside the checkout


@dataclass
class PolisArguments(ModelArguments):
    data_dir: str = field(
        default=DEFAULT_DATA_DIR,
        metadata={
            "help": "Folder of the Polis conversations (`trl-rfm data fetch polis` fetches them). Default: "
            "$TRL_RFM_POLIS_DIR, else ../shared/data/polis beside the repository."
        },
    )
    conversations: str | None = field(default=None, metadata={"help": "Comma-separated conversations (default all)."})
    seeds: str = field(default="0,1,2", metadata={"help": "Comma-separated seeds (one split + training each)."})
    heldout_fraction: float = field(default=0.2, metadata={"help": "Fraction of participants held out."})
    max_train_pairs_per_user: int = field(default=48, metadata={"help": "Cap on training pairs per participant."})
    max_eval_pairs_per_user: int = field(
        default=64, metadata={"help": "Cap on adaptation/test pairs per participant."}
    )
    max_val_pairs_per_user: int = field(default=16, metadata={"help": "Cap on `val` pairs per training participant."})
    max_users: int | None = field(default=None, metadata={"help": "Keep only this many participants (smoke tests)."})
    num_workers: int = field(
        default=2,
        metadata={
            "help": "Processes (each with `num_threads` threads) that train the splits' models in parallel: each "
            "split's RFM and its non-adaptive RM are independent jobs. 2 uses both cores of a 2-core machine "
            "far better than 2 threads in one process (this model is too small for intra-op threading)."
        },
    )
    # Redefined with the Polis default: on these pairs, ~37% less padding and ~1.6x faster training steps.
    length_grouping: int = field(default=8, metadata={"help": "See `ModelArguments.length_grouping`; 0: off."})
    shots: str = field(default="0,5,20,50", metadata={"help": "Comma-separated k."})
    num_draws: int = field(default=5, metadata={"help": "Random draws of the k adaptation pairs."})
    methods: str = field(default="rfm,rm,linear", metadata={"help": "Subset of rfm, rm (non-adaptive), linear."})
    output_dir: str = field(default="runs/polis", metadata={"help": "Where results.json is written."})
    figure: str | None = field(
        default="docs/figures/polis_accuracy_vs_k.png", metadata={"help": "Plot path (empty: no plot)."}
    )
    statement_id_tokens: bool = field(
        default=False,
        metadata={
            "help": "Prepend one unique word per statement (`s<conversation index>_<statement id>`) to its text, "
            "so that the backbone can learn one embedding per statement (a control for the text encoder)."
        },
    )
    statement_text: bool = field(
        default=True,
        metadata={
            "help": "With `statement_id_tokens`, False replaces each statement by its id word alone: the RFM becomes "
            "a factorisation of the participant x statement votes (a free feature vector per statement), the "
            "control that separates the text encoder from the training of the features and rows."
        },
    )
    precision_grid: str = field(
        default="",
        metadata={
            "help": "Diagnostic: comma-separated prior precisions at which the held-out adaptation curves are also "
            "evaluated, and the training participants' rows refitted on their frozen features (read on held-out "
            "answers, so a diagnostic of the prior and of the jointly trained rows, not a result to report as tuned)."
        },
    )
    merge: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated output dirs of earlier runs (e.g. one seed each, run in parallel): "
            "summarise and plot their results instead of running."
        },
    )


# ---------------------------------------------------------------------------------------------------- evaluation
def adaptation_curve(
    adapt_x, adapt_mask, test_x, test_mask, prior_mean, l2, shots, num_draws, seed
) -> dict[int, float]:
    """Pooled test accuracy of held-out users per k, mean over draws (`trl_rfm.evaluation.accuracy_vs_k`)."""
    curve = accuracy_vs_k(
        adapt_x, adapt_mask, test_x, test_mask, prior_mean, l2, shots, num_draws, seed, average="pooled"
    )
    return {k: float(np.mean(v)) for k, v in curve.items()}


def grouped(differences: torch.Tensor, user_ids: list[str], users: list[str]):
    """Per-user blocks `(x, mask)` in the fixed user order `users`."""
    return group_by_user(differences, user_ids, users)[:2]


def evaluate_features(diffs: dict[str, torch.Tensor], parts: dict[str, Dataset], prior_mean, shots, num_draws, seed):
    """Adaptation curve of one frozen feature map; the prior precision is chosen by the evidence of the training
    users' `val` pairs (never by held-out answers)."""
    val_x, val_mask, _ = group_by_user(diffs["val"], parts["val"]["user_id"])
    users = sorted(set(parts["heldout_test"]["user_id"]))
    adapt = grouped(diffs["heldout_adaptation"], parts["heldout_adaptation"]["user_id"], users)
    test = grouped(diffs["heldout_test"], parts["heldout_test"]["user_id"], users)
    curve, l2 = accuracy_vs_k_with_evidence_prior(
        val_x, val_mask, *adapt, *test, prior_mean, shots=shots, num_draws=num_draws, seed=seed, average="pooled"
    )
    return {k: float(np.mean(v)) for k, v in curve.items()}, l2


# ---------------------------------------------------------------------------------------------------- Polis
def polis_parts(args: PolisArguments, seed: int) -> tuple[dict[str, Dataset], list[str]]:
    conversations = args.conversations.split(",") if args.conversations else None
    votes = load_polis_votes(args.data_dir, conversations)
    if args.statement_id_tokens:  # the word-level tokenizer gives each statement's word its own embedding
        votes = add_statement_ids(votes, keep_text=args.statement_text)
    if args.max_users is not None:
        votes = sample_users(votes, args.max_users, seed)
    texts = sorted(set(votes["statement"]) | set(votes["topic"]))
    parts = polis_evaluation_parts(
        votes,
        seed=seed,
        heldout_fraction=args.heldout_fraction,
        max_train_pairs_per_user=args.max_train_pairs_per_user,
        max_val_pairs_per_user=args.max_val_pairs_per_user,
        max_eval_pairs_per_user=args.max_eval_pairs_per_user,
    )
    return parts, texts


def validated_curves(diffs, parts, prior_mean, adapt, test, shots, num_draws, seed) -> dict:
    """Held-out curves with the prior precision chosen on the training users' `val` votes, each training user treated
    as a new one: (1) 5-fold cross-validation over their `val` *pairs* (`select_l2(method="cross_validation")`),
    whose folds share votes; (2) fitted on the pairs of half their `val` votes and scored on the pairs of the other
    half (`select_l2(method="held_out")`), which share none."""
    val_x, val_mask, _ = group_by_user(diffs["val"], parts["val"]["user_id"])
    cv_l2 = select_l2(val_x, val_mask, prior_mean, method="cross_validation", seed=seed).l2
    users = sorted(set(parts["val_fit"]["user_id"]) & set(parts["val_check"]["user_id"]))
    fit = grouped(diffs["val_fit"], parts["val_fit"]["user_id"], users)
    check = grouped(diffs["val_check"], parts["val_check"]["user_id"], users)
    vote_l2 = select_l2(*fit, prior_mean, method="held_out", held_out_differences=check[0], held_out_mask=check[1]).l2
    return {
        "curve_cv": adaptation_curve(*adapt, *test, prior_mean, cv_l2, shots, num_draws, seed),
        "cv_l2": cv_l2,
        "curve_vote_held_out": adaptation_curve(*adapt, *test, prior_mean, vote_l2, shots, num_draws, seed),
        "vote_held_out_l2": vote_l2,
    }


def _precisions(args: PolisArguments) -> list[float]:
    return [float(v) for v in args.precision_grid.split(",") if v]


def precision_diagnostics(model, tokenizer, parts, diffs, adapt, test, population, model_l2, args, seed) -> dict:
    """Two diagnostics of the gap to the reference: (1) the held-out curve at fixed prior precisions, to see whether
    `prior_from_model`'s precision holds new participants too close to the population; (2) the training
    participants' rows refitted by MAP logistic regression on their own training pairs with the features frozen, at
    each precision, scored on their `val` votes beside the rows SGD trained jointly with the features."""
    shots = [int(k) for k in args.shots.split(",")]
    curves = {
        l2: adaptation_curve(*adapt, *test, population, l2, shots, args.num_draws, seed) for l2 in _precisions(args)
    }
    train_diffs = compute_feature_differences(model, tokenizer, parts["train"], 256, show_progress=False)
    val_x, val_mask, val_users = group_by_user(diffs["val"], parts["val"]["user_id"])
    train_x, train_mask = grouped(train_diffs, parts["train"]["user_id"], val_users)
    refit = {}
    for key, l2 in [*((l2, l2) for l2 in _precisions(args)), ("model", model_l2)]:
        weights = fit_user_weights(train_x, train_mask, population, l2)
        margins = torch.einsum("upd,ud->up", val_x, weights)
        refit[key] = pairwise_accuracy(margins, val_mask, "pooled")
    return {"curve_by_l2": curves, "seen_users_refit_accuracy_by_l2": refit}


def run_seed(args: PolisArguments, seed: int) -> dict:
    start, cpu_start = time.time(), time.process_time()
    timing = {}
    parts, texts = polis_parts(args, seed)
    tokenizer = build_tokenizer(texts + [" :"])
    cache = {}
    parts = {name: tokenize_preferences(part, tokenizer, cache=cache) for name, part in parts.items()}
    timing["data_seconds"] = time.time() - start
    shots = [int(k) for k in args.shots.split(",")]
    methods = args.methods.split(",")
    result = {
        "seed": seed,
        "pairs": {name: len(part) for name, part in parts.items()},
        "heldout_users": len(set(parts["heldout_test"]["user_id"])),
        "training_users": len(set(parts["train"]["user_id"])),
    }
    print(f"[seed {seed}] {result['pairs']}", flush=True)
    if "rfm" in methods:
        t = time.time()
        model, config = train_rfm(parts["train"], tokenizer, args, seed)
        result["rfm_train_seconds"] = time.time() - t
        t = time.time()
        names = ["val", "val_fit", "val_check", "heldout_adaptation", "heldout_test"]
        diffs = {n: compute_feature_differences(model, tokenizer, parts[n], 256, show_progress=False) for n in names}
        population, model_l2 = prior_from_model(model)
        curve, l2 = evaluate_features(diffs, parts, population, shots, args.num_draws, seed)
        statements = sorted(set(zip(parts["heldout_test"]["prompt"], parts["heldout_test"]["chosen"])))
        phi = compute_response_features(model, tokenizer, [p for p, _ in statements], [s for _, s in statements])
        val_x, val_mask, val_users = group_by_user(diffs["val"], parts["val"]["user_id"])
        # Training participants with no training pair (all their train votes one way) score with the population.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            personal = model.get_user_weights(val_users, strict=False).float().cpu()
        seen_margin = torch.einsum("upd,ud->up", val_x, personal)
        pop_margin = torch.einsum("upd,d->up", val_x, population)
        users = sorted(set(parts["heldout_test"]["user_id"]))
        adapt = grouped(diffs["heldout_adaptation"], parts["heldout_adaptation"]["user_id"], users)
        test = grouped(diffs["heldout_test"], parts["heldout_test"]["user_id"], users)
        result["rfm"] = {
            # The library's default prior for new users (`prior_from_model`: centred on the population weights, with
            # the spread of the training users' rows), as `trl_rfm.adapt_users` uses it.
            "curve": adaptation_curve(*adapt, *test, population, model_l2, shots, args.num_draws, seed),
            "l2": isotropic_equivalent(model_l2),  # the fitted prior's isotropic equivalent, for the record
            # The prior precision chosen instead by the evidence of the training users' `val` pairs (`select_l2`).
            "curve_evidence": curve,
            "evidence_l2": l2,
            # ... by 5-fold cross-validation over those pairs, and on pairs of disjoint halves of their `val` votes.
            **validated_curves(diffs, parts, population, adapt, test, shots, args.num_draws, seed),
            "effective_dimension": effective_dimension(phi),
            "seen_users_personal_accuracy": pairwise_accuracy(seen_margin, val_mask, "pooled"),
            "seen_users_population_accuracy": pairwise_accuracy(pop_margin, val_mask, "pooled"),
            "config": {
                k: getattr(config, k)
                for k in (
                    "num_features",
                    "feature_normalization",
                    "user_weights_l2",
                    "user_weights_learning_rate",
                    "feature_head_learning_rate",
                    "feature_covariance_l2",
                    "learning_rate",
                    "num_train_epochs",
                )
            },
        }
        if args.precision_grid:
            result["rfm"].update(
                precision_diagnostics(model, tokenizer, parts, diffs, adapt, test, population, model_l2, args, seed)
            )
        timing["rfm_eval_seconds"] = time.time() - t
        print(f"[seed {seed}] rfm {result['rfm']}", flush=True)
    if "rm" in methods or "linear" in methods:
        t = time.time()
        rm = train_reward_model(parts["train"], tokenizer, args, seed)
        result["rm_train_seconds"] = time.time() - t
        t = time.time()
        names = ["val", "val_fit", "val_check", "heldout_adaptation", "heldout_test"]
        diffs = {
            n: compute_score_head_input_differences(rm, tokenizer, parts[n], 256, show_progress=False) for n in names
        }
        head = rm.score.weight[0].detach().float()
        test_x, test_mask = grouped(
            diffs["heldout_test"], parts["heldout_test"]["user_id"], sorted(set(parts["heldout_test"]["user_id"]))
        )
        margins = torch.einsum("upd,d->up", test_x, head)
        result["rm"] = {"accuracy": pairwise_accuracy(margins, test_mask, "pooled")}
        if "linear" in methods:
            curve, l2 = evaluate_features(diffs, parts, head, shots, args.num_draws, seed)
            users = sorted(set(parts["heldout_test"]["user_id"]))
            adapt = grouped(diffs["heldout_adaptation"], parts["heldout_adaptation"]["user_id"], users)
            result["linear"] = {
                "curve": curve,
                "l2": l2,
                **validated_curves(diffs, parts, head, adapt, (test_x, test_mask), shots, args.num_draws, seed),
            }
            if args.precision_grid:
                result["linear"]["curve_by_l2"] = {
                    l2: adaptation_curve(*adapt, test_x, test_mask, head, l2, shots, args.num_draws, seed)
                    for l2 in _precisions(args)
                }
        timing["rm_eval_seconds"] = time.time() - t
        print(f"[seed {seed}] rm {result['rm']} linear {result.get('linear')}", flush=True)
    result["seconds"] = time.time() - start
    # CPU seconds of this process: what the run costs on an idle core, whatever else the machine was running.
    timing[f"{'_'.join(methods)}_cpu_seconds"] = time.process_time() - cpu_start
    result["timing"] = timing
    print(
        f"[seed {seed}] seconds {result['seconds']:.0f} rfm_train {result.get('rfm_train_seconds', 0):.0f} "
        f"rm_train {result.get('rm_train_seconds', 0):.0f} {timing}",
        flush=True,
    )
    return result


def summarize(results: list[dict], shots: list[int]) -> dict:
    """Mean and standard deviation over seeds of accuracy and of the gain over the non-adaptive model, per k."""
    summary = {}
    for method in ("rfm", "linear"):
        if method not in results[0]:
            continue
        rows = {}
        for k in shots:
            acc = np.array([r[method]["curve"][k] for r in results])
            row = {"accuracy": (acc.mean(), acc.std())}
            if "rm" in results[0]:
                gain = acc - np.array([r["rm"]["accuracy"] for r in results])
                row["gain_over_rm"] = (gain.mean(), gain.std())
            base = np.array([r[method]["curve"][shots[0]] for r in results])
            row["gain_over_k0"] = ((acc - base).mean(), (acc - base).std())
            rows[k] = row
        summary[method] = rows
    if "rm" in results[0]:
        acc = np.array([r["rm"]["accuracy"] for r in results])
        summary["rm"] = {"accuracy": (acc.mean(), acc.std())}
    if "rfm" in results[0]:
        ed = np.array([r["rfm"]["effective_dimension"] for r in results])
        summary["rfm_effective_dimension"] = (ed.mean(), ed.std())
    return summary


def plot(results: list[dict], shots: list[int], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    curves = [
        ("rfm", "curve", "RFM, prior_from_model"),
        ("rfm", "curve_vote_held_out", "RFM, prior chosen on held-out votes"),
        ("linear", "curve", "linear head on frozen RM features, evidence prior"),
        ("linear", "curve_vote_held_out", "linear head on frozen RM features, held-out-vote prior"),
    ]
    for method, key, label in curves:
        if key in results[0].get(method, {}):
            acc = 100 * np.array([[r[method][key][k] for k in shots] for r in results])
            ax.errorbar(shots, acc.mean(0), yerr=acc.std(0), marker="o", capsize=3, label=label)
    if "rm" in results[0]:
        acc = 100 * np.array([r["rm"]["accuracy"] for r in results])
        ax.axhline(acc.mean(), color="gray", ls="--", label="non-adaptive RM (trl.RewardTrainer)")
        ax.axhspan(acc.mean() - acc.std(), acc.mean() + acc.std(), color="gray", alpha=0.15)
    ax.set_xlabel("k (comparisons of the held-out participant)")
    ax.set_ylabel("held-out participants: test accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _run_job(args: PolisArguments, seed: int, methods: str) -> dict:
    torch.set_num_threads(args.num_threads)
    datasets.disable_progress_bars()
    return run_seed(dataclasses.replace(args, methods=methods), seed)


def run_seeds(args: PolisArguments) -> list[dict]:
    """`run_seed` for every seed. With `num_workers > 1`, each seed's RFM (`rfm`) and non-adaptive model (`rm`,
    `linear`) are separate jobs run by a pool of processes, longest (RFM) first, and merged back per seed."""
    seeds = [int(seed) for seed in args.seeds.split(",")]
    methods = args.methods.split(",")
    groups = [g for g in (["rfm"], [m for m in ("rm", "linear") if m in methods]) if g and set(g) <= set(methods)]
    if args.num_workers <= 1 or len(seeds) * len(groups) <= 1:
        return [run_seed(args, seed) for seed in seeds]
    jobs = [(args, seed, ",".join(group)) for group in groups for seed in seeds]
    with multiprocessing.get_context("spawn").Pool(min(args.num_workers, len(jobs))) as pool:
        outputs = pool.starmap(_run_job, jobs, chunksize=1)
    results = []
    for seed in seeds:
        merged = {"timing": {}, "seconds": 0.0}
        for (_, job_seed, _), output in zip(jobs, outputs):
            if job_seed == seed:
                merged["timing"].update(output.pop("timing"))
                merged["seconds"] += output.pop("seconds")  # process-seconds of the seed's jobs
                merged.update(output)
        results.append(merged)
    return results


def main(args: PolisArguments) -> dict:
    start = time.time()
    torch.set_num_threads(args.num_threads)
    datasets.disable_progress_bars()
    shots = [int(k) for k in args.shots.split(",")]
    if args.merge:
        results = []
        for folder in args.merge.split(","):
            with open(os.path.join(folder, "results.json")) as f:
                for result in json.load(f)["results"]:
                    for method in ("rfm", "linear"):  # JSON keys are strings
                        for key in ("curve", "curve_evidence", "curve_cv", "curve_vote_held_out"):
                            if key in result.get(method, {}):
                                result[method][key] = {int(k): v for k, v in result[method][key].items()}
                        for l2, curve in result.get(method, {}).get("curve_by_l2", {}).items():
                            result[method]["curve_by_l2"][l2] = {int(k): v for k, v in curve.items()}
                    results.append(result)
    else:
        results = run_seeds(args)
    summary = summarize(results, shots)
    os.makedirs(args.output_dir, exist_ok=True)
    report = {
        "arguments": asdict(args),
        "results": results,
        "summary": summary,
        "attribution": POLIS_ATTRIBUTION,
        "note": "Pairs are derived from Polis votes (agree > disagree within a participant).",
    }
    if not args.merge:
        report["wall_seconds"] = time.time() - start
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(report, f, indent=1, default=float)
    print(json.dumps(summary, indent=1, default=float))
    if args.figure:
        plot(results, shots, args.figure, f"Polis, 6 conversations, {len(results)} splits (pairs derived from votes)")
    return report


if __name__ == "__main__":
    (polis_args,) = HfArgumentParser(PolisArguments).parse_args_into_dataclasses()
    main(polis_args)
