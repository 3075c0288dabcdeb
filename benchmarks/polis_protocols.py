"""
Protocol robustness on Polis: the library's **defaults** (no RFM flag is set here) against stock `trl.RewardTrainer`,
under several training protocols, on participants never seen in training.

Data: the six English Polis conversations (`../shared/data/polis`). Pairs are *derived from votes* (within one
participant, a statement they agreed with is preferred to one they disagreed with); every split is made on votes before
pairs are formed, so no test pair shares a vote with a training or adaptation pair. Attribution (CC BY 4.0): Data was
gathered using the Polis software (compdemocracy.org/polis) and is sub-licensed under CC BY 4.0 with Attribution to
The Computational Democracy Project.

Per protocol and split: participants 80/20 (training / held out); training participants' votes 80/20 into `train`
(at most `--max_train_pairs_per_user` pairs each) and `val`; held-out participants' votes 70/30 into an adaptation pool
and a test part. A from-scratch word-level transformer is trained twice from the same initialisation, as an RFM
(`RFMRewardTrainer`, library defaults) and as a non-adaptive RM (`trl.RewardTrainer`). Held-out participants are
adapted the documented way (`prior_from_model`, as `trl_rfm.adapt_users` does) on k of their pool pairs (5 draws).
Reported per protocol, over all held-out participants of all splits: RM accuracy, the RFM's gain over the RM at each k
(paired per rater: mean and standard error), the same with the isotropic prior of equal total spread
(`prior_from_model(isotropic=True)`), the training participants' own rows against the population weights on their
`val` pairs, the effective dimension of the features over all statements (and orthogonally to the population
weights), and **best-of-n agreement**: among n statements of a held-out participant's test votes, how often the one
the reward ranks first is one they agreed with (the RFM adapted on k pool pairs against the RM; what a best-of-n
policy would pick).

    python benchmarks/polis_protocols.py                                   # all protocols, 3 splits, 200 pairs each
    python benchmarks/polis_protocols.py --protocols h64_e1_b32_lr1e-3 --seeds 0 --max_train_pairs_per_user 50
    python benchmarks/polis_protocols.py --merge runs/s0/results.json,runs/s1/results.json   # splits run apart
    python benchmarks/polis_protocols.py --protocols h128_e1_b32_lr1e-3 --train_fraction 0.4 \
        --conversations scoop-hivemind.affordable-housing,scoop-hivemind.taxes,scoop-hivemind.ubi   # held-out protocol

A protocol is `h<hidden>_e<epochs>_b<pairs per batch>_lr<learning rate>`.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import time
import warnings
from dataclasses import asdict, dataclass, field


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import HfArgumentParser  # noqa: E402

from trl_rfm.data import default_polis_dir  # noqa: E402


DEFAULT_DATA_DIR = default_polis_dir()  # $TRL_RFM_POLIS_DIR, else ../shared/data/polis beside the checkout
# How every split of this benchmark treats the votes besides the training cap: `val` pairs per training participant,
# held-out participants' votes 70/30 into adaptation pool / test, and the pool's cap (also used by
# polis_factorization_control.py --split protocols).
HELD_OUT_SPLIT = dict(max_val_pairs_per_user=64, heldout_adaptation_fraction=0.7, max_adaptation_pairs_per_user=100)
PROTOCOL = re.compile(r"^h(\d+)_e([\d.]+)_b(\d+)_lr([\d.e-]+)$")


@dataclass
class ProtocolArguments:
    data_dir: str = field(
        default=DEFAULT_DATA_DIR,
        metadata={
            "help": "Folder of the Polis conversations (`trl-rfm data fetch polis` fetches them; docs/datasets.md)."
        },
    )
    conversations: str | None = field(default=None, metadata={"help": "Comma-separated conversations (default all)."})
    max_users: int | None = field(default=None, metadata={"help": "Keep this many participants (smoke runs)."})
    protocols: str = field(
        default="h64_e1_b32_lr1e-3,h128_e1_b32_lr1e-3,h64_e3_b64_lr1e-3,h64_e1_b64_lr3e-3",
        metadata={"help": "Comma-separated protocols `h<hidden>_e<epochs>_b<batch pairs>_lr<lr>`."},
    )
    seeds: str = field(default="0,1,2", metadata={"help": "Comma-separated participant splits."})
    max_train_pairs_per_user: int = field(default=200, metadata={"help": "Cap on training pairs per participant."})
    shots: str = field(default="0,5,10,20,50", metadata={"help": "Comma-separated k."})
    num_draws: int = field(default=5, metadata={"help": "Random draws of the k adaptation pairs."})
    prior_precisions: str | None = field(
        default=None,
        metadata={
            "help": "Diagnostic: also adapt the held-out participants with these fixed prior precisions "
            "(comma-separated), same draws; their paired gains over `prior_from_model`'s are printed and land in "
            "results.json under `curves_by_prior`."
        },
    )
    train_fraction: float = field(
        default=1.0,
        metadata={"help": "Train on a uniform (seeded) subsample of this fraction of the training pairs."},
    )
    best_of: str = field(default="4,16", metadata={"help": "Comma-separated n of the best-of-n agreement."})
    num_workers: int = field(default=2, metadata={"help": "Parallel jobs (processes of one thread each); 1: inline."})
    output_dir: str = field(default="runs/polis_protocols", metadata={"help": "Where results.json is written."})
    merge: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated results.json files of earlier runs (e.g. one per split): summarise them "
            "together into `output_dir`, training nothing."
        },
    )


def _run_job(args: ProtocolArguments, protocol: str, seed: int, method: str) -> dict:
    """One trained model of one protocol and split: per-rater held-out accuracies (and the RFM's diagnostics)."""
    import datasets

    from trl_rfm import compute_feature_differences, effective_dimension, group_by_user, prior_from_model
    from trl_rfm.adaptation.features import (
        compute_response_features,
        compute_score_head_input_differences,
        tokenize_preferences,
    )
    from trl_rfm.adaptation.solver import fit_user_weights
    from trl_rfm.data import load_polis_votes, polis_evaluation_parts
    from trl_rfm.evaluation import draw_adaptation_sets, per_rater_accuracy
    from trl_rfm.testing import build_tokenizer
    from trl_rfm.testing.from_scratch import ModelArguments, train_reward_model, train_rfm

    torch.set_num_threads(1)
    datasets.disable_progress_bars()
    hidden, epochs, batch, lr = PROTOCOL.match(protocol).groups()
    model_args = ModelArguments(
        hidden_size=int(hidden), num_train_epochs=float(epochs), batch_size=int(batch), learning_rate=float(lr),
        length_grouping=8,
    )  # fmt: skip
    start = time.time()
    votes = load_polis_votes(args.data_dir, args.conversations.split(",") if args.conversations else None)
    if args.max_users is not None:
        kept = set(sorted(set(votes["user_id"]))[: args.max_users])
        votes = votes.filter(lambda row: row["user_id"] in kept)
    texts = sorted(set(votes["statement"]) | set(votes["topic"]))
    parts = polis_evaluation_parts(
        votes, seed, max_train_pairs_per_user=args.max_train_pairs_per_user, **HELD_OUT_SPLIT
    )
    if args.train_fraction < 1:
        generator = torch.Generator().manual_seed(seed)
        kept = torch.randperm(len(parts["train"]), generator=generator)[
            : int(args.train_fraction * len(parts["train"]))
        ]
        parts["train"] = parts["train"].select(kept.sort().values.tolist())
    tokenizer = build_tokenizer(texts + [" :"])
    cache = {}
    names = ("train", "val", "heldout_adaptation", "heldout_test")
    parts = {name: tokenize_preferences(parts[name], tokenizer, cache=cache) for name in names}
    users = sorted(set(parts["heldout_test"]["user_id"]))
    shots = [int(k) for k in args.shots.split(",")]
    result = {"protocol": protocol, "seed": seed, "method": method, "users": users}

    t = time.time()
    if method == "rm":
        model = train_reward_model(parts["train"], tokenizer, model_args, seed)
        featurize = lambda d: compute_score_head_input_differences(model, tokenizer, d, 256, show_progress=False)  # noqa: E731
        head = model.score.weight[0].detach().float()
    else:
        model, _ = train_rfm(parts["train"], tokenizer, model_args, seed)
        featurize = lambda d: compute_feature_differences(model, tokenizer, d, 256, show_progress=False)  # noqa: E731
    result["train_seconds"] = time.time() - t
    test_x, test_mask, _ = group_by_user(featurize(parts["heldout_test"]), parts["heldout_test"]["user_id"], users)
    statements = test_statements(parts["heldout_test"], users)
    statement_x = compute_response_features(model, tokenizer, *statements.texts) if method == "rfm" else None
    best_of = [int(n) for n in args.best_of.split(",")]
    if method == "rm":
        result["accuracy"] = per_rater_accuracy(torch.einsum("upd,d->up", test_x, head), test_mask).tolist()
        rewards = reward_model_scores(model, tokenizer, *statements.texts)
        result["best_of_n"] = {
            n: best_of_n_agreement(statements, rewards.expand(len(users), -1), n, seed) for n in best_of
        }
        return result

    population, l2 = prior_from_model(model)
    _, isotropic_l2 = prior_from_model(model, isotropic=True)
    pool_x, pool_mask, _ = group_by_user(
        featurize(parts["heldout_adaptation"]), parts["heldout_adaptation"]["user_id"], users
    )
    draws = draw_adaptation_sets(pool_mask, shots, args.num_draws, seed)

    def accuracy_curve(precision: float) -> dict[int, list[float]]:
        curve = {}
        for k, masks in draws.items():
            per_draw = []
            for mask in masks:
                weights = fit_user_weights(pool_x, mask, population, precision)
                per_draw.append(per_rater_accuracy(torch.einsum("upd,ud->up", test_x, weights), test_mask))
            curve[k] = torch.stack(per_draw).mean(0).tolist()
        return curve

    curves = accuracy_curve(l2)
    result["curves_isotropic"] = accuracy_curve(isotropic_l2)
    result["best_of_n"] = {}
    for n in best_of:
        result["best_of_n"][n] = {}
        for k in [k for k in draws if k in (0, 20)]:  # the population and a typical adaptation budget
            rates = [best_of_n_agreement(statements, fit_user_weights(pool_x, mask, population, l2) @ statement_x.T, n, seed)
                     for mask in draws[k]]  # fmt: skip
            result["best_of_n"][n][k] = np.nanmean(np.array(rates), axis=0).tolist()
    if args.prior_precisions:
        result["curves_by_prior"] = {float(p): accuracy_curve(float(p)) for p in args.prior_precisions.split(",")}
    val_x, val_mask, val_users = group_by_user(featurize(parts["val"]), parts["val"]["user_id"])

    def own_rows_accuracy() -> torch.Tensor:
        """The training participants' accuracy on their held-out votes with the model's current rows."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # training participants without a training pair score with the population
            own_rows = model.get_user_weights(val_users, strict=False).float().cpu()
        return per_rater_accuracy(torch.einsum("upd,ud->up", val_x, own_rows), val_mask)

    own = own_rows_accuracy()
    population_accuracy = per_rater_accuracy(torch.einsum("upd,d->up", val_x, population), val_mask)
    statements = sorted(set(votes["statement"]))
    phi = compute_response_features(model, tokenizer, [parts["train"][0]["prompt"]] * len(statements), statements)
    population_direction = population / population.norm()
    result.update(
        curves=curves,
        prior_precision=isotropic_l2,
        effective_dimension_off_population=effective_dimension(
            phi - (phi @ population_direction)[:, None] * population_direction
        ),
        own_row_gain=(own - population_accuracy).nanmean().item(),
        effective_dimension=effective_dimension(phi),
        seconds=time.time() - start,
    )
    return result


@dataclass
class HeldOutStatements:
    """Each held-out participant's test statements: `texts` = (prompts, statements) of the distinct statements, and
    per participant the indices of the ones they agreed with and disagreed with."""

    texts: tuple[list[str], list[str]]
    agreed: list[list[int]]
    disagreed: list[list[int]]


def test_statements(test_pairs, users: list[str]) -> HeldOutStatements:
    """The statements of the held-out participants' test pairs (chosen: agreed, rejected: disagreed)."""
    index, prompts, texts = {}, [], []
    agreed = {u: set() for u in users}
    disagreed = {u: set() for u in users}
    for row in test_pairs.select_columns(["prompt", "chosen", "rejected", "user_id"]):
        for column, votes in (("chosen", agreed), ("rejected", disagreed)):
            key = (row["prompt"], row[column])
            if key not in index:
                index[key] = len(texts)
                prompts.append(row["prompt"])
                texts.append(row[column])
            votes[row["user_id"]].add(index[key])
    return HeldOutStatements(
        (prompts, texts), [sorted(agreed[u]) for u in users], [sorted(disagreed[u]) for u in users]
    )


def best_of_n_agreement(
    statements: HeldOutStatements, rewards: torch.Tensor, n: int, seed: int, draws: int = 32
) -> list:
    """Per participant: over `draws` random sets of `n` of their test statements (the same sets for every reward),
    the fraction whose top statement by `rewards` [users, statements] is one they agreed with; NaN with fewer than `n`
    statements or without both votes."""
    generator = np.random.default_rng(seed)
    rates = []
    for user, (agreed, disagreed) in enumerate(zip(statements.agreed, statements.disagreed)):
        candidates = np.array(agreed + disagreed)
        if len(candidates) < n or not agreed or not disagreed:
            generator.random()  # keeps the stream aligned across rewards whatever the participant
            rates.append(float("nan"))
            continue
        sets = np.stack([generator.permutation(len(candidates))[:n] for _ in range(draws)])  # [draws, n]
        top = rewards[user, torch.from_numpy(candidates[sets])].argmax(-1).numpy()  # [draws]
        rates.append(float((sets[np.arange(draws), top] < len(agreed)).mean()))
    return rates


@torch.no_grad()
def reward_model_scores(model, tokenizer, prompts: list[str], texts: list[str]) -> torch.Tensor:
    """The RM's reward of each statement, tokenised as in training. [statements]"""
    from trl.trainer.utils import pad

    from trl_rfm.adaptation.features import tokenize_sequence

    sequences = [torch.tensor(tokenize_sequence(tokenizer, p, t)) for p, t in zip(prompts, texts)]
    scores = []
    for start in range(0, len(sequences), 256):
        batch = sequences[start : start + 256]
        input_ids = pad(batch, padding_value=tokenizer.pad_token_id, padding_side="right")
        attention_mask = pad([torch.ones_like(s) for s in batch], padding_value=0, padding_side="right")
        scores.append(model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float())
    return torch.cat(scores)


def _mean_se(values: np.ndarray) -> tuple[float, float]:
    values = values[~np.isnan(values)]
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values)))


