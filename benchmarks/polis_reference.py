"""
A tuned, non-transformer reference for personalisation on Polis: how much do k answers of a new participant buy when
the statement features are learned by a small model whose every setting is chosen on validation?

Data: the Polis conversations of `../shared/data/polis`. Attribution (CC BY 4.0): Data was gathered using the Polis
software (compdemocracy.org/polis) and is sub-licensed under CC BY 4.0 with Attribution to The Computational Democracy
Project. Pairs are derived from votes (within one participant, a statement they agreed with is preferred to one they
disagreed with), not direct pairwise choices.

Splits: exactly those of `benchmarks/polis_protocols.py` (same `HELD_OUT_SPLIT`, training cap, conversations and
`--max_users`), so each held-out participant's accuracy here pairs with that benchmark's stock-RM accuracy for the same
participant: per k, results.json lists one accuracy per participant in the order
`users = sorted(set(parts["heldout_test"]["user_id"]))`, the order `polis_protocols.py` writes its `accuracy` and
`curves` in. `--train_fraction` trains on a uniform subsample of the training pairs (to mirror a protocol that sees
one epoch over a third of them).

Model, per variant: a feature vector `phi(s)` in R^d per statement, standardised over the statements (zero mean, unit
variance per feature: the scale of the features is then fixed, so that the offsets' prior means the same thing at
every d), and per training participant `w_u = w_0 + delta_u`; loss: Bradley-Terry on the training pairs plus
`precision / 2 * ||delta_u||^2` per participant, both summed and divided by the number of pairs, and weight decay on the
statement encoder. Statement encoders (`--variants`):
- `free`: one free vector per statement (a factorisation, as `polis_factorization_control.py`);
- `bow`: a hashed bag of the statement's words and word bigrams through a small MLP (one hidden layer);
- `bow_id`: `bow` plus a free vector per statement (zero at the start; weight decay keeps it a residual).

Everything is chosen on the training participants' data only (their `train` pairs and their held-out `val` votes),
never on a held-out participant's answer:
1. full-batch AdamW, stopped early at the lowest `val` loss (each training participant scored by their own row);
2. `d` and the offsets' prior precision from `--num_features` x `--offset_precisions`, by that `val` loss;
3. new participants start at `w_0`; their prior, per k, is chosen on *pseudo-new* participants: the training
   participants are cut into `--prior_folds` folds, a model (same d and offset precision) is trained without each
   fold, and that fold's participants are adapted (features frozen, `fit_user_weights`) from k of their training
   pairs, same number of draws, and scored on their `val` pairs. Two prior families: `isotropic` (precision from
   `--adaptation_precisions`) and `covariance` (the second moment of the trained offsets, shrunk towards isotropic by
   a factor from `--covariance_shrinkages` and scaled by one from `--covariance_scales`; fitted exactly by whitening
   the features with its Cholesky factor). The pseudo-new participants' gain at the chosen setting is reported as
   `val. gain`, the validation estimate of the held-out gain.

Held-out participants are then adapted as in `polis_protocols.py`: `fit_user_weights` on k pairs of their adaptation
pool (the same `draw_adaptation_sets(pool_mask, shots, num_draws, seed)` draws), scored on their test pairs with
`per_rater_accuracy`. Reported per split, variant and prior: accuracy at k = 0 (the prior mean `w_0`) and the gain over
it at each k, per participant (mean +- s.e., paired) and pooled over test pairs, on all held-out participants and on
those with at least `--min_pool_pairs` pairs in their adaptation pool; beside it `pop. fit`, a logistic regression of
all training pairs on the final features (one population row), a check that `w_0` is not a weak population.

Runs on one CPU thread (`torch.set_num_threads(1)`), two to three minutes per split and variant (the default run,
3 splits x 3 variants, took 24 minutes on a shared two-core machine):

    python benchmarks/polis_reference.py                                            # 3 splits, 3 variants
    python benchmarks/polis_reference.py --seeds 0 --variants bow_id                # one split, one variant
    python benchmarks/polis_reference.py --train_fraction 0.33 --output_dir runs/polis_reference_third
    python benchmarks/polis_reference.py --conversations 15-per-hour-seattle --max_users 200 --seeds 0 \\
        --num_features 4 --offset_precisions 1,10 --max_steps 60                    # smoke run
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import time
import zlib
from dataclasses import asdict, dataclass, field


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

# The protocol benchmark's split, imported rather than copied, so that the two can never drift apart.
from polis_protocols import DEFAULT_DATA_DIR, HELD_OUT_SPLIT  # noqa: E402
from torch import nn  # noqa: E402
from transformers import HfArgumentParser  # noqa: E402

from trl_rfm import group_by_user  # noqa: E402
from trl_rfm.adaptation.solver import fit_user_weights  # noqa: E402
from trl_rfm.evaluation import draw_adaptation_sets, per_rater_accuracy  # noqa: E402


VARIANTS = ("free", "bow", "bow_id")
PRIORS = ("isotropic", "covariance")
PARTS = ("train", "val", "heldout_adaptation", "heldout_test")


@dataclass
class ReferenceArguments:
    data_dir: str = field(default=DEFAULT_DATA_DIR, metadata={"help": "Folder of the Polis conversations."})
    conversations: str | None = field(default=None, metadata={"help": "Comma-separated conversations (default all)."})
    max_users: int | None = field(
        default=None, metadata={"help": "Keep this many participants, as polis_protocols.py (smoke runs)."}
    )
    seeds: str = field(default="0,1,2", metadata={"help": "Comma-separated participant splits."})
    max_train_pairs_per_user: int = field(default=200, metadata={"help": "Cap on training pairs per participant."})
    train_fraction: float = field(
        default=1.0, metadata={"help": "Train on this uniform subsample of the training pairs (seeded by the split)."}
    )
    variants: str = field(default="free,bow,bow_id", metadata={"help": f"Comma-separated among {VARIANTS}."})
    num_features: str = field(default="8,16,32", metadata={"help": "Grid of d (chosen on val)."})
    offset_precisions: str = field(
        default="10,30,100,300", metadata={"help": "Grid of the offsets' prior precision in training (chosen on val)."}
    )
    weight_decay: float = field(default=1e-3, metadata={"help": "AdamW weight decay of the statement encoder."})
    learning_rate: float = field(default=3e-2, metadata={"help": "Full-batch AdamW learning rate."})
    max_steps: int = field(default=1000, metadata={"help": "Full-batch steps at most (early stopping on val)."})
    eval_every: int = field(default=10, metadata={"help": "Steps between val evaluations."})
    patience: int = field(default=60, metadata={"help": "Stop after this many steps without a better val loss."})
    hidden_size: int = field(default=128, metadata={"help": "Hidden units of the bag-of-words MLP."})
    hash_buckets: int = field(default=2**14, metadata={"help": "Buckets of the hashed bag of words and bigrams."})
    prior_folds: int = field(
        default=5,
        metadata={
            "help": "Folds of training participants for choosing the new participants' prior (5: each fold's model "
            "trains on 80%% of them, as the final model trains on 80%% of all participants)."
        },
    )
    adaptation_precisions: str = field(
        default="3,5,10,20,30,50,100,200",
        metadata={"help": "Grid of the new participants' isotropic prior precision."},
    )
    covariance_shrinkages: str = field(
        default="0.1,0.3,0.6,0.9", metadata={"help": "Grid of the shrinkage of the offsets' covariance."}
    )
    covariance_scales: str = field(
        default="1,2,4,8,16", metadata={"help": "Grid of the factor on the (shrunk) offsets' covariance."}
    )
    shots: str = field(default="0,5,10,20,50", metadata={"help": "Comma-separated k."})
    num_draws: int = field(default=5, metadata={"help": "Random draws of the k adaptation pairs."})
    min_pool_pairs: int = field(default=30, metadata={"help": "The subset with at least this many pool pairs."})
    output_dir: str = field(default="runs/polis_reference", metadata={"help": "Where results.json is written."})


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


# --------------------------------------------------------------------------------------------------------- data


@dataclass
class Pairs:
    """One part's pairs as statement indices, and the participant of each pair."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    user_ids: list[str]

    def __len__(self) -> int:
        return len(self.user_ids)

    def select(self, rows) -> Pairs:
        rows = torch.as_tensor(rows, dtype=torch.long)
        return Pairs(self.chosen[rows], self.rejected[rows], [self.user_ids[i] for i in rows.tolist()])


