"""
Benchmark of few-shot adaptation: throughput of `fit_user_weights` against a loop of scikit-learn fits,
and active vs random questions on synthetic users. Prints markdown tables.

    python benchmarks/bench_adaptation.py                      # 10,000 users x 32 pairs x d = 32
    python benchmarks/bench_adaptation.py --sklearn_users 500  # users timed with scikit-learn (then extrapolated)

Throughput data: RMS-normalised random features (||phi|| = sqrt(d), as the model makes them), user weights
w ~ N(0, 4 I / d) and Bradley-Terry labels drawn from them; both solvers fit the same L2-regularised logistic
regression (prior N(0, I / l2) with l2 = d / 4, the true spread), so their weights must agree. The scikit-learn loop is
timed on `--sklearn_users` users and extrapolated linearly to all users (one fit per user, no shared state).
"""

import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import HfArgumentParser

from trl_rfm import fit_user_weights, simulate_adaptation


@dataclass
class BenchmarkArguments:
    num_users: int = field(default=10_000, metadata={"help": "Users fitted at once."})
    num_pairs: int = field(default=32, metadata={"help": "Pairs per user."})
    num_features: int = field(default=32, metadata={"help": "Feature dimension d."})
    sklearn_users: int = field(default=500, metadata={"help": "Users fitted by the scikit-learn loop (extrapolated)."})
    repeats: int = field(default=3, metadata={"help": "Timed repeats of the batched fit (median reported)."})
    active_users: int = field(default=400, metadata={"help": "Synthetic users of the active-learning comparison."})
    active_features: int = field(default=8, metadata={"help": "d of the active-learning comparison."})
    active_candidates: int = field(default=200, metadata={"help": "Candidate comparisons per user."})
    active_rounds: int = field(default=40, metadata={"help": "Questions asked per user."})
    seed: int = field(default=0, metadata={"help": "Seed."})


# Spread of the users' weights: w ~ N(0, USER_SCALE^2 I / d), so that reward differences between two responses have
# a standard deviation of about 2.8 (decisive but noisy raters).
USER_SCALE = 2.0
PRIOR_PRECISION = lambda d: d / USER_SCALE**2  # noqa: E731  the prior matched to that spread


def features(generator, *shape):
    """RMS-normalised features, ||phi|| = sqrt(d), as `RewardFeatureModel` produces them."""
    phi = torch.randn(*shape, generator=generator)
    return phi * torch.rsqrt(phi.pow(2).mean(-1, keepdim=True))


def synthetic_users(generator, num_users, num_pairs, d, noisy=True):
    weights = torch.randn(num_users, d, generator=generator) * USER_SCALE / math.sqrt(d)
    x = features(generator, num_users, num_pairs, d) - features(generator, num_users, num_pairs, d)
    logits = torch.einsum("upd,ud->up", x, weights)
    p = torch.sigmoid(logits)
    answers = (torch.rand(p.shape, generator=generator) < p).float() if noisy else (logits > 0).float()
    return weights, x, answers


def accuracy(test, weights, true_weights):
    """Agreement with the user's true (noise-free) preference on held-out pairs."""
    truth = torch.einsum("upd,ud->up", test, true_weights) > 0
    return ((torch.einsum("upd,ud->up", test, weights.to(test.dtype)) > 0) == truth).float().mean().item()


