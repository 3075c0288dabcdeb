"""
How a Reward Feature Model lives on disk and on the Hub.

A saved model is an ordinary transformers (full) or PEFT (LoRA) directory plus one file of personal data:

    config.json                  RewardFeatureConfig; `num_users` is written as 0: users live in the user file
    model.safetensors            trunk + feature head + population weights          (full models)
    adapter_config.json          PEFT config; base = the causal-LM trunk             (LoRA models)
    adapter_model.safetensors    LoRA + feature head + population weights            (LoRA models)
    user_weights.safetensors     the user table and the users' ids (see `user_weights_file`)   optional, private
    README.md                    model card

Without the user file the directory is a complete population model (it scores everyone with `w_pop` and adapts new
users), which is what `push_to_hub` uploads by default, its `config.json` saying that the users were withheld: loading
it then takes `user_weights=False`, so that users are never dropped without a word.

Modules: `user_weights_file` (the user file), `feature_head` (locating and fingerprinting the head of a saved model),
`directory` (atomic staging), `save_load` (save and load), `hub` (upload), `model_card`.
"""

from .hub import mark_users_withheld, push_to_hub, uploads_withholding_users
from .model_card import build_model_card, personalize_model_card
from .save_load import save_reward_feature_model
from .user_weights_file import (
    USER_WEIGHTS_NAME,
    UserWeightsFile,
    UserWeightsFileError,
    feature_fingerprint,
    load_user_weights,
    save_user_weights,
)