@dataclass
class SplitData:
    """Statement texts and every part's pairs; `train` and `val` are the only parts any choice reads."""

    texts: list[str]
    parts: dict[str, Pairs]


def prepare_split(args: ReferenceArguments, seed: int) -> SplitData:
    """`polis_protocols.py`'s split of `seed` (same votes, participants, caps), statements indexed by (conversation,
    statement id), and the training pairs subsampled when `train_fraction < 1`."""
    import datasets

    from trl_rfm.data import load_polis_votes, polis_evaluation_parts

    datasets.disable_progress_bars()
    votes = load_polis_votes(args.data_dir, args.conversations.split(",") if args.conversations else None)
    if args.max_users is not None:
        kept = set(sorted(set(votes["user_id"]))[: args.max_users])
        votes = votes.filter(lambda row: row["user_id"] in kept)
    parts = polis_evaluation_parts(
        votes, seed, max_train_pairs_per_user=args.max_train_pairs_per_user, **HELD_OUT_SPLIT
    )
    columns = votes.select_columns(["conversation", "comment_id", "statement"]).to_dict()
    index, texts = {}, []
    for key, text in zip(zip(columns["conversation"], columns["comment_id"]), columns["statement"]):
        if key not in index:
            index[key] = len(texts)
            texts.append(text)
    pairs = {}
    for name in PARTS:
        part = parts[name].select_columns(["conversation", "chosen_item", "rejected_item", "user_id"]).to_dict()
        chosen = [index[key] for key in zip(part["conversation"], part["chosen_item"])]
        rejected = [index[key] for key in zip(part["conversation"], part["rejected_item"])]
        pairs[name] = Pairs(torch.tensor(chosen), torch.tensor(rejected), list(part["user_id"]))
    if args.train_fraction < 1.0:
        generator = np.random.default_rng(seed)
        size = max(1, round(args.train_fraction * len(pairs["train"])))
        pairs["train"] = pairs["train"].select(np.sort(generator.permutation(len(pairs["train"]))[:size]))
    return SplitData(texts, pairs)


