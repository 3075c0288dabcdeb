"""
`trl-rfm serve` and the in-process integrations: rewards equal `PersonalizedReward`'s, requests of many users are
micro-batched without misrouting, bad requests are 4xx and leave the server serving, users adapted online persist.

The fast tests drive the FastAPI application in-process (`TestClient`); the slow ones start the real server in a
subprocess on a free port and talk to it over HTTP.
"""

import importlib.util
import os
import random
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from tokenizers import processors
from torch import nn

from trl_rfm import PersonalizedReward, RewardFeatureModel, load_user_weights, save_reward_feature_model
from trl_rfm.io import USER_WEIGHTS_NAME
from trl_rfm.serving import EngineArguments, RewardEngine, ServerArguments
from trl_rfm.serving.app import create_app
from trl_rfm.serving.protocol import RequestError, tokenize_query, user_of_label
from trl_rfm.testing import build_marker_tokenizer, build_tiny_causal_lm, free_local_port


USERS = ["alice", "bob", "carol", "dave", "erin", "frank"]
TOPICS = ["music", "travel", "cooking", "sports"]
RESPONSES = ["the funny answer is here", "well maybe so", "funny funny", "this is it so well maybe the answer"]
API_KEY = "test-key-123"


def save_rfm(directory, user_ids=USERS, num_features=4, seed=0) -> str:
    """A tiny Reward Feature Model with random users and a feature head giving rewards of order one, saved with its
    tokenizer (and chat template) as `trl-rfm serve` loads it."""
    tokenizer = build_marker_tokenizer()
    torch.manual_seed(seed)
    model = RewardFeatureModel.from_backbone(build_tiny_causal_lm(tokenizer, seed=seed), num_features=num_features)
    model.add_users(user_ids, weights=torch.randn(len(user_ids), num_features))
    with torch.no_grad():
        model.user_weights.population.copy_(torch.randn(num_features))
        nn.init.normal_(model.feature_head.weight, std=0.3)
    save_reward_feature_model(model, directory, processing_class=tokenizer)
    return str(directory)


def conversation(topic: str) -> list[dict]:
    return [{"role": "user", "content": f"question about {topic} ?"}]


