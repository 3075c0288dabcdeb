"""
Evaluation of few-shot adaptation on held-out users, against baselines trained on the same backbone and data.

Protocol (Barreto et al., 2025, Sec. 5): for every held-out user, fit on `k` of their comparisons (k in 0, 5, 10, 20,
50, 100; several random draws of the k pairs, the same draws for every method) and score accuracy on their test
comparisons. Methods:

- `rfm`: the Reward Feature Model, new users fitted by [`fit_user_weights`] on its frozen features;
- `bt`: a non-adaptive Bradley-Terry reward model (stock `trl.RewardTrainer`), the same for every k;
- `linear`: per-user logistic regression on the fixed features of that model (the hidden state its score head reads),
  with the prior centred on its score head: at k = 0 it *is* the `bt` model (the paper's "linear" baseline);
- `id_rm`: a reward model with the user id written in the prompt, trained by `trl.RewardTrainer`; a new user is
  adapted by fine-tuning it on the k comparisons of every held-out user (their ids in the prompts);
- `oracle`: the true preferences, on synthetic data.

Where the comparisons are derived from ratings or votes, split each user's *ratings* (not their pairs) into adaptation
and test parts before forming pairs: see [`split_rated_items_for_evaluation`].
"""

import copy
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerBase
from trl import RewardConfig, RewardTrainer

from .adaptation import fit_user_weights, prior_from_model, select_l2
from .feature_cache import compute_feature_differences, compute_score_head_input_differences, group_by_user, score_head
from .modeling_rfm import normalize_user_id
from .rfm_config import RFMConfig
from .rfm_trainer import RFMRewardTrainer


DEFAULT_SHOTS = (0, 5, 10, 20, 50, 100)
METHODS = ("rfm", "bt", "linear", "id_rm", "oracle")


