"""
Control for the Polis benchmark: how much per-participant gain do the Polis splits support when the features are free?

The RFM of `polis_benchmark.py` reads each statement through a from-scratch transformer. Here the same split's pairs
train a *factorisation* instead: one free `d`-dimensional feature vector per statement, one weight row per training
participant and learned population weights, with the RFM's Bradley-Terry loss on both, and the held-out participants
are adapted exactly as in the benchmark (`fit_user_weights` on frozen features, same k, same draws). Two optimisers:

- `full_batch`: Adam on all training pairs at once until converged, prior `row_precision / 2 * ||w_u - w_pop||^2`
  per participant and `embedding_l2 / 2 * ||e_s||^2` per statement (both summed, then divided by the pairs);
- `minibatch`: the recipe of `RFMRewardTrainer` on the same parameters (batches of 64 pairs, 3 epochs, cosine
  schedule, AdamW, the user table in its own group at `user_weights_learning_rate`, the prior
  `user_weights_l2 * mean_u ||w_u - w_pop||^2` at every step, RMS-normalised features, optional
  `feature_covariance_l2`), so that the two differ only in how the parameters are optimised.

Runs in about a minute per configuration on one CPU core:

```bash
python benchmarks/polis_factorization_control.py                                   # full batch + trainer recipe
python benchmarks/polis_factorization_control.py --optimizer minibatch --learning_rate 3e-2 --feature_covariance_l2 0
python benchmarks/polis_factorization_control.py --optimizer full_batch --split protocols --precisions 3,10,30
```

Data: Polis (compdemocracy.org/polis), CC BY 4.0, The Computational Democracy Project; pairs derived from votes.
Read from `--data_dir` (default `$TRL_RFM_POLIS_DIR`, else `../shared/data/polis` beside the repository;
`trl-rfm data fetch polis` fetches them, see docs/datasets.md).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from transformers import HfArgumentParser  # noqa: E402

from trl_rfm import effective_dimension, group_by_user  # noqa: E402
from trl_rfm.data import (  # noqa: E402
    default_polis_dir,
    index_polis_statements,
    load_polis_votes,
    polis_evaluation_parts,
)
from trl_rfm.evaluation import accuracy_vs_k, per_rater_accuracy  # noqa: E402


DEFAULT_DATA_DIR = default_polis_dir()  # $TRL_RFM_POLIS_DIR, else ../shared/data/polis beside the checkout


@dataclass
class FactorizationArguments:
    optimizer: str = field(default="full_batch,minibatch", metadata={"help": "`full_batch`, `minibatch` or both."})
    split: str = field(
        default="benchmark",
        metadata={"help": "`benchmark` (polis_benchmark.py's split) or `protocols` (polis_protocols.py's split)."},
    )
    seed: int = field(default=0, metadata={"help": "Split seed (the same split as `polis_benchmark.py --seeds`)."})
    data_dir: str = field(
        default=DEFAULT_DATA_DIR,
        metadata={
            "help": "Folder of the Polis conversations (`trl-rfm data fetch polis` fetches them). Default: "
            "$TRL_RFM_POLIS_DIR, else ../shared/data/polis beside the repository."
        },
    )
    num_features: int = field(default=32, metadata={"help": "Feature dimension d."})
    # full batch
    row_precision: float = field(default=1.0, metadata={"help": "full_batch: prior precision of each row."})
    embedding_l2: float = field(default=1.0, metadata={"help": "full_batch: L2 precision of each statement vector."})
    full_batch_steps: int = field(default=500, metadata={"help": "full_batch: Adam steps (lr 0.05)."})
    # minibatch: an RFMRewardTrainer recipe (the table at its own rate, the row prior, the covariance penalty)
    learning_rate: float = field(default=3e-3, metadata={"help": "minibatch: lr of the statement vectors."})
    user_weights_learning_rate: float = field(default=3e-2, metadata={"help": "minibatch: lr of the rows."})
    user_weights_l2: float = field(default=0.3, metadata={"help": "minibatch: coefficient of the row prior."})
    feature_covariance_l2: float = field(default=1.0, metadata={"help": "minibatch: covariance penalty."})
    num_train_epochs: int = field(default=3, metadata={"help": "minibatch: epochs."})
    batch_size: int = field(default=64, metadata={"help": "minibatch: pairs per step."})
    precisions: str = field(default="30", metadata={"help": "Fixed adaptation precisions shown beside the model's."})
    output: str | None = field(default=None, metadata={"help": "JSON file for the results (default: print only)."})


class StatementFactorization(nn.Module):
    def __init__(self, num_statements: int, num_users: int, d: int, rms_normalize: bool, generator):
        super().__init__()
        self.statement_vectors = nn.Parameter(torch.randn(num_statements, d, generator=generator) * 0.1)
        self.user_weights = nn.Parameter(torch.randn(num_users, d, generator=generator) * d**-0.5)
        self.population_weights = nn.Parameter(torch.randn(d, generator=generator) * d**-0.5)
        self.rms_normalize = rms_normalize

    def features(self, statements=None):
        phi = self.statement_vectors if statements is None else self.statement_vectors[statements]
        if self.rms_normalize:  # as `feature_normalization="rms"`: ||phi|| = sqrt(d)
            phi = phi / phi.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
        return phi

    def losses(self, chosen, rejected, users):
        x = self.features(chosen) - self.features(rejected)  # [B, d]
        user_loss = nn.functional.softplus(-(x * self.user_weights[users]).sum(-1))
        population_loss = nn.functional.softplus(-(x @ self.population_weights))
        return user_loss, population_loss


def train_full_batch(model, chosen, rejected, users, args):
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(args.full_batch_steps):
        user_loss, population_loss = model.losses(chosen, rejected, users)
        prior = (model.user_weights - model.population_weights.detach()).pow(2).sum()
        loss = user_loss.sum() + population_loss.sum() + args.row_precision / 2 * prior
        loss = (loss + args.embedding_l2 / 2 * model.statement_vectors.pow(2).sum()) / len(users)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def train_minibatch(model, chosen, rejected, users, args, generator):
    optimizer = torch.optim.AdamW(
        [
            {"params": [model.statement_vectors], "lr": args.learning_rate},
            {"params": [model.user_weights, model.population_weights], "lr": args.user_weights_learning_rate},
        ],
        weight_decay=0.0,  # TrainingArguments' default
    )
    peak = [group["lr"] for group in optimizer.param_groups]
    total_steps, step = args.num_train_epochs * math.ceil(len(users) / args.batch_size), 0
    d = model.statement_vectors.shape[1]
    for _ in range(args.num_train_epochs):
        order = torch.randperm(len(users), generator=generator)
        for start in range(0, len(users), args.batch_size):
            batch = order[start : start + args.batch_size]
            user_loss, population_loss = model.losses(chosen[batch], rejected[batch], users[batch])
            prior = (model.user_weights - model.population_weights.detach()).pow(2).sum(-1).mean()
            loss = user_loss.mean() + population_loss.mean() + args.user_weights_l2 * prior
            if args.feature_covariance_l2 > 0:
                phi = model.features(torch.cat([chosen[batch], rejected[batch]]))
                centred = phi - phi.mean(0)
                covariance = centred.T @ centred / (len(phi) - 1)
                loss = loss + args.feature_covariance_l2 * (covariance - torch.eye(d)).pow(2).sum() / d
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            for group, rate in zip(optimizer.param_groups, peak):
                group["lr"] = rate * 0.5 * (1 + math.cos(math.pi * step / total_steps))


@torch.no_grad()
def heldout_curves(model, parts, pairs, precisions, seed):
    phi = model.features()
    differences = {name: phi[chosen] - phi[rejected] for name, (chosen, rejected) in pairs.items()}
    users = sorted(set(parts["heldout_test"]["user_id"]))
    adapt = group_by_user(differences["heldout_adaptation"], parts["heldout_adaptation"]["user_id"], users)[:2]
    test = group_by_user(differences["heldout_test"], parts["heldout_test"]["user_id"], users)[:2]
    population = model.population_weights.detach()
    model_precision = 1.0 / (model.user_weights - population).pow(2).mean().item()  # as `prior_from_model`
    result = {"model_precision": model_precision, "effective_dimension": float(effective_dimension(phi))}
    for name, precision in [("model_prior", model_precision), *((f"precision_{p:g}", p) for p in precisions)]:
        curve = accuracy_vs_k(*adapt, *test, population, precision, [0, 5, 20, 50], 5, seed, average="pooled")
        result[name] = {k: 100 * float(np.mean(v)) for k, v in curve.items()}
    # Averaged per participant, as `polis_protocols.py` averages the RFM's curves (the pooled ones above weigh
    # participants by their number of test pairs).
    curve = accuracy_vs_k(*adapt, *test, population, model_precision, [0, 5, 20, 50], 5, seed, average="per_rater")
    result["model_prior_per_rater"] = {k: 100 * float(np.mean(v)) for k, v in curve.items()}
    return result


@torch.no_grad()
def own_row_gain(model, parts, pairs, participants) -> float:
    """The training participants' own rows against the population weights on their held-out votes (`val`), in points,
    averaged per participant: `polis_protocols.py`'s "own rows" for the free features."""
    chosen, rejected = pairs["val"]
    x, mask, users = group_by_user(model.features(chosen) - model.features(rejected), parts["val"]["user_id"])
    row = {u: i for i, u in enumerate(participants)}
    known = torch.tensor([u in row for u in users])  # participants without a training pair have no row
    own_rows = model.user_weights[torch.tensor([row[u] for u in users if u in row])]
    x, mask = x[known], mask[known]
    own = per_rater_accuracy(torch.einsum("upd,ud->up", x, own_rows), mask)
    population = per_rater_accuracy(torch.einsum("upd,d->up", x, model.population_weights), mask)
    return 100 * float((own - population).mean())


