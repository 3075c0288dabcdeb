"""
verl's custom reward function: `custom_reward_function.path` set to this file (`name: compute_score`). verl calls it
once per response with the decoded response as `solution_str` and the dataset row's `extra_info`, which must carry the
user (`extra_info["user_id"]`) and the prompt (`extra_info["prompt"]`: text or a list of messages, as in the
row's `prompt` column; verl does not pass the prompt otherwise). The reward is that of `POST /score` of
`trl-rfm serve` for the same prompt, response and user.

The model comes from `custom_reward_function.reward_kwargs` (`model_name_or_path`, and optionally `device`, `dtype`,
`unknown_users`, `batch_size`, `max_length`) or from the `TRL_RFM_*` environment variables; it is loaded once per
process. verl may execute the file by path, outside its package: its imports are absolute.
"""

from trl_rfm.integrations.process_engine import process_engine
from trl_rfm.serving.arguments import EngineArguments


_OPTIONS = tuple(field.name for field in EngineArguments.__dataclass_fields__.values())


def compute_score(
    data_source=None, solution_str: str = "", ground_truth=None, extra_info: dict | None = None, **kwargs
):
    """The reward of `solution_str` (the response) to `extra_info["prompt"]` for the user `extra_info["user_id"]`, a
    float. `data_source` and `ground_truth` are not used; keyword arguments other than the engine's options (verl
    passes a few of its own) are ignored."""
    extra_info = extra_info or {}
    for key in ("user_id", "prompt"):
        if extra_info.get(key) is None:
            raise KeyError(
                f"extra_info[{key!r}] is missing: put each row's user id and prompt into its `extra_info` column "
                f"(extra_info keys here: {sorted(extra_info)[:10]})."
            )
    prompt = extra_info["prompt"]
    if not isinstance(prompt, str):
        # Conversations read back from Parquet are numpy arrays of messages.
        prompt = [dict(message) for message in prompt]
    engine = process_engine(**{key: value for key, value in kwargs.items() if key in _OPTIONS})
    return engine.score([prompt], [solution_str], [extra_info["user_id"]]).rewards[0]
