import os
import sys


# The benchmark scripts are not a package: their tests import them by name (`import polis_protocols`).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from trl_rfm.data import POLIS_MANIFEST, default_polis_dir  # noqa: E402
from trl_rfm.testing import build_tiny_causal_lm, build_tokenizer, make_synthetic_preferences  # noqa: E402


def polis_data_missing(*conversations: str) -> str | None:
    """Why the real Polis data cannot be read (and how to get it), or None when the conversations' files are there.

    Only presence is checked here (the row counts are `tests/test_data_fetch.py`'s): a wrong copy should fail the
    tests that read it, not skip them."""
    data_dir = default_polis_dir()
    needed = [path for path in POLIS_MANIFEST.files if not conversations or path.split("/")[0] in conversations]
    missing = [path for path in needed if not os.path.isfile(os.path.join(data_dir, *path.split("/")))]
    if not missing:
        return None
    return (
        f"Polis data not found at {data_dir} (no {missing[0]}): run `trl-rfm data fetch polis` to fetch it there, or "
        "set TRL_RFM_POLIS_DIR to a copy (docs/datasets.md)"
    )


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "polis_data(*conversations): reads the real Polis data (default: all six conversations); skipped, saying "
        "how to fetch it, when absent",
    )


def pytest_collection_modifyitems(config, items):
    # A skip *mark* (not `pytest.skip` in a hook), so that `-rs` reports each skipped test at its own line.
    reasons = {}
    for item in items:
        marker = item.get_closest_marker("polis_data")
        if marker is None:
            continue
        if marker.args not in reasons:
            reasons[marker.args] = polis_data_missing(*marker.args)
        if reasons[marker.args]:
            item.add_marker(pytest.mark.skip(reason=reasons[marker.args]))


@pytest.fixture(scope="session")
def synthetic_strong():
    return make_synthetic_preferences(num_users=8, num_heldout_users=4, train_pairs_per_user=128, disagreement=1.0)


@pytest.fixture(scope="session")
def tokenizer(synthetic_strong):
    return build_tokenizer(synthetic_strong.vocabulary_texts())


@pytest.fixture
def tiny_lm(tokenizer):
    return build_tiny_causal_lm(tokenizer, seed=0)
