"""
OpenRLHF's file route for rewards: `--reward.remote_url <this file>` makes OpenRLHF load `reward_func` from it and call
`reward_func(queries, prompts, labels)` in its rollout processes, which is scored exactly like `POST /get_reward` of
`trl-rfm serve` (each query's user from its label; see `trl_rfm.serving.protocol`).

    export TRL_RFM_MODEL=/path/to/my-rfm          # read once per process
    --reward.remote_url "$(python -c 'import trl_rfm.integrations.openrlhf as m; print(m.__file__)')" \
    --data.label_key user_id

OpenRLHF executes the file by path, outside its package: its imports are absolute.
"""

from trl_rfm.integrations.process_engine import process_engine
from trl_rfm.serving.protocol import openrlhf_answer


def reward_func(queries: list[str], prompts: list[str], labels: list) -> dict:
    """Rewards of OpenRLHF queries (decoded prompt + response) for the users of their labels (a plain user id, or an
    object with a `user_id` key): `{"rewards", "scores", "extra_logs"}` as OpenRLHF reads it. `prompts` are not
    needed: each query holds its prompt."""
    result = process_engine().score_queries(queries, labels)
    return openrlhf_answer(result.rewards, result.population_rewards)