def openrlhf_request(tokenizer, topic: str, response: str) -> tuple[str, str]:
    """`(query, prompt)` exactly as OpenRLHF builds them with `--data.apply_chat_template`: the templated prompt is
    encoded without special tokens, the policy's response ends with EOS, and the query is their decoded ids."""
    prompt = tokenizer.apply_chat_template(conversation(topic), tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return tokenizer.decode(prompt_ids + response_ids, skip_special_tokens=False), prompt


def reference_rewards(model_dir, topics, responses, users) -> list[float]:
    """`PersonalizedReward` on the same conversations: the rewards the server must give."""
    reward = PersonalizedReward(model_dir, device="cpu")
    completions = [[{"role": "assistant", "content": r}] for r in responses]
    return reward([conversation(t) for t in topics], completions, user_id=users)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_rfm(tmp_path_factory.mktemp("served") / "rfm")


@pytest.fixture(scope="module")
def tokenizer():
    return build_marker_tokenizer()


def make_client(model_dir, unknown_users="population", **server_options):
    engine = RewardEngine.from_arguments(
        EngineArguments(model_name_or_path=model_dir, device="cpu", unknown_users=unknown_users)
    )
    return engine, TestClient(create_app(engine, ServerArguments(**server_options)))


# ---------------------------------------------------------------------------------------------------- fast, in-process
def test_openrlhf_request_scores_like_personalized_reward(model_dir, tokenizer):
    engine, client = make_client(model_dir)
    try:
        topics, responses = TOPICS, RESPONSES
        users = ["alice", "bob", "carol", "alice"]
        pairs = [openrlhf_request(tokenizer, t, r) for t, r in zip(topics, responses)]
        labels = ["alice", {"user_id": "bob", "answer": 3}, '{"user_id": "carol"}', "alice"]  # the label forms
        answer = client.post(
            "/get_reward", json={"query": [q for q, _ in pairs], "prompts": [p for _, p in pairs], "labels": labels}
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert set(body) == {"rewards", "scores", "extra_logs"} and body["scores"] == body["rewards"]
        expected = reference_rewards(model_dir, topics, responses, users)
        torch.testing.assert_close(torch.tensor(body["rewards"]), torch.tensor(expected), rtol=0, atol=1e-5)
        population = reference_rewards(model_dir, topics, responses, [None] * 4)
        torch.testing.assert_close(
            torch.tensor(body["extra_logs"]["population_reward"]), torch.tensor(population), rtol=0, atol=1e-5
        )
        # /score: conversations and plain text, as PersonalizedReward tokenises them.
        completions = [[{"role": "assistant", "content": r}] for r in responses]
        scored = client.post(
            "/score",
            json={"prompts": [conversation(t) for t in topics], "completions": completions, "user_ids": users},
        )
        torch.testing.assert_close(torch.tensor(scored.json()["rewards"]), torch.tensor(expected), atol=1e-5, rtol=0)
        prompts = [f"question about {t} ?" for t in topics]
        scored = client.post("/score", json={"prompts": prompts, "completions": responses, "user_ids": users})
        text_reference = PersonalizedReward(model_dir, device="cpu")(prompts, responses, user_id=users)
        torch.testing.assert_close(
            torch.tensor(scored.json()["rewards"]), torch.tensor(text_reference), atol=1e-5, rtol=0
        )
        assert client.get("/users").json() == {"users": USERS, "num_users": len(USERS)}
        assert client.get("/health").json()["status"] == "ok"
    finally:
        engine.close()


def test_bad_requests_are_4xx_naming_the_problem_and_the_server_keeps_serving(model_dir, tokenizer):
    engine, client = make_client(
        model_dir, unknown_users="error", api_key=API_KEY, max_body_bytes=4096, max_samples_per_request=8
    )
    auth = {"Authorization": f"Bearer {API_KEY}"}
    query, prompt = openrlhf_request(tokenizer, "music", "funny")
    good = {"query": [query], "prompts": [prompt], "labels": ["alice"]}
    try:
        cases = [
            (
                dict(content=b'{"query": [', headers={**auth, "content-type": "application/json"}),
                422,
                "not valid JSON",
            ),
            (dict(json={**good, "labels": ["alice", "bob"]}, headers=auth), 422, "1 queries for 2 labels"),
            (dict(json={**good, "labels": ["mallory"]}, headers=auth), 422, "'mallory'"),
            (dict(json={**good, "labels": [""]}, headers=auth), 422, "--data.label_key user_id"),
            (dict(json={**good, "labels": [{"name": "x"}]}, headers=auth), 422, "without a 'user_id' key"),
            (dict(json={"prompts": [prompt], "labels": ["alice"]}, headers=auth), 422, "query: Field required"),
            (dict(json=good), 401, "Missing API key"),
            (dict(json=good, headers={"Authorization": "Bearer nope"}), 401, "Wrong API key"),
            (dict(json={**good, "query": [query * 200]}, headers=auth), 413, "--max_body_bytes"),
            (dict(json={**good, "query": [query] * 9, "labels": ["alice"] * 9}, headers=auth), 413, "at most 8"),
        ]
        for kwargs, status, message in cases:
            answer = client.post("/get_reward", **kwargs)
            assert answer.status_code == status, (kwargs, answer.text)
            assert message in answer.json()["detail"], answer.json()
            assert client.post("/get_reward", json=good, headers=auth).status_code == 200  # still serving
        # The key as OpenRLHF can send it: in the URL.
        assert client.post(f"/get_reward?api_key={API_KEY}", json=good).status_code == 200
        assert client.post("/get_reward", json=good, headers={"X-API-Key": API_KEY}).status_code == 200
        assert client.get("/users").status_code == 401  # every route, reads included
        answer = client.post(
            "/score", json={"prompts": ["a"], "completions": [3], "user_ids": ["alice"]}, headers=auth
        )
        assert answer.status_code == 422 and "completions.0: expected text or a list of messages" in answer.text
        answer = client.post(
            "/score", json={"prompts": ["a"], "completions": ["b", "c"], "user_ids": ["alice"]}, headers=auth
        )
        assert answer.status_code == 422 and "1 prompts, 2 completions and 1 user_ids" in answer.text
        answer = client.post("/users/zoe/adapt", json={"comparisons": []}, headers=auth)
        assert answer.status_code == 422 and "at least one" in answer.text
        mixed = [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"chosen": "b", "rejected": "c"}]
        answer = client.post("/users/zoe/adapt", json={"comparisons": mixed}, headers=auth)
        assert answer.status_code == 422 and "mix formats" in answer.text
        assert "zoe" not in client.get("/users", headers=auth).json()["users"]
    finally:
        engine.close()


def test_unknown_users_take_the_population_weights_by_default(model_dir, tokenizer):
    engine, client = make_client(model_dir)
    try:
        query, prompt = openrlhf_request(tokenizer, "music", "funny")
        body = client.post("/get_reward", json={"query": [query], "prompts": [prompt], "labels": ["mallory"]}).json()
        assert body["rewards"] == body["extra_logs"]["population_reward"]
    finally:
        engine.close()


def test_adaptation_is_served_at_once_persisted_and_replaces(tmp_path, tokenizer):
    model_dir = save_rfm(tmp_path / "rfm")
    engine, client = make_client(model_dir)
    comparisons = [
        {"prompt": f"question about {t} ?", "chosen": "funny " + r, "rejected": r} for t in TOPICS for r in RESPONSES
    ]
    try:
        answer = client.post("/users/zoe/adapt", json={"comparisons": comparisons})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"user_id": "zoe", "replaced": False, "num_comparisons": 16, "num_users": 7}
        saved = load_user_weights(os.path.join(model_dir, USER_WEIGHTS_NAME))
        assert saved.user_ids == [*USERS, "zoe"]
        query, prompt = openrlhf_request(tokenizer, "music", "funny")
        served = client.post("/get_reward", json={"query": [query], "prompts": [prompt], "labels": ["zoe"]}).json()
        assert served["rewards"] != served["extra_logs"]["population_reward"]  # zoe has weights of her own
        # The file loads with the model and scores zoe as the server does.
        torch.testing.assert_close(
            torch.tensor(served["rewards"]),
            torch.tensor(reference_rewards(model_dir, ["music"], ["funny"], ["zoe"])),
            rtol=0,
            atol=1e-5,
        )
        again = client.post("/users/zoe/adapt", json={"comparisons": comparisons[:4]})
        assert again.json()["replaced"] is True and again.json()["num_users"] == 7
    finally:
        engine.close()


