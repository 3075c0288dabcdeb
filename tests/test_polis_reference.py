"""`benchmarks/polis_reference.py`, the tuned non-transformer reference: on planted raters of two opposed groups it
recovers them (new raters gain from k answers, under both new-user priors), every choice it makes is blind to the
held-out raters' answers, and on the shared Polis data (CC BY 4.0, The Computational Democracy Project; skipped when
absent) it uses `polis_protocols.py`'s split and participant order."""

import json
import os

import numpy as np
import polis_protocols
import polis_reference as reference
import pytest
import torch


DATA_DIR = os.environ.get("TRL_RFM_POLIS_DIR", polis_protocols.DEFAULT_DATA_DIR)
CONVERSATION = "15-per-hour-seattle"

# Small grids and few steps: the test is about behaviour, not about the tuned figures.
FAST = dict(
    num_features="4",
    offset_precisions="1,10",
    max_steps=150,
    eval_every=10,
    patience=50,
    hidden_size=16,
    learning_rate=5e-2,
    adaptation_precisions="1,10",
    covariance_shrinkages="0.5",
    covariance_scales="1,4",
    shots="0,5,20",
    num_draws=2,
    prior_folds=2,
)


def _planted_split(seed: int = 0) -> reference.SplitData:
    """Statements whose words show two hidden attributes: a divisive one (`alpha` / `beta`), on which two groups of
    raters hold opposite views, and a consensual one (`good` / `bad`) everybody agrees on; noise-free pairs."""
    generator = np.random.default_rng(seed)
    fillers = [f"filler{i}" for i in range(30)]
    divisive = generator.choice([-1.0, 1.0], size=60)
    consensual = generator.choice([-1.0, 1.0], size=60)
    texts = [
        " ".join(["alpha" if a > 0 else "beta", "good" if c > 0 else "bad", *generator.choice(fillers, size=3)])
        for a, c in zip(divisive, consensual)
    ]

    def pairs(raters: list[str], per_rater: int) -> reference.Pairs:
        chosen, rejected, users = [], [], []
        for rater in raters:
            group = 1.0 if int(rater[1:]) % 2 else -1.0
            utility = 2.0 * group * divisive + consensual
            while sum(u == rater for u in users) < per_rater:
                a, b = generator.choice(60, size=2, replace=False)
                if utility[a] == utility[b]:
                    continue
                if utility[a] < utility[b]:
                    a, b = b, a
                chosen.append(int(a))
                rejected.append(int(b))
                users.append(rater)
        return reference.Pairs(torch.tensor(chosen), torch.tensor(rejected), users)

    training, held_out = [f"t{i}" for i in range(40)], [f"h{i}" for i in range(16)]
    parts = {
        "train": pairs(training, 30),
        "val": pairs(training, 10),
        "heldout_adaptation": pairs(held_out, 30),
        "heldout_test": pairs(held_out, 20),
    }
    return reference.SplitData(texts, parts)


def _flip_heldout_answers(data: reference.SplitData) -> reference.SplitData:
    """The same split with every held-out answer reversed (chosen <-> rejected)."""
    parts = dict(data.parts)
    for name in ("heldout_adaptation", "heldout_test"):
        part = parts[name]
        parts[name] = reference.Pairs(part.rejected, part.chosen, part.user_ids)
    return reference.SplitData(data.texts, parts)


@pytest.mark.parametrize("variant", ["free", "bow_id"])
def test_planted_opposed_raters_are_recovered_by_adaptation(variant):
    torch.set_num_threads(1)
    args = reference.ReferenceArguments(**FAST)
    result = reference.run_variant(variant, _planted_split(), args, seed=0)
    assert result["users"] == sorted(set(_planted_split().parts["heldout_test"].user_ids))
    for family in reference.PRIORS:
        curves = {k: np.array(v) for k, v in result["curves"][family].items()}
        # The groups cancel for the population (it only knows the consensual attribute); 20 answers tell a rater's
        # group.
        assert (curves[20] - curves[0]).mean() > 0.15, (family, {k: v.mean() for k, v in curves.items()})
        assert curves[20].mean() > 0.9
    assert result["d"] == 4 and result["offset_precision"] in (1.0, 10.0)
    assert {row["offset_precision"] for row in result["grid"]} == {1.0, 10.0}


