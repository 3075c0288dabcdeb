"""
Toys for tests, demos and benchmarks (public for downstream tests, not part of the top-level API): a word-level
tokenizer and tiny causal LMs built offline, synthetic raters who disagree, and the marker task of the policy examples.
"""

from .marker_task import (
    build_marker_policy,
    build_marker_tokenizer,
    make_marker_preferences,
    make_prompt_dataset,
    marker_users,
    prepare_marker_models,
    train_marker_reward_model,
)
from .ports import free_local_port
from .synthetic import SyntheticPreferences, make_synthetic_preferences
from .tiny_encoders import (
    build_encoder_tokenizer,
    build_tiny_encoder,
    pretrained_minilm_path,
    save_tiny_encoder,
)
from .tiny_models import build_tiny_causal_lm, build_tokenizer, quiet_cpu_args, save_tiny_causal_lm