def test_serving_in_bfloat16_rewrites_the_other_users_rows_unrounded(tmp_path):
    model_dir = save_rfm(tmp_path / "rfm")
    path = os.path.join(model_dir, USER_WEIGHTS_NAME)
    before = load_user_weights(path).weights
    engine = RewardEngine.from_arguments(EngineArguments(model_name_or_path=model_dir, device="cpu", dtype="bfloat16"))
    try:
        engine.adapt("zoe", [{"chosen": "funny", "rejected": "well maybe so"}] * 3).result()
    finally:
        engine.close()
    after = load_user_weights(path)
    assert after.user_ids == [*USERS, "zoe"] and torch.equal(after.weights[: len(USERS)], before)


def test_a_failed_save_leaves_the_model_and_the_file_as_they_were(tmp_path, monkeypatch):
    model_dir = save_rfm(tmp_path / "rfm")
    path = os.path.join(model_dir, USER_WEIGHTS_NAME)
    before = open(path, "rb").read()
    engine = RewardEngine.from_arguments(EngineArguments(model_name_or_path=model_dir, device="cpu"))
    bob = engine.reward.rfm.get_user_weights(["bob"]).clone()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("trl_rfm.serving.engine.save_user_weights", full_disk)
    comparisons = [{"chosen": "funny", "rejected": "well maybe so"}] * 3
    try:
        for user in ("zoe", "bob"):  # a new user, and one whose weights would be replaced
            with pytest.raises(OSError, match="No space left"):
                engine.adapt(user, comparisons).result()
        assert engine.user_ids == USERS and engine.reward.rfm.user_ids == USERS
        torch.testing.assert_close(engine.reward.rfm.get_user_weights(["bob"]), bob)
        assert open(path, "rb").read() == before
        assert engine.score(["q"], ["funny"], ["bob"]).rewards  # still scoring
    finally:
        engine.close()