_WORD = re.compile(r"[a-z0-9']+")


def hashed_bag_of_words(texts: list[str], buckets: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """`EmbeddingBag` inputs of each text's words and word bigrams, hashed with a stable hash (crc32, not Python's
    salted `hash`) into `buckets`: flat ids, offsets, weights `1 / sqrt(number of terms)` (long and short statements
    give hidden activations of the same scale), and the number of ids. The buckets some text uses are renumbered
    0, 1, ...: the same model (colliding terms still share a row) without rows that no text can ever train."""
    hashed, offsets, weights = [], [], []
    for text in texts:
        words = _WORD.findall(text.lower())
        terms = words + [f"{a} {b}" for a, b in zip(words, words[1:])] or ["<empty>"]
        offsets.append(len(hashed))
        hashed += [zlib.crc32(term.encode("utf-8")) % buckets for term in terms]
        weights += [1.0 / math.sqrt(len(terms))] * len(terms)
    used, ids = np.unique(np.array(hashed, dtype=np.int64), return_inverse=True)
    return torch.from_numpy(ids.reshape(-1)), torch.tensor(offsets), torch.tensor(weights), len(used)


# -------------------------------------------------------------------------------------------------------- model


class StatementEncoder(nn.Module):
    """Standardised features of every statement at once, `[statements, d]`."""

    def __init__(self, variant: str, texts: list[str], d: int, args: ReferenceArguments, generator: torch.Generator):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"Unknown variant {variant!r}: expected one of {VARIANTS}.")
        self.variant = variant
        if variant in ("bow", "bow_id"):
            ids, offsets, weights, num_ids = hashed_bag_of_words(texts, args.hash_buckets)
            self.register_buffer("bag_ids", ids)
            self.register_buffer("bag_offsets", offsets)
            self.register_buffer("bag_weights", weights)
            self.bag = nn.EmbeddingBag(num_ids, args.hidden_size, mode="sum")
            self.bag_bias = nn.Parameter(torch.zeros(args.hidden_size))
            self.output = nn.Linear(args.hidden_size, d)
            with torch.no_grad():
                self.bag.weight.normal_(0, 1.0, generator=generator)
                self.output.weight.normal_(0, args.hidden_size**-0.5, generator=generator)
                self.output.bias.zero_()
        if variant == "free":
            self.statement_vectors = nn.Parameter(torch.randn(len(texts), d, generator=generator))
        elif variant == "bow_id":  # a residual on top of the words: it starts at zero
            self.statement_vectors = nn.Parameter(torch.zeros(len(texts), d))

    def forward(self) -> torch.Tensor:
        if self.variant == "free":
            raw = self.statement_vectors
        else:
            hidden = self.bag(self.bag_ids, self.bag_offsets, per_sample_weights=self.bag_weights) + self.bag_bias
            raw = self.output(nn.functional.gelu(hidden))
            if self.variant == "bow_id":
                raw = raw + self.statement_vectors
        return (raw - raw.mean(0)) / (raw.std(0) + 1e-5)


