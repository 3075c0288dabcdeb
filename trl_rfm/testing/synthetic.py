"""
Synthetic multi-rater preferences with known ground truth.

Every response carries hidden binary attributes, written into its text as marker words ("concise", "funny", ...)
among filler words. Rater `u` scores a response by `v_u · a`, where `a` is its attribute vector and

    v_u = normalise((1 - disagreement) * c + disagreement * g_u),    g_u = normalise(pi_u @ P)

`c` is a direction every rater shares, `P` holds `num_groups` "opinion group" directions in opposed pairs and `pi_u` is the
rater's Dirichlet mixture over the groups. `disagreement=0` makes all raters identical (a personalised model can gain
nothing); `disagreement=1` makes them pure group mixtures (a single reward model averages them away).
"""

from dataclasses import dataclass

import numpy as np
from datasets import Dataset


ATTRIBUTE_WORDS = ("concise", "polite", "funny", "formal", "detailed", "technical", "friendly", "creative")
FILLER_WORDS = ("the", "answer", "is", "here", "we", "think", "maybe", "so", "well", "this", "that", "it")
TOPICS = ("cooking", "travel", "music", "science", "history", "sports", "movies", "gardening")


@dataclass
class SyntheticPreferences:
    """
    Attributes:
        train: pairs of the training raters, for training.
        test: other pairs of the same raters (disjoint responses), for their held-out accuracy.
        heldout: pairs of raters never seen in training, for few-shot adaptation.
        true_user_weights: the hidden preference vector `v_u` of every rater (training and held-out), by user id.
        attribute_words: the marker word of each attribute, in attribute order.
    """

    train: Dataset
    test: Dataset
    heldout: Dataset
    true_user_weights: dict[str, np.ndarray]
    attribute_words: tuple[str, ...]
    disagreement: float

    def vocabulary_texts(self) -> list[str]:
        """Every word the data can contain, for building a tokenizer that knows them all."""
        return [" ".join(ATTRIBUTE_WORDS + FILLER_WORDS), *(f"question about {t} ?" for t in TOPICS)]


def _response(attributes: np.ndarray, rng: np.random.Generator, attribute_words) -> str:
    words = [attribute_words[k] for k in np.flatnonzero(attributes)]
    words += list(rng.choice(FILLER_WORDS, size=rng.integers(2, 5)))
    rng.shuffle(words)
    return " ".join(words) + " ."


def _rater_preferences(num_raters, num_attributes, disagreement, num_groups, concentration, rng):
    common = rng.normal(size=num_attributes)
    common /= np.linalg.norm(common)
    # Opinion groups come in opposed pairs (g, -g): where raters disagree, they disagree in direction, so the average
    # rater - what a single reward model learns - is a poor stand-in for any of them.
    half = rng.normal(size=((num_groups + 1) // 2, num_attributes))
    groups = np.concatenate([half, -half])[:num_groups]  # [M, K]
    mixtures = rng.dirichlet(np.full(num_groups, concentration), size=num_raters)  # [U, M]
    individual = mixtures @ groups
    individual /= np.linalg.norm(individual, axis=1, keepdims=True)
    preferences = (1 - disagreement) * common + disagreement * individual
    return preferences / np.linalg.norm(preferences, axis=1, keepdims=True)  # [U, K]


def _pairs_for(user_id, preference, num_pairs, num_attributes, attribute_words, rng, beta):
    rows = []
    while len(rows) < num_pairs:
        a, b = rng.integers(0, 2, size=(2, num_attributes))
        margin = float(preference @ (a - b))
        if abs(margin) < 1e-6:
            continue  # a tie carries no preference
        prefers_a = margin > 0 if beta is None else rng.random() < 1.0 / (1.0 + np.exp(-beta * margin))
        chosen, rejected = (a, b) if prefers_a else (b, a)
        topic = TOPICS[rng.integers(len(TOPICS))]
        rows.append(
            {
                "prompt": f"question about {topic} ?",
                "chosen": _response(chosen, rng, attribute_words),
                "rejected": _response(rejected, rng, attribute_words),
                "user_id": user_id,
                "chosen_attributes": chosen.tolist(),
                "rejected_attributes": rejected.tolist(),
            }
        )
    return rows


def make_synthetic_preferences(
    num_users: int = 16,
    num_heldout_users: int = 8,
    train_pairs_per_user: int = 128,
    test_pairs_per_user: int = 32,
    heldout_pairs_per_user: int = 64,
    num_attributes: int = 6,
    disagreement: float = 1.0,
    num_groups: int = 4,
    concentration: float = 0.3,
    beta: float | None = None,
    seed: int = 0,
) -> SyntheticPreferences:
    """
    Generates preference pairs `{prompt, chosen, rejected, user_id}` (plus the attribute vectors of both responses)
    from raters with known preferences.

    Args:
        num_users: training raters (`user_0`, `user_1`, ...).
        num_heldout_users: raters kept out of training (`heldout_0`, ...), for adaptation.
        num_attributes: hidden attributes (at most 8), each shown by one marker word.
        disagreement: 0 (identical raters) to 1 (raters are mixtures of opposed opinion groups).
        num_groups: opinion groups; `concentration`: Dirichlet parameter of a rater's mix over groups (small: each
            rater close to one group).
        beta: Bradley-Terry inverse temperature of the labels; `None` labels by the true reward exactly.
    """
    if not 0.0 <= disagreement <= 1.0:
        raise ValueError(f"`disagreement` must be in [0, 1], got {disagreement}.")
    if not 1 <= num_attributes <= len(ATTRIBUTE_WORDS):
        raise ValueError(f"`num_attributes` must be in [1, {len(ATTRIBUTE_WORDS)}], got {num_attributes}.")
    rng = np.random.default_rng(seed)
    attribute_words = ATTRIBUTE_WORDS[:num_attributes]
    preferences = _rater_preferences(
        num_users + num_heldout_users, num_attributes, disagreement, num_groups, concentration, rng
    )
    user_ids = [f"user_{i}" for i in range(num_users)] + [f"heldout_{i}" for i in range(num_heldout_users)]
    true_user_weights = dict(zip(user_ids, preferences))

    def pairs(ids, n):
        rows = []
        for uid in ids:
            rows += _pairs_for(uid, true_user_weights[uid], n, num_attributes, attribute_words, rng, beta)
        return Dataset.from_list(rows)

    train_ids, heldout_ids = user_ids[:num_users], user_ids[num_users:]
    return SyntheticPreferences(
        train=pairs(train_ids, train_pairs_per_user).shuffle(seed=seed),
        test=pairs(train_ids, test_pairs_per_user),
        heldout=pairs(heldout_ids, heldout_pairs_per_user),
        true_user_weights=true_user_weights,
        attribute_words=attribute_words,
        disagreement=disagreement,
    )