def test_concurrent_requests_share_backbone_passes_without_misrouting(model_dir):
    engine = RewardEngine.from_arguments(EngineArguments(model_name_or_path=model_dir, device="cpu", batch_size=64))
    passes = []
    featurize = engine.reward.features_of_sequences
    engine.reward.features_of_sequences = lambda sequences: passes.append(len(sequences)) or featurize(sequences)
    prompts = [f"question about {t} ?" for t in TOPICS]
    expected = PersonalizedReward(model_dir, device="cpu").score_for_users(prompts, RESPONSES, USERS)  # [4, 6]
    try:
        # Hold the worker so that the requests queue up behind it, as they do behind a running pass.
        release = threading.Event()
        held = engine._batcher.run_exclusive(release.wait)
        jobs = []
        for i in range(24):
            text, user = i % 4, (i * 5) % len(USERS)
            sequences = engine.tokenize_pairs([prompts[text]], [RESPONSES[text]])
            jobs.append((text, user, engine.submit(sequences, [USERS[user]])))
        release.set()
        held.result()
        for text, user, future in jobs:
            assert future.result().rewards[0] == pytest.approx(expected[text, user].item(), abs=1e-5)
        assert passes == [24]  # one backbone pass for the 24 requests of 6 users
    finally:
        engine.close()


def test_label_forms():
    assert user_of_label("alice", 0) == "alice"
    assert user_of_label(17, 0) == "17"
    assert user_of_label({"user_id": "bob", "other": 1}, 0) == "bob"
    assert user_of_label(' {"user_id": 3}', 0) == "3"
    for label, message in [(None, "holds no user"), ("{oops", "not valid JSON"), ({"id": 1}, "'user_id'")]:
        with pytest.raises(RequestError, match=message):
            user_of_label(label, 4)


def test_a_query_gets_one_bos_and_ends_with_eos(tokenizer):
    tokenizer = build_marker_tokenizer()
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", bos)]
    )  # a tokenizer that adds BOS, as Llama's do
    plain = tokenize_query(tokenizer, "question about music ? funny")
    templated = tokenize_query(tokenizer, "<s> question about music ? funny </s>")
    assert plain[0] == bos and plain[1] != bos and plain[-1] == eos
    assert templated == plain


def test_integrations_score_like_the_server(model_dir, tokenizer, monkeypatch):
    monkeypatch.setenv("TRL_RFM_MODEL", model_dir)
    monkeypatch.setenv("TRL_RFM_DEVICE", "cpu")
    # OpenRLHF loads the file by path, as a module named `reward_func`, outside the package.
    path = os.path.join(os.path.dirname(importlib.import_module("trl_rfm.integrations").__file__), "openrlhf.py")
    spec = importlib.util.spec_from_file_location("reward_func", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pairs = [openrlhf_request(tokenizer, t, r) for t, r in zip(TOPICS, RESPONSES)]
    users = ["bob", "alice", "erin", "bob"]
    expected = reference_rewards(model_dir, TOPICS, RESPONSES, users)
    # OpenRLHF calls it from a thread per query.
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda i: module.reward_func([pairs[i][0]], [pairs[i][1]], [users[i]]), range(4)))
    rewards = [answer["rewards"][0] for answer in answers]
    torch.testing.assert_close(torch.tensor(rewards), torch.tensor(expected), rtol=0, atol=1e-5)

    from trl_rfm.integrations.verl import compute_score

    scores = [
        compute_score("prefs", r, None, {"user_id": u, "prompt": conversation(t), "index": 0})
        for t, r, u in zip(TOPICS, RESPONSES, users)
    ]
    torch.testing.assert_close(torch.tensor(scores), torch.tensor(expected), rtol=0, atol=1e-5)
    with pytest.raises(KeyError, match=r"extra_info\['user_id'\]"):
        compute_score("prefs", "funny", None, {"prompt": "q"})


