"""`benchmarks/polis_protocols.py` (the protocol-robustness benchmark) end to end on one conversation of the
shared Polis data (CC BY 4.0, The Computational Democracy Project; skipped when absent), 60 participants: both models
are trained on the same split, the RFM with the library's defaults, and the summary holds paired per-rater gains."""

import math
import os

import numpy as np
import polis_protocols
import pytest

from trl_rfm.data import default_polis_dir


DATA_DIR = default_polis_dir()


@pytest.mark.polis_data("15-per-hour-seattle")
def test_summary_pairs_each_raters_rfm_accuracy_with_the_rm(tmp_path):
    args = polis_protocols.ProtocolArguments(
        data_dir=DATA_DIR,
        conversations="15-per-hour-seattle",
        max_users=60,
        protocols="h16_e1_b8_lr3e-3",
        seeds="0",
        max_train_pairs_per_user=8,
        shots="0,5",
        num_draws=2,
        num_workers=1,
        output_dir=str(tmp_path),
        prior_precisions="1e9",
        best_of="4",
    )
    report = polis_protocols.main(args)
    row = report["summary"]["h16_e1_b8_lr3e-3"]
    rfm = next(job for job in report["jobs"] if job["method"] == "rfm")
    rm = next(job for job in report["jobs"] if job["method"] == "rm")
    assert rfm["users"] == rm["users"] and len(rm["accuracy"]) == len(rm["users"]) > 0
    gains = np.array(rfm["curves"][5]) - np.array(rm["accuracy"])
    assert math.isclose(row["gain_k5"][0], float(np.nanmean(gains)), abs_tol=1e-9)
    assert row["splits"] == 1 and 0 <= row["rm_accuracy"][0] <= 1
    assert 1 <= row["effective_dimension"] <= 32
    # An infinitely strong prior keeps every new participant on the population: its k = 5 curve is the k = 0 one, and
    # the summary pairs it with the same draws adapted with `prior_from_model`'s precision.
    assert rfm["curves_by_prior"][1e9][5] == pytest.approx(rfm["curves"][0])
    over_model_prior = np.array(rfm["curves_by_prior"][1e9][5]) - np.array(rfm["curves"][5])
    assert row["gain_over_model_prior"][1e9][5][0] == pytest.approx(float(np.nanmean(over_model_prior)))
    assert os.path.isfile(tmp_path / "results.json")
    # The isotropic prior of equal spread shares the population (k = 0) and is paired with the fitted one.
    assert rfm["curves_isotropic"][0] == pytest.approx(rfm["curves"][0])
    isotropic_change = np.array(rfm["curves_isotropic"][5]) - np.array(rfm["curves"][5])
    assert row["isotropic_minus_shaped"][5][0] == pytest.approx(float(np.nanmean(isotropic_change)))
    # Best-of-4: rates in [0, 1] on the same statement sets for both rewards, paired per participant.
    rm_rates, rfm_rates = np.array(rm["best_of_n"][4]), np.array(rfm["best_of_n"][4][0])
    assert np.array_equal(np.isnan(rm_rates), np.isnan(rfm_rates)) and (~np.isnan(rm_rates)).any()
    assert np.nanmin(rm_rates) >= 0 and np.nanmax(rm_rates) <= 1
    assert row["best_of_n"][4]["gain_k0"][0] == pytest.approx(float(np.nanmean(rfm_rates - rm_rates)))

    # Splits run apart and merged summarise as one run: the same split twice counts once, with the same gains.
    merged = polis_protocols.main(
        polis_protocols.ProtocolArguments(
            merge=str(tmp_path / "results.json"), shots="0,5", output_dir=str(tmp_path / "merged")
        )
    )
    assert merged["summary"]["h16_e1_b8_lr3e-3"]["gain_k5"] == pytest.approx(row["gain_k5"])
    assert merged["summary"]["h16_e1_b8_lr3e-3"]["best_of_n"][4]["rm"] == pytest.approx(row["best_of_n"][4]["rm"])
    table = (tmp_path / "merged" / "table.md").read_text()
    assert f"{100 * row['gain_k5'][0]:+.1f} ± {100 * row['gain_k5'][1]:.1f}" in table.splitlines()[2]


def test_a_malformed_protocol_is_named():
    with pytest.raises(ValueError, match="h64_e1"):
        polis_protocols.main(polis_protocols.ProtocolArguments(protocols="h64_e1"))