def test_choices_never_read_held_out_answers():
    """Reversing every held-out answer changes no choice (d, offset precision, stopping step, new users' priors) and
    mirrors the population's accuracy: the model is the same."""
    torch.set_num_threads(1)
    args = reference.ReferenceArguments(**FAST)
    data = _planted_split()
    original = reference.run_variant("bow", data, args, seed=0)
    flipped = reference.run_variant("bow", _flip_heldout_answers(data), args, seed=0)
    for key in ("d", "offset_precision", "steps", "val_loss", "grid", "priors"):
        assert flipped[key] == original[key], key
    for family in reference.PRIORS:
        assert np.allclose(np.array(flipped["curves"][family][0]), 1 - np.array(original["curves"][family][0]))
    assert np.allclose(np.array(flipped["population_fit"]), 1 - np.array(original["population_fit"]))


def test_covariance_prior_is_fitted_exactly_by_whitening():
    """`adapt` with a covariance equal to `I / precision` is `fit_user_weights` with that precision."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(5, 12, 3, generator=generator)
    mask = (torch.rand(5, 12, generator=generator) > 0.3).float()
    mean = torch.randn(3, generator=generator)
    isotropic = reference.adapt(x, mask, mean, 4.0)
    whitened = reference.adapt(x, mask, mean, torch.eye(3, dtype=torch.float64) / 4.0)
    assert torch.allclose(isotropic, whitened, atol=1e-4)


@pytest.mark.skipif(not os.path.isdir(os.path.join(DATA_DIR, CONVERSATION)), reason="no Polis data")
def test_polis_run_uses_the_protocol_split_and_participant_order(tmp_path):
    from trl_rfm.data import load_polis_votes, polis_evaluation_parts

    args = reference.ReferenceArguments(
        data_dir=DATA_DIR,
        conversations=CONVERSATION,
        max_users=120,
        seeds="0",
        variants="bow_id",
        output_dir=str(tmp_path),
        **{**FAST, "max_steps": 30, "shots": "0,5", "offset_precisions": "10"},
    )
    report = reference.main(args)
    # polis_protocols.py's participants, in its order: its per-participant lists pair with these.
    votes = load_polis_votes(DATA_DIR, [CONVERSATION])
    kept = set(sorted(set(votes["user_id"]))[:120])
    votes = votes.filter(lambda row: row["user_id"] in kept)
    parts = polis_evaluation_parts(votes, 0, max_train_pairs_per_user=200, **polis_protocols.HELD_OUT_SPLIT)
    users = sorted(set(parts["heldout_test"]["user_id"]))
    (run,) = report["runs"]
    assert run["users"] == users
    assert all(len(run["curves"][family][k]) == len(users) for family in reference.PRIORS for k in (0, 5))
    with open(tmp_path / "results.json") as f:
        saved = json.load(f)
    assert saved["runs"][0]["users"] == users
    row = saved["summary"]["bow_id"]["isotropic"]["all"]["mean"]
    assert row["participants"] == len(users) and 0 <= row["accuracy"]["0"][0] <= 1

    # Their adaptation pools, from which both benchmarks draw the same k pairs (`draw_adaptation_sets` on the pools'
    # mask, same seed).
    pools = parts["heldout_adaptation"]["user_id"]
    assert run["pool_pairs"] == [pools.count(u) for u in users]

    # A uniform subsample of the training pairs, nothing else changed.
    full = reference.prepare_split(args, 0)
    args.train_fraction = 0.5
    half = reference.prepare_split(args, 0)
    assert len(half.parts["train"]) == round(0.5 * len(full.parts["train"]))
    assert _triples(half.parts["train"]) <= _triples(full.parts["train"])
    assert _triples(half.parts["heldout_test"]) == _triples(full.parts["heldout_test"])


def _triples(pairs: reference.Pairs) -> set:
    return set(zip(pairs.chosen.tolist(), pairs.rejected.tolist(), pairs.user_ids))
