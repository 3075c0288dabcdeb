import os
import sys


# The benchmark scripts are not a package: their tests import them by name (`import polis_protocols`).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from trl_rfm.testing import build_tiny_causal_lm, build_tokenizer, make_synthetic_preferences  # noqa: E402


@pytest.fixture(scope="session")
def synthetic_strong():
    return make_synthetic_preferences(num_users=8, num_heldout_users=4, train_pairs_per_user=128, disagreement=1.0)


@pytest.fixture(scope="session")
def tokenizer(synthetic_strong):
    return build_tokenizer(synthetic_strong.vocabulary_texts())


@pytest.fixture
def tiny_lm(tokenizer):
    return build_tiny_causal_lm(tokenizer, seed=0)
