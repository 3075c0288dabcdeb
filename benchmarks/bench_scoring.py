"""
Scoring one batch of completions for 1, 10, 100 and 1,000 users: `PersonalizedReward` (one backbone pass, then
`phi @ W.T`) against the naive loop (one reward-model pass per user, what a per-user reward model would cost).

Both paths get the same batch; `PersonalizedReward.score_for_users` is timed end to end (tokenisation included), the
naive loop on pre-tokenised inputs (which favours it). Prints a table with the median time and the cost ratio of
1,000 users to 1 user (target: at most 1.2x for the one-pass path).

    python benchmarks/bench_scoring.py                           # defaults: hidden 256, 4 layers, 64 completions
    python benchmarks/bench_scoring.py --num_users 1,10,100,1000 --repeats 5
"""

import os
import random
import statistics
import time
from dataclasses import dataclass, field


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from transformers import HfArgumentParser  # noqa: E402

from trl_rfm import PersonalizedReward, RewardFeatureModel  # noqa: E402
from trl_rfm.testing import build_marker_tokenizer, build_tiny_causal_lm, make_marker_preferences  # noqa: E402


@dataclass
class BenchmarkArguments:
    hidden_size: int = field(default=256, metadata={"help": "Backbone hidden size."})
    num_layers: int = field(default=4, metadata={"help": "Backbone layers."})
    num_features: int = field(default=32, metadata={"help": "RFM feature dimension d."})
    batch_size: int = field(default=64, metadata={"help": "Completions in the batch."})
    num_users: str = field(default="1,10,100,1000", metadata={"help": "Comma-separated user counts."})
    repeats: int = field(default=7, metadata={"help": "Timed rounds of the one-pass path (median reported)."})
    naive_repeats: int = field(default=1, metadata={"help": "Timed repeats of the naive loop (after one warm-up)."})
    num_threads: int = field(
        default=1, metadata={"help": "torch CPU threads (1 avoids oversubscribing a busy machine)."}
    )
    max_naive_users: int = field(default=1000, metadata={"help": "Skip the naive loop above this many users."})


def _median_seconds(fn, repeats: int, warmup: bool = True) -> float:
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(args: BenchmarkArguments) -> None:
    torch.set_num_threads(args.num_threads)
    user_counts = [int(n) for n in args.num_users.split(",")]
    tokenizer = build_marker_tokenizer()
    lm = build_tiny_causal_lm(
        tokenizer,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=max(1, args.hidden_size // 64),
        intermediate_size=4 * args.hidden_size,
    )
    users = [f"user_{i}" for i in range(max(user_counts))]
    torch.manual_seed(0)
    model = RewardFeatureModel.from_backbone(lm, num_features=args.num_features, user_ids=users).eval()
    model.add_users(users, weights=torch.randn(len(users), args.num_features))
    pairs = make_marker_preferences(num_pairs_per_user=args.batch_size)
    prompts, completions = pairs["prompt"][: args.batch_size], pairs["chosen"][: args.batch_size]
    reward = PersonalizedReward(model, tokenizer, batch_size=args.batch_size, device="cpu")
    batch = tokenizer.pad({"input_ids": reward.tokenize(prompts, completions)}, return_tensors="pt")

    @torch.no_grad()
    def naive(n: int) -> torch.Tensor:
        rewards = []
        for u in range(n):  # one backbone pass per user
            index = torch.full((args.batch_size,), u, dtype=torch.long)
            rewards.append(model(**batch, user_index=index).logits[:, 0])
        return torch.stack(rewards, dim=1)

    # Same numbers either way.
    torch.testing.assert_close(
        reward.score_for_users(prompts, completions, users[:10]), naive(10), rtol=1e-4, atol=1e-5
    )

    console = Console()
    # The one-pass timings are interleaved over the user counts, so drifts in machine load hit every count alike.
    one_pass_times = {n: [] for n in user_counts}
    order = list(user_counts)
    for _ in range(args.repeats + 1):
        random.Random(len(one_pass_times[order[0]])).shuffle(order)  # no count always runs first or last
        for n in order:
            start = time.perf_counter()
            reward.score_for_users(prompts, completions, users[:n])
            one_pass_times[n].append(time.perf_counter() - start)
    rows = []
    for n in user_counts:
        one_pass = statistics.median(one_pass_times[n][1:])  # the first round is the warm-up
        loop = float("nan")
        if n <= args.max_naive_users:  # the large loops are long enough to need no warm-up
            loop = _median_seconds(lambda: naive(n), args.naive_repeats, warmup=n < 100)
        rows.append((n, one_pass, loop))
        console.print(f"{n} users: one pass {1e3 * one_pass:.1f} ms, naive loop {1e3 * loop:.1f} ms")

    base_one_pass, base_loop = rows[0][1], rows[0][2]
    table = Table(
        title=f"Scoring {args.batch_size} completions for n users "
        f"(hidden {args.hidden_size}, {args.num_layers} layers, "
        f"d={args.num_features})"
    )
    for column in ("users", "one pass ms", "ratio to 1 user", "naive loop ms", "ratio to 1 user", "speed-up"):
        table.add_column(column, justify="right")
    for n, one_pass, loop in rows:
        skipped = loop != loop  # NaN: naive loop not run for this count
        table.add_row(
            str(n),
            f"{1e3 * one_pass:.1f}",
            f"{one_pass / base_one_pass:.2f}",
            "-" if skipped else f"{1e3 * loop:.1f}",
            "-" if skipped else f"{loop / base_loop:.1f}",
            "-" if skipped else f"{loop / one_pass:.1f}x",
        )
    console.print(table)


if __name__ == "__main__":
    (benchmark_args,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses()
    main(benchmark_args)
