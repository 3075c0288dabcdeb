"""
`trl-rfm serve` against in-process scoring of the same batches: rewards per second and per-request latency (p50, p99)
at 1, 4 and 16 concurrent clients, each sending OpenRLHF-shaped requests (`POST /get_reward`) of `--batch` samples of
`--num_users` users. The in-process reference is `PersonalizedReward.score` on the same kind of batches, one after
another, timed right before and right after each server run (the ratio compares the two on the same machine state).
Target: the server's throughput at least 0.8x the in-process one.

The server runs in a subprocess (`python -m trl_rfm.cli.main serve`), the clients in this process (one thread each,
`httpx`); both share the machine, as a rollout worker and its reward server would on one node.

    python benchmarks/bench_serving.py                                   # hidden 256, 4 layers, 64 users, batch 64
    python benchmarks/bench_serving.py --concurrency 1,4,16 --requests_per_client 20 --device cuda
    python benchmarks/bench_serving.py --batch 1 --server_batch_size 64 --requests_per_client 64   # OpenRLHF's size
"""

import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from torch import nn  # noqa: E402
from transformers import HfArgumentParser  # noqa: E402

from trl_rfm import PersonalizedReward, RewardFeatureModel, save_reward_feature_model  # noqa: E402
from trl_rfm.testing import build_tiny_causal_lm, build_tokenizer, free_local_port  # noqa: E402
from trl_rfm.testing.synthetic import FILLER_WORDS, TOPICS  # noqa: E402


@dataclass
class BenchmarkArguments:
    hidden_size: int = field(default=256, metadata={"help": "Backbone hidden size."})
    num_layers: int = field(default=4, metadata={"help": "Backbone layers."})
    num_features: int = field(default=32, metadata={"help": "RFM feature dimension d."})
    num_users: int = field(default=64, metadata={"help": "Users of the model; each sample gets one at random."})
    batch: int = field(default=64, metadata={"help": "Samples per request (and per in-process batch)."})
    response_words: int = field(default=24, metadata={"help": "Words per response (about as many tokens)."})
    concurrency: str = field(default="1,4,16", metadata={"help": "Comma-separated numbers of concurrent clients."})
    requests_per_client: int = field(default=12, metadata={"help": "Timed requests each client sends."})
    in_process_batches: int = field(
        default=16, metadata={"help": "In-process batches timed per concurrency level (half before, half after)."}
    )
    server_batch_size: int | None = field(
        default=None,
        metadata={"help": "The server's --batch_size (sequences per pass, merged across requests); default: --batch."},
    )
    device: str = field(default="cpu", metadata={"help": "Device of both the server and the in-process reference."})
    num_threads: int = field(default=1, metadata={"help": "torch CPU threads, in-process and in the server."})


def build_model(args: BenchmarkArguments, directory: str) -> list[str]:
    """A Llama-shaped RFM with `num_users` random users, saved with its tokenizer; returns the user ids."""
    tokenizer = build_tokenizer([" ".join(FILLER_WORDS), *(f"question about {topic} ?" for topic in TOPICS)])
    torch.manual_seed(0)
    trunk = build_tiny_causal_lm(
        tokenizer,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_layers,
        intermediate_size=4 * args.hidden_size,
        max_position_embeddings=512,
    )
    model = RewardFeatureModel.from_backbone(trunk, num_features=args.num_features)
    users = [f"user_{i}" for i in range(args.num_users)]
    model.add_users(users, weights=torch.randn(args.num_users, args.num_features))
    with torch.no_grad():
        nn.init.normal_(model.feature_head.weight, std=0.1)
    save_reward_feature_model(model, directory, processing_class=tokenizer)
    return users


def make_batches(args: BenchmarkArguments, users: list[str], count: int, seed: int) -> list[tuple[list, list]]:
    """`count` batches of `(queries, users)`: plain-text prompt + response ending with EOS, as OpenRLHF decodes them."""
    rng = random.Random(seed)
    batches = []
    for _ in range(count):
        queries = [
            f"question about {rng.choice(TOPICS)} ? "
            + " ".join(rng.choice(FILLER_WORDS) for _ in range(args.response_words))
            + " </s>"
            for _ in range(args.batch)
        ]
        batches.append((queries, [rng.choice(users) for _ in range(args.batch)]))
    return batches


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def time_in_process(reward: PersonalizedReward, batches) -> tuple[float, list[float]]:
    reward.score([None] * len(batches[0][0]), batches[0][0], batches[0][1])  # warm-up
    latencies = []
    start = time.perf_counter()
    for queries, users in batches:
        begin = time.perf_counter()
        reward.score([None] * len(queries), queries, users)
        latencies.append(time.perf_counter() - begin)
    return time.perf_counter() - start, latencies