@dataclass
class AdaptationEvaluationConfig:
    """
    What [`evaluate_adaptation`] runs; also the evaluation options of `trl-rfm evaluate`.
    """

    shots: str = field(default="0,5,10,20,50,100", metadata={"help": "Comma-separated k: pairs used to adapt a user."})
    num_draws: int = field(default=5, metadata={"help": "Random draws of each user's k adaptation pairs."})
    methods: str = field(
        default="rfm,bt,linear,id_rm,oracle",
        metadata={"help": f"Comma-separated methods among {', '.join(METHODS)} (oracle: synthetic data only)."},
    )
    l2: str = field(
        default="evidence",
        metadata={
            "help": "Prior precision of the adapted weights (rfm and linear): `evidence` (chosen by marginal "
            "likelihood on the calibration users), `model` (rfm: the spread of its training users' weights) or a number."
        },
    )
    num_features: int = field(default=8, metadata={"help": "Reward features d of the RFM."})
    num_train_epochs: float = field(default=12, metadata={"help": "Training epochs of every model."})
    learning_rate: float = field(default=3e-3, metadata={"help": "Learning rate of every model."})
    user_weights_learning_rate: float = field(default=3e-2, metadata={"help": "Learning rate of the RFM user table."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Training batch size of every model."})
    id_rm_adaptation_epochs: float = field(
        default=4, metadata={"help": "Epochs of fine-tuning id_rm on the held-out users' k pairs."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of training and of the draws."})

    @property
    def shot_list(self) -> list[int]:
        shots = sorted({int(k) for k in str(self.shots).split(",") if k.strip()})
        if not shots or shots[0] < 0:
            raise ValueError(f"`shots` must be non-negative integers, got {self.shots!r}.")
        return shots

    @property
    def method_list(self) -> list[str]:
        methods = [m.strip() for m in str(self.methods).split(",") if m.strip()]
        unknown = sorted(set(methods) - set(METHODS))
        if unknown or not methods:
            raise ValueError(f"Unknown method(s) {unknown} in `methods`; choose among {METHODS}.")
        return methods


@dataclass
class AdaptationEvaluationResult:
    """
    Attributes:
        shots: the k evaluated.
        accuracy: method -> str(k) -> `{"mean", "std", "draws"}` (accuracy per draw: mean over users of the fraction
            of their test pairs ranked right, ties counting 1/2).
        l2: the prior precision used per adaptive method.
        num_heldout_users, num_test_pairs: the size of the evaluation.
        config: the [`AdaptationEvaluationConfig`] as a dict.
    """

    shots: list[int]
    accuracy: dict[str, dict[str, dict]]
    l2: dict[str, float]
    num_heldout_users: int
    num_test_pairs: int
    config: dict

    def to_json(self, path: str | os.PathLike) -> None:
        with open(path, "w") as f:
            json.dump(asdict(self), f, indent=2)

    def plot(self, path: str | os.PathLike, title: str | None = None) -> None:
        """Accuracy against k (symlog axis, so k = 0 shows), mean ± std over draws, one line per method."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        labels = {
            "rfm": "RFM (adapted)",
            "bt": "Bradley-Terry RM (non-adaptive)",
            "linear": "linear on BT features",
            "id_rm": "user id in prompt",
            "oracle": "oracle (true weights)",
        }
        figure, axis = plt.subplots(figsize=(6.4, 4.2))
        for method, by_k in self.accuracy.items():
            ks = [k for k in self.shots if str(k) in by_k]
            mean = np.array([by_k[str(k)]["mean"] for k in ks])
            std = np.array([by_k[str(k)]["std"] for k in ks])
            style = {"linestyle": "--"} if method in ("bt", "oracle") else {"marker": "o"}
            (line,) = axis.plot(ks, mean, label=labels.get(method, method), **style)
            axis.fill_between(ks, mean - std, mean + std, color=line.get_color(), alpha=0.15)
        axis.set_xscale("symlog", linthresh=5)
        axis.set_xticks(self.shots)
        axis.set_xticklabels([str(k) for k in self.shots])
        axis.set_xlabel("k: comparisons of the new user used to adapt")
        axis.set_ylabel("accuracy on the user's test comparisons")
        axis.set_title(title or f"Held-out users ({self.num_heldout_users}), mean ± std over draws")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(path, dpi=120)
        plt.close(figure)


# ---------------------------------------------------------------------------------------------------- data splits
def split_pairs_by_user(
    dataset: Dataset, test_pairs_per_user: int, user_column: str = "user_id", seed: int = 0
) -> tuple[Dataset, Dataset]:
    """
    Splits each user's comparisons into an adaptation pool and `test_pairs_per_user` test comparisons, at random.
    Only for comparisons collected as pairs: for pairs derived from ratings, use
    [`split_rated_items_for_evaluation`], or shared items leak the test answers.
    """
    if test_pairs_per_user < 1:
        raise ValueError(f"`test_pairs_per_user` must be >= 1, got {test_pairs_per_user}.")
    rows: dict[str, list[int]] = {}
    for index, user_id in enumerate(dataset[user_column]):
        rows.setdefault(normalize_user_id(user_id), []).append(index)
    rng = np.random.default_rng(seed)
    pool, test = [], []
    for user_id, indices in rows.items():
        if len(indices) <= test_pairs_per_user:
            raise ValueError(
                f"User {user_id!r} has {len(indices)} comparisons: none left to adapt on after "
                f"{test_pairs_per_user} test pairs."
            )
        order = rng.permutation(indices).tolist()
        test += order[:test_pairs_per_user]
        pool += order[test_pairs_per_user:]
    return dataset.select(sorted(pool)), dataset.select(sorted(test))


def pairs_from_ratings(
    ratings: Dataset,
    user_column: str = "user_id",
    prompt_column: str = "prompt",
    response_column: str = "response",
    rating_column: str = "rating",
    item_column: str | None = None,
) -> Dataset:
    """
    Forms `{prompt, chosen, rejected, user_id}` pairs from per-item ratings: every two responses to the same prompt
    that a user rated differently (higher rating chosen; equal ratings give no pair). Adds `chosen_item` and
    `rejected_item` (the `item_column`, or the row index) so that leaks between parts can be checked.
    """
    required = (user_column, prompt_column, response_column, rating_column)
    missing = [c for c in required if c not in ratings.column_names]
    if missing:
        raise ValueError(f"Ratings lack the column(s) {missing}; their columns are {ratings.column_names}.")
    items = ratings[item_column] if item_column is not None else list(range(len(ratings)))
    groups: dict[tuple[str, str], list[int]] = {}
    for index, (user_id, prompt) in enumerate(zip(ratings[user_column], ratings[prompt_column])):
        groups.setdefault((normalize_user_id(user_id), json.dumps(prompt, sort_keys=True)), []).append(index)
    responses, scores, prompts = ratings[response_column], ratings[rating_column], ratings[prompt_column]
    columns = {"prompt": [], "chosen": [], "rejected": [], user_column: [], "chosen_item": [], "rejected_item": []}
    for (user_id, _), indices in groups.items():
        for a_position, a in enumerate(indices):
            for b in indices[a_position + 1 :]:
                if scores[a] == scores[b]:
                    continue
                chosen, rejected = (a, b) if scores[a] > scores[b] else (b, a)
                columns["prompt"].append(prompts[chosen])
                columns["chosen"].append(responses[chosen])
                columns["rejected"].append(responses[rejected])
                columns[user_column].append(user_id)
                columns["chosen_item"].append(items[chosen])
                columns["rejected_item"].append(items[rejected])
    return Dataset.from_dict(columns)


def split_rated_items_for_evaluation(
    ratings: Dataset,
    test_fraction: float = 0.5,
    seed: int = 0,
    user_column: str = "user_id",
    make_pairs: Callable[[Dataset], Dataset] | None = None,
) -> tuple[Dataset, Dataset]:
    """
    The leak-free split for comparisons derived from ratings or votes: each held-out user's *rated items* are split
    into an adaptation part and a test part, and pairs are formed inside each part only, so no test pair shares an
    item with an adaptation pair of the same user (a pair-level split lets a test pair give its answer away through
    a shared item: on Polis it inflates held-out accuracy from about 85% to about 98%).

    Args:
        ratings: one row per (user, rated item).
        test_fraction: fraction of each user's rated items kept for testing.
        make_pairs: ratings -> pairs; defaults to [`pairs_from_ratings`] with its default columns (pass
            `trl_rfm.data.polis.make_polis_pairs` for Polis votes).

    Returns:
        `(adaptation_pairs, test_pairs)`.
    """
    from .data.splits import split_items_per_user

    if not 0 < test_fraction < 1:
        raise ValueError(f"`test_fraction` must be in (0, 1), got {test_fraction}.")
    parts = split_items_per_user(
        ratings, {"adaptation": 1 - test_fraction, "test": test_fraction}, seed=seed, user_column=user_column
    )
    make_pairs = make_pairs or (lambda part: pairs_from_ratings(part, user_column=user_column))
    return make_pairs(parts["adaptation"]), make_pairs(parts["test"])


# ---------------------------------------------------------------------------------------------------- scoring
def draw_adaptation_sets(pool_mask: torch.Tensor, shots: Sequence[int], num_draws: int, seed: int = 0):
    """
    For each k, `num_draws` masks `[users, pool]` selecting k random pairs of each user's pool (all of them if the
    user has fewer); one draw for k = 0. Every method is fitted on the same draws.
    """
    generator = torch.Generator().manual_seed(seed)
    draws = {}
    for k in shots:
        masks = []
        for _ in range(num_draws if k > 0 else 1):
            scores = torch.rand(pool_mask.shape, generator=generator).masked_fill(pool_mask == 0, -1.0)
            ranks = scores.argsort(-1, descending=True).argsort(-1)
            masks.append(((ranks < k) & (pool_mask > 0)).float())
        draws[k] = masks
    return draws


def pairwise_accuracy(margins: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over users of the fraction of their pairs with a positive margin (ties count 1/2): `[users, pairs]`."""
    correct = (margins > 0).float() + 0.5 * (margins == 0).float()
    per_user = (correct * mask).sum(-1) / mask.sum(-1).clamp_min(1)
    has_pairs = mask.sum(-1) > 0
    return per_user[has_pairs].mean().item()


def linear_adaptation_accuracy(
    pool: torch.Tensor,
    test: torch.Tensor,
    test_mask: torch.Tensor,
    draws: Mapping[int, list[torch.Tensor]],
    prior_mean: torch.Tensor,
    l2: float,
) -> dict[int, list[float]]:
    """Accuracy on the test pairs of weights fitted on each draw of adaptation pairs (`[users, pairs, d]` features)."""
    accuracy = {}
    for k, masks in draws.items():
        accuracy[k] = []
        for mask in masks:
            weights = fit_user_weights(pool, mask, prior_mean, l2)
            accuracy[k].append(pairwise_accuracy(torch.einsum("upd,ud->up", test, weights), test_mask))
    return accuracy


def _summary(per_draw: Sequence[float]) -> dict:
    return {"mean": float(np.mean(per_draw)), "std": float(np.std(per_draw)), "draws": [float(a) for a in per_draw]}


def _grouped(differences: torch.Tensor, user_ids: Sequence, order: Sequence[str]):
    grouped, mask, seen = group_by_user(differences, user_ids)
    position = {u: i for i, u in enumerate(seen)}
    rows = [position[u] for u in order]
    return grouped[rows], mask[rows]


# ---------------------------------------------------------------------------------------------------- baselines
def add_user_id_to_prompt(dataset: Dataset, user_column: str = "user_id") -> Dataset:
    """The `id_rm` input: the user id written at the start of the prompt (a string prompt gets `"user <id> : "`
    before it; a conversational prompt gets a system message `"user <id>"`)."""
    if "prompt" not in dataset.column_names:
        raise ValueError("The id_rm baseline needs an explicit `prompt` column to write the user id into.")

    def add(example):
        user_id, prompt = normalize_user_id(example[user_column]), example["prompt"]
        if isinstance(prompt, str):
            return {"prompt": f"user {user_id} : {prompt}"}
        return {"prompt": [{"role": "system", "content": f"user {user_id}"}, *prompt]}

    return dataset.map(add)


@torch.no_grad()
def reward_margins(model, processing_class: PreTrainedTokenizerBase, dataset: Dataset, batch_size: int = 64):
    """`r(chosen) - r(rejected)` of a one-label sequence-classification reward model on every pair: `[pairs]`."""
    differences = compute_score_head_input_differences(
        model, processing_class, dataset, batch_size, show_progress=False
    )
    return differences @ score_head(model).weight[0].detach().float().cpu()  # the head's bias cancels


def _training_args(config_class, output_dir, config: AdaptationEvaluationConfig, **overrides):
    args = dict(
        output_dir=output_dir,
        num_train_epochs=config.num_train_epochs,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=64,
        learning_rate=config.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=20,
        logging_strategy="no",
        save_strategy="no",
        report_to="none",
        bf16=False,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
        seed=config.seed,
    )
    args.update(overrides)
    return config_class(**args)


def _without(dataset: Dataset, columns: Sequence[str]) -> Dataset:
    return dataset.remove_columns([c for c in columns if c in dataset.column_names])


# ---------------------------------------------------------------------------------------------------- the harness
def evaluate_adaptation(
    backbone: str,
    processing_class: PreTrainedTokenizerBase,
    train_dataset: Dataset,
    adaptation_dataset: Dataset,
    test_dataset: Dataset,
    config: AdaptationEvaluationConfig | None = None,
    calibration_dataset: Dataset | None = None,
    true_user_weights: Mapping[str, np.ndarray] | None = None,
    user_column: str = "user_id",
    output_dir: str | None = None,
    log: Callable[[str], None] = print,
) -> AdaptationEvaluationResult:
    """
    Trains the RFM and the baselines on `train_dataset` from the same `backbone`, adapts the held-out users of
    `adaptation_dataset` from k of their comparisons and scores them on `test_dataset`.

    Args:
        backbone: path or Hub id of the causal LM every model starts from.
        processing_class: its tokenizer.
        train_dataset: comparisons of the training users (`prompt`, `chosen`, `rejected`, `user_column`).
        adaptation_dataset: the held-out users' adaptation pool.
        test_dataset: the held-out users' test comparisons.
        calibration_dataset: comparisons of training users that were not trained on (e.g. their test split), on
            which `l2="evidence"` chooses the prior precision; defaults to `train_dataset`.
        true_user_weights: for the oracle on synthetic data: user id -> preference vector over the attributes in the
            `chosen_attributes`/`rejected_attributes` columns of `test_dataset`.
        output_dir: where the models are trained (a temporary folder if `None`).
    """
    config = config or AdaptationEvaluationConfig()
    shots, methods = config.shot_list, config.method_list
    work_dir = output_dir or tempfile.mkdtemp(prefix="trl-rfm-evaluate-")
    heldout_users = list(dict.fromkeys(normalize_user_id(u) for u in test_dataset[user_column]))
    pool_users = {normalize_user_id(u) for u in adaptation_dataset[user_column]}
    if not heldout_users:
        raise ValueError("The test dataset is empty.")
    missing = [u for u in heldout_users if u not in pool_users]
    if missing and max(shots) > 0:
        raise ValueError(f"Held-out user(s) {missing[:5]} have test pairs but no adaptation pairs.")
    train_users = {normalize_user_id(u) for u in train_dataset[user_column]}
    if train_users & set(heldout_users):
        raise ValueError(f"Users {sorted(train_users & set(heldout_users))[:5]} are both trained on and held out.")
    calibration_dataset = calibration_dataset if calibration_dataset is not None else train_dataset
    # Bookkeeping columns of synthetic or rating-derived pairs; the trainers must not see them.
    extra_columns = ("chosen_attributes", "rejected_attributes", "chosen_item", "rejected_item")

    def heldout_features(featurize):
        pool, pool_mask = _grouped(featurize(adaptation_dataset), adaptation_dataset[user_column], heldout_users)
        test, test_mask = _grouped(featurize(test_dataset), test_dataset[user_column], heldout_users)
        return pool, pool_mask, test, test_mask

    draws = None
    accuracy: dict[str, dict] = {}
    l2_used: dict[str, float] = {}

    def choose_l2(calibration, calibration_mask, prior_mean, model_l2=None):
        if config.l2 == "evidence":
            return select_l2(calibration, calibration_mask, prior_mean).l2
        if config.l2 == "model":
            if model_l2 is None:
                raise ValueError("`l2='model'` only applies to the RFM; use 'evidence' or a number.")
            return model_l2
        return float(config.l2)

    if "rfm" in methods:
        log("Training the Reward Feature Model")
        trainer = RFMRewardTrainer(
            model=backbone,
            args=_training_args(
                RFMConfig,
                os.path.join(work_dir, "rfm"),
                config,
                num_features=config.num_features,
                user_weights_learning_rate=config.user_weights_learning_rate,
                user_column=user_column,
            ),
            train_dataset=_without(train_dataset, extra_columns),
            processing_class=processing_class,
        )
        trainer.train()
        model = trainer.model

        def featurize(dataset):
            return compute_feature_differences(model, processing_class, dataset, show_progress=False)

        pool, pool_mask, test, test_mask = heldout_features(featurize)
        draws = draw_adaptation_sets(pool_mask, shots, config.num_draws, config.seed)
        prior_mean, model_l2 = prior_from_model(model)
        calibration, calibration_mask, _ = group_by_user(
            featurize(calibration_dataset), calibration_dataset[user_column]
        )
        l2_used["rfm"] = choose_l2(calibration, calibration_mask, prior_mean, model_l2)
        per_draw = linear_adaptation_accuracy(pool, test, test_mask, draws, prior_mean, l2_used["rfm"])
        accuracy["rfm"] = {str(k): _summary(v) for k, v in per_draw.items()}
        del trainer, model

    if "bt" in methods or "linear" in methods:
        log("Training the non-adaptive Bradley-Terry reward model (trl.RewardTrainer)")
        trainer = RewardTrainer(
            model=backbone,
            args=_training_args(RewardConfig, os.path.join(work_dir, "bt"), config),
            train_dataset=_without(train_dataset, [user_column, *extra_columns]),
            processing_class=processing_class,
        )
        trainer.train()
        model = trainer.model

        def featurize(dataset):
            return compute_score_head_input_differences(model, processing_class, dataset, show_progress=False)

        pool, pool_mask, test, test_mask = heldout_features(featurize)
        if draws is None:
            draws = draw_adaptation_sets(pool_mask, shots, config.num_draws, config.seed)
        head = score_head(model).weight[0].detach().float().cpu()
        if "bt" in methods:
            bt_accuracy = pairwise_accuracy(test @ head, test_mask)
            accuracy["bt"] = {str(k): _summary([bt_accuracy]) for k in shots}
        if "linear" in methods:
            calibration, calibration_mask, _ = group_by_user(
                featurize(calibration_dataset), calibration_dataset[user_column]
            )
            l2_used["linear"] = choose_l2(calibration, calibration_mask, head)
            per_draw = linear_adaptation_accuracy(pool, test, test_mask, draws, head, l2_used["linear"])
            accuracy["linear"] = {str(k): _summary(v) for k, v in per_draw.items()}
        del trainer, model

    if "id_rm" in methods:
        accuracy["id_rm"] = _evaluate_id_rm(
            backbone,
            processing_class,
            train_dataset,
            adaptation_dataset,
            test_dataset,
            heldout_users,
            draws,
            shots,
            config,
            user_column,
            extra_columns,
            work_dir,
            log,
        )

    if "oracle" in methods:
        if true_user_weights is None or "chosen_attributes" not in test_dataset.column_names:
            log("Skipping the oracle: it needs true user weights and attribute columns (synthetic data).")
        else:
            attributes = torch.tensor(test_dataset["chosen_attributes"], dtype=torch.float64) - torch.tensor(
                test_dataset["rejected_attributes"], dtype=torch.float64
            )
            weights = torch.tensor(
                np.stack([true_user_weights[normalize_user_id(u)] for u in test_dataset[user_column]])
            )
            margins = (attributes * weights).sum(-1, keepdim=True)  # true reward differences, [pairs, 1]
            margins, mask = _grouped(margins, test_dataset[user_column], heldout_users)
            oracle_accuracy = pairwise_accuracy(margins[..., 0], mask)
            accuracy["oracle"] = {str(k): _summary([oracle_accuracy]) for k in shots}

    return AdaptationEvaluationResult(
        shots=shots,
        accuracy=accuracy,
        l2=l2_used,
        num_heldout_users=len(heldout_users),
        num_test_pairs=len(test_dataset),
        config=asdict(config),
    )


def _evaluate_id_rm(
    backbone,
    processing_class,
    train_dataset,
    adaptation_dataset,
    test_dataset,
    heldout_users,
    draws,
    shots,
    config,
    user_column,
    extra_columns,
    work_dir,
    log,
):
    """Trains the id-in-prompt reward model, then for each k and draw fine-tunes a copy on the drawn pairs of all
    held-out users at once (their ids tell them apart) and scores their test pairs."""
    log("Training the user-id-in-prompt reward model (trl.RewardTrainer)")

    def with_ids(dataset):
        return _without(add_user_id_to_prompt(dataset, user_column), [user_column, *extra_columns])

    trainer = RewardTrainer(
        model=backbone,
        args=_training_args(RewardConfig, os.path.join(work_dir, "id_rm"), config),
        train_dataset=with_ids(train_dataset),
        processing_class=processing_class,
    )
    trainer.train()
    base_model = trainer.model
    test = with_ids(test_dataset)
    _, test_mask = _grouped(torch.zeros(len(test_dataset), 1), test_dataset[user_column], heldout_users)

    def score(model):
        margins = reward_margins(model, processing_class, test)
        grouped, _ = _grouped(margins[:, None], test_dataset[user_column], heldout_users)
        return pairwise_accuracy(grouped[..., 0], test_mask)

    # Rows of the adaptation pool in the [users, pool] layout of the draws.
    pool_users = [normalize_user_id(u) for u in adaptation_dataset[user_column]]
    rows_of_user: dict[str, list[int]] = {}
    for row, user_id in enumerate(pool_users):
        rows_of_user.setdefault(user_id, []).append(row)
    pool = with_ids(adaptation_dataset)
    results = {}
    for k in shots:
        if k == 0:
            results[str(k)] = _summary([score(base_model)])
            continue
        if draws is None:
            raise ValueError("id_rm alone cannot draw adaptation sets; evaluate it with rfm, bt or linear.")
        per_draw = []
        for mask in draws[k]:
            selected = [
                rows_of_user[user_id][p]
                for u, user_id in enumerate(heldout_users)
                for p in mask[u].nonzero()[:, 0].tolist()
            ]
            log(f"  id_rm: fine-tuning on k = {k} pairs per held-out user")
            model = copy.deepcopy(base_model)
            steps_per_epoch = max(1, -(-len(selected) // config.per_device_train_batch_size))
            fine_tuner = RewardTrainer(
                model=model,
                args=_training_args(
                    RewardConfig,
                    os.path.join(work_dir, "id_rm_adapt"),
                    config,
                    num_train_epochs=config.id_rm_adaptation_epochs,
                    warmup_steps=0,
                    lr_scheduler_type="constant",
                    max_steps=int(np.ceil(steps_per_epoch * config.id_rm_adaptation_epochs)),
                ),
                train_dataset=pool.select(selected),
                processing_class=processing_class,
            )
            fine_tuner.train()
            per_draw.append(score(fine_tuner.model))
        results[str(k)] = _summary(per_draw)
    return results
