"""
Personalised rewards inside distributed RL engines that call a Python function in their own processes, scored exactly
as `trl-rfm serve` scores them (same engine, same tokenisation, micro-batched across the threads that call them):

- [`openrlhf`]: `reward_func(queries, prompts, labels)` for OpenRLHF's `--reward.remote_url <file.py>`;
- [`verl`]: `compute_score(data_source, solution_str, ground_truth, extra_info)` for verl's `custom_reward_function`.

Each process loads the model once ([`process_engine`]), from the `TRL_RFM_MODEL` environment variable (or the
function's keyword arguments).
"""