def time_server(url: str, batches_per_client: list[list]) -> tuple[float, list[float]]:
    latencies, lock = [], threading.Lock()
    barrier = threading.Barrier(len(batches_per_client) + 1)

    def client(batches):
        with httpx.Client(base_url=url, timeout=600) as http:
            queries, users = batches[0]
            http.post("/get_reward", json={"query": queries, "prompts": queries, "labels": users}).raise_for_status()
            barrier.wait()
            for queries, users in batches:
                begin = time.perf_counter()
                body = {"query": queries, "prompts": queries, "labels": users}
                http.post("/get_reward", json=body).raise_for_status()
                with lock:
                    latencies.append(time.perf_counter() - begin)

    threads = [threading.Thread(target=client, args=(batches,)) for batches in batches_per_client]
    for thread in threads:
        thread.start()
    barrier.wait()  # every client connected and warmed up
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start, latencies


def start_server(model_dir: str, args: BenchmarkArguments) -> tuple[subprocess.Popen, str]:
    port = free_local_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.num_threads), "HF_HUB_OFFLINE": "1"}
    env.pop("TRL_RFM_API_KEY", None)
    command = [sys.executable, "-m", "trl_rfm.cli.main", "serve", "--model_name_or_path", model_dir]
    batch_size = str(args.server_batch_size or args.batch)
    command += ["--port", str(port), "--device", args.device, "--batch_size", batch_size, "--log_level", "warning"]
    process = subprocess.Popen(command, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"The server exited with {process.returncode}.")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("The server did not start within 300 s.")


def main(args: BenchmarkArguments) -> None:
    torch.set_num_threads(args.num_threads)
    console = Console(width=120)  # the whole table on one line per row, also when piped
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        model_dir = os.path.join(directory, "rfm")
        users = build_model(args, model_dir)
        reward = PersonalizedReward(model_dir, batch_size=args.batch, device=args.device)
        reference_batches = make_batches(args, users, args.in_process_batches, seed=0)
        process, url = start_server(model_dir, args)
        try:
            # The server's rewards are the in-process ones (same texts, users, tokenisation and feature pass).
            queries, batch_users = reference_batches[0]
            served = httpx.post(f"{url}/get_reward", json={"query": queries, "labels": batch_users}, timeout=600)
            expected = reward.score([None] * len(queries), queries, batch_users)
            difference = (torch.tensor(served.json()["rewards"]) - expected).abs().max().item()
            for clients in [int(c) for c in args.concurrency.split(",")]:
                per_client = [
                    make_batches(args, users, args.requests_per_client, seed=1000 * clients + c)
                    for c in range(clients)
                ]
                # In-process batches right before and after the server's run, so that both see the same machine
                # (a shared one drifts by tens of percent over a minute).
                half = len(reference_batches) // 2
                before_seconds, before_latencies = time_in_process(reward, reference_batches[:half])
                seconds, latencies = time_server(url, per_client)
                after_seconds, after_latencies = time_in_process(reward, reference_batches[half:])
                served = args.batch * args.requests_per_client * clients / seconds
                in_process = args.batch * len(reference_batches) / (before_seconds + after_seconds)
                rows.append((clients, served, in_process, latencies, before_latencies + after_latencies))
        finally:
            process.terminate()
            process.wait(timeout=60)
    table = Table(
        title=f"Serving: hidden {args.hidden_size}, {args.num_layers} layers, {args.num_users} users, batch "
        f"{args.batch} (server passes of {args.server_batch_size or args.batch}), {args.device}, {args.num_threads} "
        "torch thread(s)"
    )
    columns = ("clients", "serve rewards/s", "in-process rewards/s", "ratio", "serve p50 / p99 ms")
    for column in (*columns, "in-process p50 / p99 ms"):
        table.add_column(column, justify="right")
    for clients, served, in_process, latencies, reference_latencies in rows:
        table.add_row(
            str(clients),
            f"{served:.0f}",
            f"{in_process:.0f}",
            f"{served / in_process:.2f}x",
            f"{1000 * statistics.median(latencies):.0f} / {1000 * percentile(latencies, 0.99):.0f}",
            f"{1000 * statistics.median(reference_latencies):.0f} / "
            f"{1000 * percentile(reference_latencies, 0.99):.0f}",
        )
    console.print(table)
    console.print(f"max |server - in-process| reward on a batch: {difference:.2e}")


if __name__ == "__main__":
    (arguments,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses()
    main(arguments)
