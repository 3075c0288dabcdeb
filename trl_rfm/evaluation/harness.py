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
and test parts before forming pairs: see [`trl_rfm.data.split_rated_items_for_evaluation`].
"""

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerBase
from trl import RewardConfig, RewardTrainer

from ..adaptation.features import compute_feature_differences, compute_score_head_input_differences, group_by_user
from ..adaptation.prior import isotropic_equivalent, prior_from_model, select_l2
from ..models.from_reward_model import score_head
from ..models.user_table import normalize_user_id
from ..trainer.rfm_config import RFMConfig
from ..trainer.rfm_trainer import RFMRewardTrainer
from .baselines import evaluate_id_rm, train, without_columns
from .plots import plot_accuracy_vs_k
from .protocol import accuracy_vs_k, draw_adaptation_sets, pairwise_accuracy, summarize_draws


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
    user_weights_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Learning rate of the RFM user table; unset: RFMConfig's default (1e-2)."},
    )
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
        plot_accuracy_vs_k(
            self.accuracy,
            self.shots,
            path,
            title or f"Held-out users ({self.num_heldout_users}), mean ± std over draws",
        )


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

    draws = None
    accuracy: dict[str, dict] = {}
    l2_used: dict[str, float] = {}

    def choose_l2(featurize, prior_mean, model_l2=None):
        if config.l2 == "model":
            if model_l2 is None:
                raise ValueError("`l2='model'` only applies to the RFM; use 'evidence' or a number.")
            return model_l2
        if config.l2 != "evidence":
            return float(config.l2)
        calibration, calibration_mask, _ = group_by_user(
            featurize(calibration_dataset), calibration_dataset[user_column]
        )
        return select_l2(calibration, calibration_mask, prior_mean).l2

    def heldout_features(featurize):
        """The held-out users' adaptation pools and test pairs, and the draws every method shares."""
        nonlocal draws
        pool = group_by_user(featurize(adaptation_dataset), adaptation_dataset[user_column], heldout_users)[:2]
        test = group_by_user(featurize(test_dataset), test_dataset[user_column], heldout_users)[:2]
        if draws is None:
            draws = draw_adaptation_sets(pool[1], shots, config.num_draws, config.seed)
        return pool, test

    def adapted_accuracy(method, pool, test, prior_mean, l2):
        l2_used[method] = isotropic_equivalent(l2)  # a number for the report, whatever the prior's shape
        per_draw = accuracy_vs_k(*pool, *test, prior_mean, l2, draws=draws)
        accuracy[method] = {str(k): summarize_draws(v) for k, v in per_draw.items()}

    if "rfm" in methods:
        log("Training the Reward Feature Model")
        rfm_options = dict(num_features=config.num_features)
        if config.user_weights_learning_rate is not None:
            rfm_options["user_weights_learning_rate"] = config.user_weights_learning_rate
        model = train(
            RFMRewardTrainer,
            RFMConfig,
            backbone,
            processing_class,
            without_columns(train_dataset, extra_columns),
            os.path.join(work_dir, "rfm"),
            config,
            **rfm_options,
            user_column=user_column,
        )

        def featurize(dataset):
            return compute_feature_differences(model, processing_class, dataset, show_progress=False)

        pool, test = heldout_features(featurize)
        prior_mean, model_l2 = prior_from_model(model)
        adapted_accuracy("rfm", pool, test, prior_mean, choose_l2(featurize, prior_mean, model_l2))
        del model

    if "bt" in methods or "linear" in methods:
        log("Training the non-adaptive Bradley-Terry reward model (trl.RewardTrainer)")
        bt_dataset = without_columns(train_dataset, [user_column, *extra_columns])
        model = train(
            RewardTrainer, RewardConfig, backbone, processing_class, bt_dataset, os.path.join(work_dir, "bt"), config
        )

        def featurize(dataset):
            return compute_score_head_input_differences(model, processing_class, dataset, show_progress=False)

        pool, test = heldout_features(featurize)
        head = score_head(model).weight[0].detach().float().cpu()
        if "bt" in methods:
            bt_accuracy = pairwise_accuracy(test[0] @ head, test[1])
            accuracy["bt"] = {str(k): summarize_draws([bt_accuracy]) for k in shots}
        if "linear" in methods:
            adapted_accuracy("linear", pool, test, head, choose_l2(featurize, head))
        del model

    if "id_rm" in methods:
        datasets = (train_dataset, adaptation_dataset, test_dataset)
        context = dict(user_column=user_column, extra_columns=extra_columns, work_dir=work_dir, log=log)
        accuracy["id_rm"] = evaluate_id_rm(
            backbone, processing_class, datasets, heldout_users, draws, config, **context
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
            margins, mask = group_by_user(margins, test_dataset[user_column], heldout_users)[:2]
            oracle_accuracy = pairwise_accuracy(margins[..., 0], mask)
            accuracy["oracle"] = {str(k): summarize_draws([oracle_accuracy]) for k in shots}

    return AdaptationEvaluationResult(
        shots=shots,
        accuracy=accuracy,
        l2=l2_used,
        num_heldout_users=len(heldout_users),
        num_test_pairs=len(test_dataset),
        config=asdict(config),
    )