def test_cli_lists_serve_and_refuses_a_public_address_without_a_key(monkeypatch, capsys):
    from trl_rfm.cli import main

    main(["--help"])
    assert "serve" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    usage = capsys.readouterr().out
    assert usage.startswith("usage: trl-rfm serve") and "--unknown_users {population,error}" in usage
    monkeypatch.delenv("TRL_RFM_API_KEY", raising=False)
    with pytest.raises(ValueError, match="--host 0.0.0.0 accepts connections from other machines"):
        ServerArguments(host="0.0.0.0")
    assert ServerArguments(host="0.0.0.0", api_key="k").api_key == "k"
    monkeypatch.setenv("TRL_RFM_API_KEY", "from-env")
    assert ServerArguments(host="::").api_key == "from-env"


# ---------------------------------------------------------------------------------------------------- slow, over HTTP
class Server:
    """`trl-rfm serve` in a subprocess on a free port; `url`, `stop()` (SIGTERM) and `kill()` (SIGKILL)."""

    def __init__(self, model_dir, *options: str, api_key: str | None = None):
        self.port = free_local_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        env.pop("TRL_RFM_API_KEY", None)
        if api_key is not None:
            env["TRL_RFM_API_KEY"] = api_key
        command = [sys.executable, "-m", "trl_rfm.cli.main", "serve", "--model_name_or_path", str(model_dir)]
        command += ["--port", str(self.port), "--device", "cpu", "--log_level", "warning", *options]
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"The server exited ({self.process.returncode}):\n{self.process.stdout.read()}")
            try:
                if httpx.get(f"{self.url}/health", headers=headers, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.kill()
        raise AssertionError("The server did not answer /health within 120 s.")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)

    def kill(self) -> None:
        self.process.kill()  # SIGKILL: no handler, no `finally`
        self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def server(model_dir):
    server = Server(model_dir, "--unknown_users", "error", "--max_body_bytes", "65536", api_key=API_KEY)
    yield server
    server.stop()


@pytest.mark.slow
def test_http_rewards_equal_personalized_reward_and_concurrent_clients_get_their_own(server, model_dir, tokenizer):
    auth = {"Authorization": f"Bearer {API_KEY}"}
    pairs = [openrlhf_request(tokenizer, t, r) for t in TOPICS for r in RESPONSES]  # 16 texts
    texts = [(t, r) for t in TOPICS for r in RESPONSES]
    prompts = [conversation(t) for t, _ in texts]
    completions = [[{"role": "assistant", "content": r}] for _, r in texts]
    expected = PersonalizedReward(model_dir, device="cpu").score_for_users(prompts, completions, USERS)  # [16, 6]
    # Misrouting must show: for every text, the users' rewards differ well beyond the tolerance.
    assert min((a - b).abs().item() for row in expected for i, a in enumerate(row) for b in row[i + 1 :]) > 1e-3

    answer = httpx.post(
        f"{server.url}/get_reward",
        json={"query": [q for q, _ in pairs], "prompts": [p for _, p in pairs], "labels": USERS * 2 + USERS[:4]},
        headers=auth,
    )
    users = (USERS * 2 + USERS[:4])[:16]
    reference = [expected[i, USERS.index(u)].item() for i, u in enumerate(users)]
    torch.testing.assert_close(torch.tensor(answer.json()["rewards"]), torch.tensor(reference), rtol=0, atol=1e-5)

    def client(seed: int) -> int:
        rng, checked = random.Random(seed), 0
        with httpx.Client(base_url=server.url, headers=auth, timeout=60) as http:
            for _ in range(200):
                rows = [rng.randrange(16) for _ in range(rng.randint(1, 3))]
                users = [rng.choice(USERS) for _ in rows]
                body = {"query": [pairs[i][0] for i in rows], "prompts": [pairs[i][1] for i in rows], "labels": users}
                rewards = http.post("/get_reward", json=body).raise_for_status().json()["rewards"]
                for i, u, reward in zip(rows, users, rewards, strict=True):
                    assert abs(reward - expected[i, USERS.index(u)].item()) < 1e-5, (seed, i, u, reward)
                    checked += 1
        return checked

    with ThreadPoolExecutor(8) as pool:
        checked = sum(pool.map(client, range(8)))
    assert checked >= 8 * 200