def summarize(jobs: list[dict], shots: list[int]) -> dict:
    """Per protocol: RM accuracy, paired per-rater gains of the RFM at each k (mean, s.e. over every held-out rater of
    every split, and the spread of the split means), own-row gain and effective dimension."""
    summary = {}
    for protocol in sorted({job["protocol"] for job in jobs}):
        rm = {j["seed"]: np.array(j["accuracy"]) for j in jobs if j["protocol"] == protocol and j["method"] == "rm"}
        rfm = {j["seed"]: j for j in jobs if j["protocol"] == protocol and j["method"] == "rfm"}
        seeds = sorted(set(rm) & set(rfm))
        if not seeds:
            continue
        row = {"splits": len(seeds), "rm_accuracy": _mean_se(np.concatenate([rm[s] for s in seeds]))}
        for k in shots:
            gains = [np.array(rfm[s]["curves"][k]) - rm[s] for s in seeds]
            row[f"gain_k{k}"] = _mean_se(np.concatenate(gains))
            row[f"gain_k{k}_split_std"] = float(np.std([np.nanmean(g) for g in gains]))
        row["prior_precision"] = float(np.mean([rfm[s]["prior_precision"] for s in seeds]))
        if all("curves_isotropic" in rfm[s] for s in seeds):  # paired: positive when the isotropic prior is better
            row["isotropic_minus_shaped"] = {
                k: _mean_se(np.concatenate([np.array(rfm[s]["curves_isotropic"][k]) - np.array(rfm[s]["curves"][k]) for s in seeds]))
                for k in shots
            }  # fmt: skip
        rm_jobs = {j["seed"]: j for j in jobs if j["protocol"] == protocol and j["method"] == "rm"}
        if all("best_of_n" in rfm[s] and "best_of_n" in rm_jobs[s] for s in seeds):
            row["best_of_n"] = {}
            for n in rfm[seeds[0]]["best_of_n"]:
                rm_rates = np.concatenate([np.array(rm_jobs[s]["best_of_n"][n]) for s in seeds])
                entry = {"rm": _mean_se(rm_rates)}
                for k in rfm[seeds[0]]["best_of_n"][n]:
                    rates = np.concatenate([np.array(rfm[s]["best_of_n"][n][k]) for s in seeds])
                    entry[f"gain_k{k}"] = _mean_se(rates - rm_rates)
                row["best_of_n"][n] = entry
        if all("effective_dimension_off_population" in rfm[s] for s in seeds):
            row["effective_dimension_off_population"] = float(
                np.mean([rfm[s]["effective_dimension_off_population"] for s in seeds])
            )
        swept = set.intersection(*(set(rfm[s].get("curves_by_prior", {})) for s in seeds))
        if swept:  # paired per rater against the same draws adapted with `prior_from_model`'s precision
            row["gain_over_model_prior"] = {
                precision: {
                    k: _mean_se(np.concatenate([
                        np.array(rfm[s]["curves_by_prior"][precision][k]) - np.array(rfm[s]["curves"][k])
                        for s in seeds
                    ]))
                    for k in shots
                }
                for precision in sorted(swept)
            }  # fmt: skip
        row["own_row_gain"] = float(np.mean([rfm[s]["own_row_gain"] for s in seeds]))
        row["effective_dimension"] = float(np.mean([rfm[s]["effective_dimension"] for s in seeds]))
        row["train_seconds"] = {m: float(np.mean([j["train_seconds"] for j in jobs if j["protocol"] == protocol and j["method"] == m])) for m in ("rm", "rfm")}  # fmt: skip
        summary[protocol] = row
    return summary