class ReferenceModel(nn.Module):
    """Statement encoder, `w_0`, and one offset per training participant; the last row of `offsets` stands for a
    participant without training pairs and, receiving no gradient but the prior's, stays at zero."""

    def __init__(self, encoder: StatementEncoder, participants: list[str], d: int, generator: torch.Generator):
        super().__init__()
        self.encoder = encoder
        self.participants = participants
        self.rows = {u: i for i, u in enumerate(participants)}
        self.population = nn.Parameter(torch.randn(d, generator=generator) * d**-0.5)
        self.offsets = nn.Parameter(torch.zeros(len(participants) + 1, d))

    def row_index(self, user_ids: list[str]) -> torch.Tensor:
        unknown = len(self.participants)
        return torch.tensor([self.rows.get(u, unknown) for u in user_ids])

    def margins(self, phi: torch.Tensor, pairs: Pairs, rows: torch.Tensor) -> torch.Tensor:
        # Through the [statements, rows] score matrix: one small product and two gathers, several times faster than
        # gathering a feature vector and a row per pair.
        scores = (phi @ (self.population + self.offsets).T).reshape(-1)
        width = len(self.offsets)
        return scores[pairs.chosen * width + rows] - scores[pairs.rejected * width + rows]

    @torch.no_grad()
    def trained_offsets(self) -> torch.Tensor:
        return self.offsets[:-1].detach().clone()


@dataclass
class Fit:
    model: ReferenceModel
    d: int
    offset_precision: float
    steps: int
    val_loss: float


def train_model(
    variant: str, texts: list[str], train: Pairs, val: Pairs, d: int, precision: float, args: ReferenceArguments,
    seed: int,
) -> Fit:  # fmt: skip
    """Full-batch AdamW on the training pairs, keeping the parameters of the lowest `val` loss (own rows)."""
    generator = torch.Generator().manual_seed(seed)
    participants = sorted(set(train.user_ids))
    model = ReferenceModel(StatementEncoder(variant, texts, d, args, generator), participants, d, generator)
    optimizer = torch.optim.AdamW(
        [
            {"params": list(model.encoder.parameters()), "weight_decay": args.weight_decay},
            # The rows have their own (Gaussian) prior: no decay on top of it.
            {"params": [model.population, model.offsets], "weight_decay": 0.0},
        ],
        lr=args.learning_rate,
    )
    train_rows, val_rows = model.row_index(train.user_ids), model.row_index(val.user_ids)
    best, best_loss, best_step, step = None, math.inf, 0, 0
    for step in range(1, args.max_steps + 1):
        margins = model.margins(model.encoder(), train, train_rows)
        prior = precision / 2 * model.offsets.pow(2).sum()
        loss = (nn.functional.softplus(-margins).sum() + prior) / len(train)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.eval_every == 0 or step == args.max_steps:
            with torch.no_grad():
                val_loss = nn.functional.softplus(-model.margins(model.encoder(), val, val_rows)).mean().item()
            if val_loss < best_loss:
                best, best_loss, best_step = copy.deepcopy(model.state_dict()), val_loss, step
            elif step - best_step >= args.patience:
                break
    model.load_state_dict(best)
    return Fit(model, d, precision, best_step, best_loss)


