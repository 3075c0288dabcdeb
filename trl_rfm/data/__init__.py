"""Loaders mapping multi-rater preference datasets onto canonical pairwise rows.

Every loader returns a `datasets.Dataset` with `prompt`, `chosen`, `rejected` (TRL's standard or conversational
preference format) and `user_id` (the rater), optionally `margin`, plus a few source-specific columns. Each reads its
upstream data with `datasets.load_dataset` from a Hub id or a local copy (same code path).

| Source | Loader | Rater |
| --- | --- | --- |
| Polis votes (CC BY 4.0) | [`load_polis`] | `"<conversation>:<voter-id>"` |
| PRISM | [`load_prism`] | participant `user_id` |
| summarize-from-feedback | [`load_summarize_from_feedback`] | labeller `worker` |
| PersonalLLM | [`load_personal_llm`] | simulated Dirichlet mixture of reward models |
| UltraFeedback-P (VPL) | [`load_ultrafeedback_p`] | user type `attributes` |

Pairs derived from per-item judgements share items; split per user *items* with [`split_items_per_user`] (Polis:
[`split_polis_votes`]) before forming pairs, and users with [`split_users`]; [`pairs_from_ratings`] forms the pairs and
[`split_rated_items_for_evaluation`] does both for an evaluation. [`load_data_file`] reads a local JSON/JSONL/CSV/Parquet
file of comparisons. The Polis evaluations' parts (participants, statements and votes split before pairs) come from
[`polis_evaluation_parts`] and [`polis_unseen_statement_parts`]. The Polis conversations come from a git repository, not the Hub:
[`fetch_polis`] (`trl-rfm data fetch polis`) fetches and checks them, into [`default_polis_dir`] by default.
"""

from .fetch import POLIS_MANIFEST, DataManifest, check_data_files, default_polis_dir, fetch_data, fetch_polis
from .pairs import pairs_from_ratings, split_pairs_by_user, split_rated_items_for_evaluation
from .personal_llm import (
    PERSONAL_LLM_REWARD_MODELS,
    detect_reward_models,
    load_personal_llm,
    sample_personal_llm_users,
)
from .polis import (
    POLIS_ATTRIBUTION,
    list_polis_conversations,
    load_polis,
    load_polis_votes,
    make_polis_pairs,
    read_polis_topic,
    split_polis_votes,
)
from .polis_parts import (
    add_statement_ids,
    index_polis_statements,
    polis_evaluation_parts,
    polis_unseen_statement_parts,
    split_polis_statements,
)
from .prism import load_prism, prism_turn_pairs
from .raw import CANONICAL_COLUMNS, load_data_file, load_raw_split, require_columns
from .splits import sample_users, split_items_per_user, split_users
from .summarize_from_feedback import load_summarize_from_feedback, tldr_prompt
from .ultrafeedback_p import ULTRAFEEDBACK_P_ATTRIBUTES, load_ultrafeedback_p


__all__ = [
    "CANONICAL_COLUMNS",
    "PERSONAL_LLM_REWARD_MODELS",
    "POLIS_ATTRIBUTION",
    "POLIS_MANIFEST",
    "ULTRAFEEDBACK_P_ATTRIBUTES",
    "DataManifest",
    "add_statement_ids",
    "check_data_files",
    "default_polis_dir",
    "detect_reward_models",
    "fetch_data",
    "fetch_polis",
    "index_polis_statements",
    "list_polis_conversations",
    "load_data_file",
    "load_personal_llm",
    "load_polis",
    "load_polis_votes",
    "load_prism",
    "load_raw_split",
    "load_summarize_from_feedback",
    "load_ultrafeedback_p",
    "make_polis_pairs",
    "pairs_from_ratings",
    "polis_evaluation_parts",
    "polis_unseen_statement_parts",
    "prism_turn_pairs",
    "read_polis_topic",
    "require_columns",
    "sample_personal_llm_users",
    "sample_users",
    "split_items_per_user",
    "split_pairs_by_user",
    "split_polis_statements",
    "split_polis_votes",
    "split_rated_items_for_evaluation",
    "split_users",
    "tldr_prompt",
]