def print_table(summary: dict, shots: list[int]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Polis, held-out participants: library defaults vs trl.RewardTrainer (points)")
    for column in ["protocol", "splits", "RM acc", *[f"gain k={k}" for k in shots], "own rows", "eff. dim"]:
        table.add_column(column, justify="right")
    for protocol, row in summary.items():
        gains = [f"{100 * row[f'gain_k{k}'][0]:+.1f} ± {100 * row[f'gain_k{k}'][1]:.1f}" for k in shots]
        table.add_row(
            protocol, str(row["splits"]), f"{100 * row['rm_accuracy'][0]:.1f}", *gains,
            f"{100 * row['own_row_gain']:+.1f}", f"{row['effective_dimension']:.1f}",
        )  # fmt: skip
    Console().print(table)
    for protocol, row in summary.items():
        if "isotropic_minus_shaped" in row:
            cells = "  ".join(
                f"k={k} {100 * v[0]:+.1f} ± {100 * v[1]:.1f}" for k, v in row["isotropic_minus_shaped"].items()
            )
            print(f"{protocol}: isotropic prior of equal spread minus the fitted prior (paired): {cells}")
        for n, entry in row.get("best_of_n", {}).items():
            gains = "  ".join(
                f"{key[5:]} {100 * v[0]:+.1f} ± {100 * v[1]:.1f}" for key, v in entry.items() if key != "rm"
            )
            print(f"{protocol}: best-of-{n} agreement, RM {100 * entry['rm'][0]:.1f}%; RFM gain at {gains}")
        if "effective_dimension_off_population" in row:
            print(
                f"{protocol}: effective dimension orthogonal to w_pop {row['effective_dimension_off_population']:.1f}"
            )
        for precision, gains in row.get("gain_over_model_prior", {}).items():
            cells = "  ".join(f"k={k} {100 * gains[k][0]:+.1f} ± {100 * gains[k][1]:.1f}" for k in shots)
            print(
                f"{protocol}: prior precision {precision:g} vs prior_from_model ({row['prior_precision']:.1f}): {cells}"
            )


def _write_report(args: ProtocolArguments, results: list[dict], start: float) -> dict:
    shots = [int(k) for k in args.shots.split(",")]
    for result in results:  # JSON keys are strings
        if "curves" in result:
            result["curves"] = {int(k): v for k, v in result["curves"].items()}
        if "curves_isotropic" in result:
            result["curves_isotropic"] = {int(k): v for k, v in result["curves_isotropic"].items()}
        if "best_of_n" in result:
            result["best_of_n"] = {
                int(n): ({int(k): r for k, r in v.items()} if isinstance(v, dict) else v)
                for n, v in result["best_of_n"].items()
            }
        if "curves_by_prior" in result:
            result["curves_by_prior"] = {
                float(p): {int(k): v for k, v in curve.items()} for p, curve in result["curves_by_prior"].items()
            }
    summary = summarize(results, shots)
    print_table(summary, shots)
    os.makedirs(args.output_dir, exist_ok=True)
    report = {"arguments": asdict(args), "summary": summary, "jobs": results, "wall_seconds": time.time() - start}
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(report, f, indent=1, default=float)
    with open(os.path.join(args.output_dir, "table.md"), "w") as f:
        f.write(markdown_table(summary, shots))
    return report


def markdown_table(summary: dict, shots: list[int]) -> str:
    """The summary as the Markdown table of docs/results.md (points; training seconds per model, RFM / RM)."""
    header = [
        "protocol",
        "splits",
        "RM acc.",
        *[f"k={k}" for k in shots],
        "own rows",
        "eff. dim",
        "train s (RFM / RM)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for protocol, row in summary.items():
        gains = [f"{100 * row[f'gain_k{k}'][0]:+.1f} ± {100 * row[f'gain_k{k}'][1]:.1f}" for k in shots]
        seconds = f"{row['train_seconds']['rfm']:.0f} / {row['train_seconds']['rm']:.0f}"
        cells = [f"`{protocol}`", str(row["splits"]), f"{100 * row['rm_accuracy'][0]:.1f}", *gains,
                 f"{100 * row['own_row_gain']:+.1f}", f"{row['effective_dimension']:.1f}", seconds]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(args: ProtocolArguments) -> dict:
    start = time.time()
    if args.merge:
        results = []
        for path in args.merge.split(","):
            with open(path) as f:
                results += json.load(f)["jobs"]
        return _write_report(args, results, start)
    protocols = args.protocols.split(",")
    for protocol in protocols:
        if not PROTOCOL.match(protocol):
            raise ValueError(f"Protocol {protocol!r} is not of the form h<hidden>_e<epochs>_b<batch>_lr<lr>.")
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = [(args, p, s, m) for p in protocols for s in seeds for m in ("rfm", "rm")]
    if args.num_workers <= 1:
        results = [_run_job(*job) for job in jobs]
    else:
        with multiprocessing.get_context("spawn").Pool(min(args.num_workers, len(jobs))) as pool:
            results = pool.starmap(_run_job, jobs, chunksize=1)
    return _write_report(args, results, start)


if __name__ == "__main__":
    (protocol_args,) = HfArgumentParser(ProtocolArguments).parse_args_into_dataclasses()
    main(protocol_args)