def select_model(variant: str, data: SplitData, args: ReferenceArguments, seed: int) -> tuple[Fit, list[dict]]:
    """Every (d, offset precision) of the grids, trained on `train` and scored on `val`: the best fit, and the grid."""
    train, val = data.parts["train"], data.parts["val"]
    best, grid = None, []
    for d in _ints(args.num_features):
        for precision in _floats(args.offset_precisions):
            fit = train_model(variant, data.texts, train, val, d, precision, args, seed)
            grid.append({"d": d, "offset_precision": precision, "steps": fit.steps, "val_loss": fit.val_loss})
            if best is None or fit.val_loss < best.val_loss:
                best = fit
    return best, grid


# --------------------------------------------------------------------------------------------------- adaptation


def adapt(x: torch.Tensor, mask: torch.Tensor, mean: torch.Tensor, prior) -> torch.Tensor:
    """MAP weights of every user from the pairs of `mask`, prior `N(mean, covariance)`: `prior` is an isotropic
    precision (a number, passed to `fit_user_weights` as is) or a covariance matrix. With `covariance = L L^T` and
    `w = L v`, the margins are `x . w = (x L) . v` and `v ~ N(L^-1 mean, I)`: the same exact solver on whitened
    features."""
    if not torch.is_tensor(prior):
        return fit_user_weights(x, mask, mean, prior)
    factor = torch.linalg.cholesky(prior.double())
    whitened_mean = torch.linalg.solve_triangular(factor, mean.double()[:, None], upper=False)[:, 0]
    v = fit_user_weights(x.double() @ factor, mask, whitened_mean, 1.0)
    return (v @ factor.T).to(x.dtype)


def shrunk_covariance(offsets: torch.Tensor, shrinkage: float, scale: float) -> torch.Tensor:
    """`scale * ((1 - shrinkage) S + shrinkage tr(S) / d I)`, `S` the offsets' second moment about zero (their prior
    mean: the spread of the rows around `w_0`)."""
    second_moment = offsets.double().T @ offsets.double() / len(offsets)
    d = second_moment.shape[0]
    isotropic = second_moment.trace() / d * torch.eye(d, dtype=torch.float64)
    return scale * ((1 - shrinkage) * second_moment + shrinkage * isotropic)