@pytest.mark.slow
def test_http_bad_requests_are_4xx_and_the_server_keeps_serving(server, tokenizer):
    auth = {"Authorization": f"Bearer {API_KEY}"}
    query, prompt = openrlhf_request(tokenizer, "music", "funny")
    good = {"query": [query], "prompts": [prompt], "labels": ["alice"]}
    url = f"{server.url}/get_reward"
    cases = [
        (dict(content=b"{not json", headers={**auth, "content-type": "application/json"}), 422, "not valid JSON"),
        (dict(json={**good, "labels": ["alice", "bob"]}, headers=auth), 422, "1 queries for 2 labels"),
        (dict(json={**good, "labels": ["mallory"]}, headers=auth), 422, "Unknown user id(s) 'mallory'"),
        (dict(json=good), 401, "Missing API key"),
        (dict(json=good, headers={"Authorization": "Bearer wrong"}), 401, "Wrong API key"),
        (dict(json={**good, "query": ["funny " * 20000]}, headers=auth), 413, "65536 bytes (--max_body_bytes)"),
    ]
    for kwargs, status, message in cases:
        answer = httpx.post(url, timeout=30, **kwargs)
        assert answer.status_code == status and message in answer.json()["detail"], (status, answer.text)
        assert httpx.post(url, json=good, headers=auth, timeout=30).status_code == 200
    assert server.process.poll() is None


@pytest.mark.slow
def test_http_adapted_user_survives_a_restart(tmp_path, tokenizer):
    model_dir = save_rfm(tmp_path / "rfm")
    comparisons = [
        {"prompt": f"question about {t} ?", "chosen": "funny", "rejected": r} for t in TOPICS for r in RESPONSES
    ]
    query, prompt = openrlhf_request(tokenizer, "travel", "funny funny")
    body = {"query": [query], "prompts": [prompt], "labels": ["zoe"]}
    server = Server(model_dir)
    try:
        adapted = httpx.post(f"{server.url}/users/zoe/adapt", json={"comparisons": comparisons}, timeout=60)
        assert adapted.status_code == 200, adapted.text
        before = httpx.post(f"{server.url}/get_reward", json=body, timeout=30).json()["rewards"]
    finally:
        server.stop()
    server = Server(model_dir)
    try:
        assert "zoe" in httpx.get(f"{server.url}/users", timeout=30).json()["users"]
        after = httpx.post(f"{server.url}/get_reward", json=body, timeout=30).json()["rewards"]
        assert after == pytest.approx(before, abs=1e-6)
    finally:
        server.stop()


@pytest.mark.slow
def test_kill_9_while_adapting_leaves_the_previous_user_file_loadable(tmp_path):
    # Many users make the user file tens of MB, so that its write lasts long enough to be killed in the middle.
    users = [f"rater_{i}" for i in range(300_000)]
    model_dir = save_rfm(tmp_path / "rfm", user_ids=users, num_features=32)
    path = os.path.join(model_dir, USER_WEIGHTS_NAME)

    def temporary_files() -> list[str]:
        return [name for name in os.listdir(model_dir) if name.startswith(f".{USER_WEIGHTS_NAME}.")]

    comparisons = [{"prompt": "question about music ?", "chosen": "funny", "rejected": "well maybe so"}] * 4
    for attempt in range(3):
        previous, previous_ids = open(path, "rb").read(), load_user_weights(path).user_ids
        server = Server(model_dir)

        def adapt(url=server.url, user=f"zoe_{attempt}"):
            try:
                httpx.post(f"{url}/users/{user}/adapt", json={"comparisons": comparisons}, timeout=60)
            except httpx.TransportError:  # killed before answering
                pass

        request = threading.Thread(target=adapt, daemon=True)
        request.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and request.is_alive() and not temporary_files():
            time.sleep(0.0005)
        server.kill()  # as soon as the new user file is being written (or the adapt is over)
        request.join(60)
        # Wherever the kill landed, the user file is whole: the previous one, or the new one with the user added.
        saved = load_user_weights(path)
        assert open(path, "rb").read() == previous or saved.user_ids == [*previous_ids, f"zoe_{attempt}"]
        if temporary_files():  # left behind: the process died between creating it and moving it into place
            assert open(path, "rb").read() == previous
            return
    pytest.fail("No kill landed while the user file was being written (3 attempts).")
