"""One [`RewardEngine`] per process and set of options, loaded on first use: the integrations' functions are called
once per sample, from many threads, and must not load the model more than once."""

import dataclasses
import threading

from trl_rfm.serving.arguments import EngineArguments
from trl_rfm.serving.engine import RewardEngine


_ENGINES: dict[tuple, RewardEngine] = {}
_LOCK = threading.Lock()


def process_engine(**overrides) -> RewardEngine:
    """The engine of this process for the options read from `TRL_RFM_*` environment variables (see
    [`EngineArguments.from_environment`]), `overrides` (non-`None` values) taking precedence."""
    args = EngineArguments.from_environment(**overrides)
    key = tuple(sorted(dataclasses.asdict(args).items()))
    with _LOCK:  # threads calling at once for the first time load one engine, not one each
        engine = _ENGINES.get(key)
        if engine is None:
            engine = _ENGINES[key] = RewardEngine.from_arguments(args)
    return engine
