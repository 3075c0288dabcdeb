"""
Does the personalised reward steer a policy? Two users with opposite tastes about a marker word ("funny"): user
`likes_funny` rewards it, `avoids_funny` penalises it. One tiny Reward Feature Model is trained on their comparisons;
then, from the same tiny random policy, one short GRPO run per user with `PersonalizedReward(user_id=...)`.

Before and after each run, the policy's samples are scored: the fraction of completions containing the marker and the
user's own mean reward. Expected: each user's reward of their own policy's samples rises, and the marker rate moves up
for `likes_funny` and down for `avoids_funny`. Prints a table; `--figure` saves the reward curves and marker rates.

    python benchmarks/steering_grpo.py --figure docs/figures/steering_grpo.png      # about 3 minutes on 2 CPU cores
"""

import json
import os
import tempfile
from dataclasses import dataclass, field


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from transformers import HfArgumentParser  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from trl_rfm import PersonalizedReward, sample_candidates  # noqa: E402
from trl_rfm.testing.marker_task import (  # noqa: E402
    MARKER_WORD,
    build_marker_policy,
    build_marker_tokenizer,
    make_prompt_dataset,
    marker_users,
    train_marker_reward_model,
)


@dataclass
class SteeringArguments:
    max_steps: int = field(default=60, metadata={"help": "GRPO steps per user."})
    learning_rate: float = field(default=2e-3, metadata={"help": "GRPO learning rate."})
    batch_size: int = field(default=16, metadata={"help": "Completions per GRPO step."})
    num_generations: int = field(default=8, metadata={"help": "Completions per prompt (GRPO group size)."})
    max_completion_length: int = field(default=8, metadata={"help": "Tokens per completion."})
    eval_samples_per_prompt: int = field(default=16, metadata={"help": "Samples per prompt to measure the policy."})
    seed: int = field(default=0, metadata={"help": "Seed of the reward model, the policy and sampling."})
    figure: str | None = field(default=None, metadata={"help": "Where to save the figure (png)."})
    results: str | None = field(default=None, metadata={"help": "Where to save the numbers (json)."})


@torch.no_grad()
def measure(policy, tokenizer, reward, user, prompts, samples_per_prompt, max_new_tokens, seed):
    """Marker rate and the user's mean reward over fresh samples of `policy`."""
    torch.manual_seed(seed)
    candidates = sample_candidates(
        policy, tokenizer, prompts, num_candidates=samples_per_prompt, max_new_tokens=max_new_tokens, batch_size=8
    )
    flat_prompts = [p for p, options in zip(prompts, candidates) for _ in options]
    flat = [c for options in candidates for c in options]
    marker_rate = sum(MARKER_WORD in c.split() for c in flat) / len(flat)
    own_reward = reward.score(flat_prompts, flat, [user] * len(flat)).mean().item()
    return {"marker_rate": marker_rate, "reward": own_reward}


def main(args: SteeringArguments) -> dict:
    tokenizer = build_marker_tokenizer()
    work = tempfile.mkdtemp(prefix="steering-")
    rfm = train_marker_reward_model(tokenizer, os.path.join(work, "rfm"), seed=args.seed)
    eval_prompts = make_prompt_dataset(num_prompts=8)["prompt"]
    results = {}
    for user in marker_users():
        reward = PersonalizedReward(rfm, tokenizer, user_id=user)
        policy = build_marker_policy(tokenizer, seed=args.seed)
        before = measure(policy, tokenizer, reward, user, eval_prompts, args.eval_samples_per_prompt,
                         args.max_completion_length, args.seed)  # fmt: skip
        training_args = GRPOConfig(
            output_dir=os.path.join(work, user),
            max_steps=args.max_steps,
            learning_rate=args.learning_rate,
            per_device_train_batch_size=args.batch_size,
            num_generations=args.num_generations,
            max_completion_length=args.max_completion_length,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            bf16=False,
            use_cpu=True,
            disable_tqdm=True,
            seed=args.seed,
        )
        trainer = GRPOTrainer(
            model=policy,
            reward_funcs=reward,
            args=training_args,
            train_dataset=make_prompt_dataset([user], num_prompts=256),
            processing_class=tokenizer,
        )
        trainer.train()
        curve = [entry[f"rewards/{reward.__name__}/mean"] for entry in trainer.state.log_history if "reward" in entry]
        after = measure(trainer.model, tokenizer, reward, user, eval_prompts, args.eval_samples_per_prompt,
                        args.max_completion_length, args.seed + 1)  # fmt: skip
        results[user] = {"before": before, "after": after, "training_reward": curve}

    table = Table(title=f"GRPO per user, {args.max_steps} steps, marker word {MARKER_WORD!r}")
    for column in ("user", "own reward before", "after", f"'{MARKER_WORD}' rate before", "after"):
        table.add_column(column, justify="right")
    for user, r in results.items():
        table.add_row(
            user,
            f"{r['before']['reward']:+.2f}",
            f"{r['after']['reward']:+.2f}",
            f"{r['before']['marker_rate']:.0%}",
            f"{r['after']['marker_rate']:.0%}",
        )
    Console().print(table)
    if args.results:
        with open(args.results, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)
    if args.figure:
        save_figure(results, args.figure)
    return results


def save_figure(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves, rates) = plt.subplots(1, 2, figsize=(10, 3.6))
    for user, r in results.items():
        curve = torch.tensor(r["training_reward"])
        smooth = torch.nn.functional.avg_pool1d(curve[None, None], 5, 1, 2, count_include_pad=False)[0, 0]
        curves.plot(smooth.numpy(), label=user)
    curves.set(xlabel="GRPO step", ylabel="user's own reward (batch mean, smoothed)", title="Training reward")
    curves.legend()
    users = list(results)
    width = 0.35
    for i, stage in enumerate(("before", "after")):
        rates.bar([u + i * width for u in range(len(users))], [results[u][stage]["marker_rate"] for u in users],
                  width, label=stage)  # fmt: skip
    rates.set_xticks([u + width / 2 for u in range(len(users))], users)
    rates.set(ylabel=f"completions containing '{MARKER_WORD}'", title="Policy samples before / after")
    rates.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    (steering_args,) = HfArgumentParser(SteeringArguments).parse_args_into_dataclasses()
    main(steering_args)