def main(args: FactorizationArguments) -> list[dict]:
    torch.set_num_threads(1)
    if args.split == "protocols":  # benchmarks/polis_protocols.py's split, at its default training cap
        from polis_protocols import HELD_OUT_SPLIT, ProtocolArguments

        cap = ProtocolArguments.max_train_pairs_per_user
        parts = polis_evaluation_parts(
            load_polis_votes(args.data_dir), args.seed, max_train_pairs_per_user=cap, **HELD_OUT_SPLIT
        )
    elif args.split == "benchmark":  # benchmarks/polis_benchmark.py's split
        parts = polis_evaluation_parts(load_polis_votes(args.data_dir), seed=args.seed)
    else:
        raise ValueError(f"Unknown split {args.split!r}: expected `benchmark` or `protocols`.")
    pairs, statements = index_polis_statements(parts)
    participants = sorted(set(parts["train"]["user_id"]))
    row = {u: i for i, u in enumerate(participants)}
    users = torch.tensor([row[u] for u in parts["train"]["user_id"]])
    chosen, rejected = pairs["train"]
    precisions = [float(p) for p in args.precisions.split(",") if p]
    results = []
    for optimizer in args.optimizer.split(","):
        generator = torch.Generator().manual_seed(args.seed)
        minibatch = optimizer == "minibatch"
        model = StatementFactorization(len(statements), len(participants), args.num_features, minibatch, generator)
        if minibatch:
            train_minibatch(model, chosen, rejected, users, args, generator)
        elif optimizer == "full_batch":
            train_full_batch(model, chosen, rejected, users, args)
        else:
            raise ValueError(f"Unknown optimizer {optimizer!r}: expected `full_batch` or `minibatch`.")
        result = {"optimizer": optimizer, **heldout_curves(model, parts, pairs, precisions, args.seed)}
        result["own_row_gain"] = own_row_gain(model, parts, pairs, participants)
        results.append(result)
        base = result["model_prior"][0]
        gains = " / ".join(f"{result['model_prior'][k] - base:+.1f}" for k in (5, 20, 50))
        per_rater = result["model_prior_per_rater"]
        per_rater_gains = " / ".join(f"{per_rater[k] - per_rater[0]:+.1f}" for k in (5, 20, 50))
        print(
            f"{optimizer:>10}: population {base:.1f}%, gain at k = 5 / 20 / 50 (model prior, precision "
            f"{result['model_precision']:.0f}): {gains} (per participant: {per_rater[0]:.1f}%, {per_rater_gains}); "
            f"own rows {result['own_row_gain']:+.1f}; effective dimension {result['effective_dimension']:.1f}",
            flush=True,
        )
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"arguments": asdict(args), "results": results}, f, indent=1)
    return results


if __name__ == "__main__":
    (factorization_args,) = HfArgumentParser(FactorizationArguments).parse_args_into_dataclasses()
    main(factorization_args)