def _compact(x: torch.Tensor, mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (at most) k pairs a draw selects, moved to the front: the same fit on a `[users, k, d]` problem instead of
    the whole pool."""
    order = mask.argsort(dim=-1, descending=True, stable=True)[:, :k]
    return x.gather(1, order[..., None].expand(-1, -1, x.shape[-1])), mask.gather(1, order)


def choose_priors(fit: Fit, data: SplitData, args: ReferenceArguments, seed: int) -> dict:
    """Per k > 0 and prior family, the setting under which *pseudo-new* participants are best predicted: the training
    participants are cut into `prior_folds` folds; per fold, a model with the chosen `d` and offset precision is
    trained without that fold's participants, who are then adapted from k of their training pairs (features frozen,
    prior mean `w_0`, the same number of draws) and scored on their `val` pairs (mean accuracy per participant). Their
    own features never saw them, as a held-out participant's never did: adapting training participants on the final
    model instead flatters whichever prior trusts their (trained-on) pairs most. Only `train` and `val` are read."""
    train, val = data.parts["train"], data.parts["val"]
    participants = sorted(set(train.user_ids))
    fold_of = dict(zip(participants, np.random.default_rng(seed).permutation(len(participants)) % args.prior_folds))
    candidates = {
        "isotropic": [(p, p) for p in _floats(args.adaptation_precisions)],
        "covariance": [
            {"shrinkage": a, "scale": c}
            for a in _floats(args.covariance_shrinkages)
            for c in _floats(args.covariance_scales)
        ],
    }
    shots = [k for k in _ints(args.shots) if k > 0]
    # accuracy[family][k][candidate]: per-participant accuracies of every pseudo-new participant of every fold
    accuracy = {family: {k: [[] for _ in candidates[family]] for k in shots} for family in PRIORS}
    population = []
    for fold in range(args.prior_folds):
        seen = [fold_of[u] != fold for u in train.user_ids]
        fold_train = train.select(np.flatnonzero(seen))
        fold_val = val.select([i for i, u in enumerate(val.user_ids) if fold_of.get(u, -1) != fold])
        model = train_model(
            fit.model.encoder.variant, data.texts, fold_train, fold_val, fit.d, fit.offset_precision, args, seed
        ).model
        with torch.no_grad():
            phi, mean, offsets = model.encoder(), model.population.detach(), model.trained_offsets()
        users = sorted({u for u in val.user_ids if fold_of.get(u, -1) == fold})
        pool_x, pool_mask, _ = group_by_user(phi[train.chosen] - phi[train.rejected], train.user_ids, users)
        val_x, val_mask, _ = group_by_user(phi[val.chosen] - phi[val.rejected], val.user_ids, users)
        population.append(per_rater_accuracy(torch.einsum("upd,d->up", val_x, mean), val_mask))
        priors = {
            "isotropic": [p for _, p in candidates["isotropic"]],
            "covariance": [shrunk_covariance(offsets, c["shrinkage"], c["scale"]) for c in candidates["covariance"]],
        }
        for k, masks in draw_adaptation_sets(pool_mask, shots, args.num_draws, seed).items():
            compact = [_compact(pool_x, mask, k) for mask in masks]
            for family in PRIORS:
                for i, prior in enumerate(priors[family]):
                    per_draw = [
                        per_rater_accuracy(torch.einsum("upd,ud->up", val_x, adapt(x, m, mean, prior)), val_mask)
                        for x, m in compact
                    ]
                    accuracy[family][k][i].append(torch.stack(per_draw).mean(0))
    population = torch.cat(population)
    chosen, gains = {family: {} for family in PRIORS}, {family: {} for family in PRIORS}
    for family in PRIORS:
        for k in shots:
            scores = [torch.cat(a).nanmean().item() for a in accuracy[family][k]]
            best = int(np.argmax(scores))  # the first of equals
            setting = candidates[family][best]
            chosen[family][k] = setting[0] if family == "isotropic" else setting
            # The validation estimate of the gain over w_0 at this k, in points (per pseudo-new participant).
            gains[family][k] = 100 * (scores[best] - population.nanmean().item())
    return {"chosen": chosen, "validation_gain": gains, "pseudo_new_participants": int(population.numel())}


def prior_of(family: str, setting, offsets: torch.Tensor):
    if family == "isotropic":
        return float(setting)
    return shrunk_covariance(offsets, setting["shrinkage"], setting["scale"])


@torch.no_grad()
def evaluate_heldout(fit: Fit, priors: dict, data: SplitData, args: ReferenceArguments, seed: int) -> dict:
    """Held-out participants adapted as `polis_protocols.py` adapts them (same users' order, pools and draws), with
    each chosen prior; and `population_fit`, one logistic regression of all training pairs on the final features."""
    model = fit.model
    phi = model.encoder()
    adaptation, test, train = data.parts["heldout_adaptation"], data.parts["heldout_test"], data.parts["train"]
    users = sorted(set(test.user_ids))
    pool_x, pool_mask, _ = group_by_user(phi[adaptation.chosen] - phi[adaptation.rejected], adaptation.user_ids, users)
    test_x, test_mask, _ = group_by_user(phi[test.chosen] - phi[test.rejected], test.user_ids, users)
    draws = draw_adaptation_sets(pool_mask, _ints(args.shots), args.num_draws, seed)
    mean, offsets = model.population.detach(), model.trained_offsets()
    curves = {}
    for family in PRIORS:
        curves[family] = {}
        for k, masks in draws.items():
            # k = 0 adapts on no pair at all: the prior mean, whatever the prior.
            prior = prior_of(family, priors["chosen"][family][k], offsets) if k > 0 else 1.0
            per_draw = [
                per_rater_accuracy(torch.einsum("upd,ud->up", test_x, adapt(pool_x, mask, mean, prior)), test_mask)
                for mask in masks
            ]
            curves[family][k] = torch.stack(per_draw).mean(0).tolist()
    train_x = (phi[train.chosen] - phi[train.rejected])[None]
    population = fit_user_weights(train_x, None, torch.zeros_like(mean), 1.0)[0]
    population_fit = per_rater_accuracy(torch.einsum("upd,d->up", test_x, population), test_mask).tolist()
    return {
        "users": users,
        "pool_pairs": pool_mask.sum(-1).int().tolist(),
        "test_pairs": test_mask.sum(-1).int().tolist(),
        "curves": curves,
        "population_fit": population_fit,
    }


def run_variant(variant: str, data: SplitData, args: ReferenceArguments, seed: int) -> dict:
    """Selection, prior choice (training participants only), then the held-out evaluation of one variant."""
    start = time.time()
    fit, grid = select_model(variant, data, args, seed)
    priors = choose_priors(fit, data, args, seed)
    result = {
        "variant": variant,
        "d": fit.d,
        "offset_precision": fit.offset_precision,
        "steps": fit.steps,
        "val_loss": fit.val_loss,
        "grid": grid,
        "priors": priors,
    }
    result.update(evaluate_heldout(fit, priors, data, args, seed))
    result["seconds"] = time.time() - start
    return result


# ------------------------------------------------------------------------------------------------------ summary


def _mean_se(values: np.ndarray) -> tuple[float, float]:
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return math.nan, math.nan
    se = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else math.nan
    return float(values.mean()), se


def summarize(results: list[dict], shots: list[int], min_pool_pairs: int) -> dict:
    """Per variant, prior and subset (`all`, `pool>=N`), per split and over all splits (participants of every split
    together): per participant accuracy at k = 0 and the paired gain at each k (mean, s.e.), pooled accuracy over
    test pairs and its gain, and the population fit's accuracy."""
    summary = {}
    for variant in sorted({r["variant"] for r in results}, key=VARIANTS.index):
        runs = [r for r in results if r["variant"] == variant]
        for family in PRIORS:
            for subset in ("all", f"pool>={min_pool_pairs}"):
                for split in [*(str(r["seed"]) for r in runs), "mean"]:
                    chosen = runs if split == "mean" else [r for r in runs if str(r["seed"]) == split]
                    keep = [np.array(r["pool_pairs"]) >= (min_pool_pairs if subset != "all" else 0) for r in chosen]
                    weights = np.concatenate([np.array(r["test_pairs"])[m] for r, m in zip(chosen, keep)])
                    curve = {
                        k: np.concatenate([np.array(r["curves"][family][k])[m] for r, m in zip(chosen, keep)])
                        for k in shots
                    }
                    population_fit = np.concatenate([np.array(r["population_fit"])[m] for r, m in zip(chosen, keep)])
                    pooled = {k: float((curve[k] * weights).sum() / weights.sum()) for k in shots}
                    row = {
                        "participants": int(len(weights)),
                        "accuracy": {k: _mean_se(curve[k]) for k in shots},
                        "gain": {k: _mean_se(curve[k] - curve[0]) for k in shots if k > 0},
                        "pooled_accuracy": pooled,
                        "pooled_gain": {k: pooled[k] - pooled[0] for k in shots if k > 0},
                        "population_fit": _mean_se(population_fit),
                    }
                    if split != "mean":
                        (run,) = chosen
                        row.update(d=run["d"], offset_precision=run["offset_precision"], steps=run["steps"])
                        row["prior"] = {k: run["priors"]["chosen"][family][k] for k in shots if k > 0}
                        row["validation_gain"] = {
                            k: run["priors"]["validation_gain"][family][k] for k in shots if k > 0
                        }
                    summary.setdefault(variant, {}).setdefault(family, {}).setdefault(subset, {})[split] = row
    return summary


def _prior_text(family: str, prior: dict) -> str:
    if family == "isotropic":
        return "/".join(f"{p:g}" for p in prior.values())
    return "/".join(f"{p['shrinkage']:g},{p['scale']:g}" for p in prior.values())


def table_rows(summary: dict, shots: list[int], pooled: bool) -> tuple[list[str], list[list[str]]]:
    gains = [k for k in shots if k > 0]
    header = ["variant", "prior", "subset", "split", "d / prec. / steps", "users", "pop. fit", "k=0"]
    header += [f"+k={k}" for k in gains] + ["new-user prior per k", "val. gain per k"]
    rows = []
    for variant, families in summary.items():
        for family, subsets in families.items():
            for subset, splits in subsets.items():
                for split, row in splits.items():
                    setting = f"{row['d']} / {row['offset_precision']:g} / {row['steps']}" if "d" in row else ""
                    if pooled:
                        cells = [f"{100 * row['pooled_accuracy'][0]:.1f}"]
                        cells += [f"{100 * row['pooled_gain'][k]:+.1f}" for k in gains]
                    else:
                        cells = [f"{100 * row['accuracy'][0][0]:.1f}"]
                        cells += [f"{100 * row['gain'][k][0]:+.1f} ± {100 * row['gain'][k][1]:.1f}" for k in gains]
                    prior = _prior_text(family, row["prior"]) if "prior" in row else ""
                    estimate = "/".join(f"{g:+.1f}" for g in row["validation_gain"].values()) if "prior" in row else ""
                    population_fit = f"{100 * row['population_fit'][0]:.1f}"
                    rows.append(
                        [
                            variant,
                            family,
                            subset,
                            split,
                            setting,
                            str(row["participants"]),
                            population_fit,
                            *cells,
                            prior,
                            estimate,
                        ]
                    )
    return header, rows


def print_tables(summary: dict, shots: list[int]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=220)
    for pooled, title in ((False, "per participant (mean ± s.e., paired)"), (True, "pooled over test pairs")):
        header, rows = table_rows(summary, shots, pooled)
        table = Table(
            title=f"Polis tuned reference, held-out participants, {title}: accuracy at k=0 and gain (points)"
        )
        for column in header:
            table.add_column(column, justify="right")
        for row in rows:
            table.add_row(*row)
        console.print(table)


def markdown_tables(summary: dict, shots: list[int]) -> str:
    text = []
    for pooled, title in ((False, "Per participant (mean ± s.e., paired)"), (True, "Pooled over test pairs")):
        header, rows = table_rows(summary, shots, pooled)
        text += [f"{title}:", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        text += ["| " + " | ".join(row) + " |" for row in rows] + [""]
    return "\n".join(text)


def main(args: ReferenceArguments) -> dict:
    torch.set_num_threads(1)
    start = time.time()
    variants = args.variants.split(",")
    for variant in variants:
        if variant not in VARIANTS:
            raise ValueError(f"Unknown variant {variant!r}: expected one of {VARIANTS}.")
    shots = _ints(args.shots)
    if 0 not in shots:
        raise ValueError("`shots` must include 0: gains are measured over each variant's own k = 0.")
    results = []
    for seed in _ints(args.seeds):
        t = time.time()
        data = prepare_split(args, seed)
        print(f"split {seed}: data in {time.time() - t:.0f} s", flush=True)
        for variant in variants:
            result = {"seed": seed, **run_variant(variant, data, args, seed)}
            results.append(result)
            print(
                f"split {seed} {variant}: d={result['d']} offset precision {result['offset_precision']:g} "
                f"({result['steps']} steps), {result['seconds']:.0f} s",
                flush=True,
            )
    summary = summarize(results, shots, args.min_pool_pairs)
    print_tables(summary, shots)
    report = {"arguments": asdict(args), "summary": summary, "runs": results, "wall_seconds": time.time() - start}
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(report, f, indent=1, default=float)
    with open(os.path.join(args.output_dir, "table.md"), "w") as f:
        f.write(markdown_tables(summary, shots))
    print(f"wall time {report['wall_seconds']:.0f} s; {os.path.join(args.output_dir, 'results.json')}")
    return report


if __name__ == "__main__":
    (reference_args,) = HfArgumentParser(ReferenceArguments).parse_args_into_dataclasses()
    main(reference_args)
