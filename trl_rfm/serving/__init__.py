"""
Serving a Reward Feature Model to RL engines: one process scores every user (one backbone pass for many users and
samples) and adds users online.

Modules: `arguments` (the options of `trl-rfm serve`), `protocol` (OpenRLHF's remote-reward protocol: labels, queries,
answers), `batching` (micro-batching across concurrent callers on one worker thread), `engine` (scoring and adding
users, thread-safe; also used in-process by `trl_rfm.integrations`), `security` (API key and body limit), `app` (the
FastAPI application and `serve`; needs the `serve` extra).
"""

from .arguments import EngineArguments, ServerArguments
from .engine import AdaptResult, RewardEngine, ScoreResult