def throughput(args, generator):
    from sklearn.linear_model import LogisticRegression

    d = args.num_features
    l2 = PRIOR_PRECISION(d)
    true_weights, x, answers = synthetic_users(generator, args.num_users, args.num_pairs, d)
    oriented = x * (2 * answers - 1)[..., None]  # first response = the one the user chose
    test = features(generator, args.num_users, 64, d) - features(generator, args.num_users, 64, d)

    fit_user_weights(oriented[:100], l2=l2)  # warm-up
    times, cpu_times = [], []
    for _ in range(args.repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        weights = fit_user_weights(oriented, l2=l2)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)

    n = min(args.sklearn_users, args.num_users)
    flip = torch.rand(n, args.num_pairs, generator=generator) < 0.5  # scikit-learn needs both classes
    sk_weights = []
    start, cpu_start = time.perf_counter(), time.process_time()
    for u in range(n):
        signs = 1 - 2 * flip[u].float()
        model = LogisticRegression(C=1 / l2, fit_intercept=False, tol=1e-8, max_iter=1000)
        model.fit((oriented[u] * signs[:, None]).numpy(), (~flip[u]).long().numpy())
        sk_weights.append(model.coef_[0])
    sklearn_time = (time.perf_counter() - start) * args.num_users / n
    sklearn_cpu_time = (time.process_time() - cpu_start) * args.num_users / n
    sk_weights = torch.tensor(np.stack(sk_weights), dtype=torch.float32)

    batched, per_user = float(np.median(times)), sklearn_time
    batched_cpu = float(np.median(cpu_times))
    print(f"\n### Throughput: {args.num_users:,} users x {args.num_pairs} pairs x d = {d}\n")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f} at the end"
    )
    print("\n| solver | wall time, all users (s) | speed-up (wall) | CPU time, all users (s) | speed-up (CPU) |")
    print("|---|---:|---:|---:|---:|")
    print(
        f"| `fit_user_weights` (batched Newton, float32), median of {args.repeats} | {batched:.2f} | "
        f"{per_user / batched:.0f}x | {batched_cpu:.2f} | {sklearn_cpu_time / batched_cpu:.0f}x |"
    )
    print(
        f"| scikit-learn `LogisticRegression` (lbfgs) loop, timed on {n} users and extrapolated "
        f"x{args.num_users / n:g} | {per_user:.1f} | 1x | {sklearn_cpu_time:.1f} | 1x |"
    )
    print("\n| solver | held-out accuracy vs true preference | max abs weight difference to scikit-learn |")
    print("|---|---:|---:|")
    print(
        f"| `fit_user_weights` | {accuracy(test, weights, true_weights):.4f} "
        f"(first {n} users: {accuracy(test[:n], weights[:n], true_weights[:n]):.4f}) | "
        f"{(weights[:n] - sk_weights).abs().max().item():.1e} |"
    )
    print(f"| scikit-learn (first {n} users) | {accuracy(test[:n], sk_weights, true_weights[:n]):.4f} | 0 |")


def active_vs_random(args, generator):
    d, users = args.active_features, args.active_users
    true_weights, x, answers = synthetic_users(generator, users, args.active_candidates, d)
    test = features(generator, users, 200, d) - features(generator, users, 200, d)
    # Users as the RFM sees them: spread N(0, I/d) around the population (here 0), prior matched to it.
    common = dict(prior_mean=torch.zeros(d), l2=PRIOR_PRECISION(d), num_rounds=args.active_rounds)
    curves = {}
    for strategy in ("random", "information"):
        start = time.perf_counter()
        trace = simulate_adaptation(x.double(), answers.double(), strategy=strategy, seed=args.seed, **common)
        curves[strategy] = [accuracy(test, w, true_weights) for w in trace.weights]
        print(f"  {strategy}: {time.perf_counter() - start:.1f} s", flush=True)
    batched = simulate_adaptation(
        x.double(),
        answers.double(),
        strategy="information",
        questions_per_round=5,
        **{**common, "num_rounds": args.active_rounds // 5},
    )
    batched_curve = {n: accuracy(test, w, true_weights) for n, w in zip(batched.num_answers, batched.weights)}

    print(
        f"\n### Active vs random questions: {users} synthetic users, d = {d}, {args.active_candidates} candidate "
        "comparisons each, noisy (Bradley-Terry) answers\n"
    )
    print("| answers | random | active (1 per round) | active (5 per round) |")
    print("|---:|---:|---:|---:|")
    for n in (0, 5, 10, 15, 20, 30, 40):
        if n <= args.active_rounds:
            batch = f"{batched_curve[n]:.3f}" if n in batched_curve else "-"
            print(f"| {n} | {curves['random'][n]:.3f} | {curves['information'][n]:.3f} | {batch} |")
    print("\n| accuracy reached by random questions after | answers active selection needs for it |")
    print("|---:|---:|")
    for n in (10, 20, 40):
        if n <= args.active_rounds:
            target = curves["random"][n]
            needed = next((m for m, a in enumerate(curves["information"]) if a >= target), None)
            print(f"| {n} answers ({target:.3f}) | {needed} |")


def main():
    (args,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses()
    generator = torch.Generator().manual_seed(args.seed)
    throughput(args, generator)
    active_vs_random(args, generator)


if __name__ == "__main__":
    main()
