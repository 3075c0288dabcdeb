"""
Real kills: a training job (`trl_rfm.testing.killable_training`: tiny LM, CPU, a rater column, a checkpoint every 2
of 8 steps, the final save, then 2 new users adapted and saved over it) runs in a child process and receives `SIGKILL`
at moments drawn with a logged seed: in a training step (forward, backward, optimizer step), in a checkpoint save, in
the final save, in the `adapt_users` save. Each kill is followed by the same job again, which resumes
(`resume_from_checkpoint=True`) and may be killed in turn; the last run of a chain completes. After every kill:

- the output folder loads, as the final model or the final model with the adapted users, never a mixture; while it
  holds neither, every complete checkpoint loads, and each equals the checkpoint of the same step of an uninterrupted
  run;
- after the chain: the model equals the uninterrupted run's (every user's reward and the population's, to 1e-5; the
  runs are deterministic on CPU with one thread), so does every checkpoint, and no staging folder (`_tmp-*`) or swap
  backup (`_old-*`) is left.

The children are forked from a server that has imported torch and transformers once (multiprocessing's
`forkserver`): a fresh interpreter per run would spend most of the test importing. A kill point is either "at" a
moment (the child stops there and is killed: exact) or "after" it (killed a few milliseconds later while it goes on:
wherever that lands, e.g. inside a write). Replay a run with `TRL_RFM_KILL_SEED=<the seed printed>`; the "after" kills
land where the machine's speed puts them.

Two processes under `accelerate launch`: one rank is killed in a training step; the launch must end within the
timeout with an error naming that rank, not hang, and leave a folder whose complete checkpoints load.
"""

import json
import multiprocessing
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from trl_rfm import RewardFeatureModel
from trl_rfm.testing import free_local_port, save_tiny_causal_lm
from trl_rfm.testing.killable_training import JobSpec, job_data, run_job
from trl_rfm.trainer.checkpointing import checkpoints_of, is_complete_checkpoint


pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
KILLS_PER_CHAIN = 5
ATOL = 1e-5
RUN_TIMEOUT_S = 180  # one run of the job (about 5 s alone; a loaded 2-core machine is slower)
LAUNCH_TIMEOUT_S = 120  # a 2-process launch from the kill to its exit
COMMIT_MOMENTS = ("os.replace", "os.rename", "renameat2-exchange")  # a save's commit starts with one of these


@pytest.fixture(scope="module")
def seed():
    return int(os.environ.get("TRL_RFM_KILL_SEED", random.SystemRandom().randrange(2**32)))


@pytest.fixture(scope="module")
def lm_path(tmp_path_factory):
    return save_tiny_causal_lm(tmp_path_factory.mktemp("lm") / "lm", job_data().vocabulary_texts(), seed=0)


@pytest.fixture(scope="module")
def forkserver():
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["trl_rfm.testing.killable_training"])
    return context


class Run:
    """One run of the job: the moments it went through, and how it ended (`"done"` or `"killed"`)."""

    def __init__(self, context, spec: JobSpec, kill: dict | None = None):
        self.moments, self.resumed_from, self.outcome = [], None, None
        receiver, sender = context.Pipe(duplex=False)
        stop_at = kill["moment"] if kill and kill["mode"] == "at" else None
        process = context.Process(target=run_job, args=(spec.to_dict(), sender, stop_at, True), daemon=True)
        process.start()
        sender.close()
        try:
            self._follow(process, receiver, kill)
        finally:
            if process.is_alive():  # killed, stopped, or done and waiting to be killed
                process.kill()
            process.join(30)
            receiver.close()
        if self.outcome is None:
            raise AssertionError(f"the job failed (exit code {process.exitcode}) after {self.moments[-3:]}")
        assert process.exitcode == -signal.SIGKILL, process.exitcode

    def _follow(self, process, receiver, kill):
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline:
            if not receiver.poll(1.0):
                if not process.is_alive() and not receiver.poll(0):
                    return
                continue
            try:
                kind, value = receiver.recv()
            except EOFError:
                return
            if kind == "moment":
                self.moments.append(value)
                if kill and kill["mode"] == "after" and value == kill["moment"]:
                    time.sleep(kill["delay"])
                    if process.is_alive():
                        process.kill()
                        self.outcome = "killed"
                        return
            elif kind == "stopped":
                process.kill()
                self.outcome = "killed"
                return
            elif kind == "resume":
                self.resumed_from = value
            elif kind == "done":
                self.outcome = "done"
                return
        raise AssertionError(f"the job did not finish within {RUN_TIMEOUT_S} s; last moments {self.moments[-3:]}")


def _batch(lm_path):
    from transformers import AutoTokenizer

    data = job_data()
    texts = [p + " " + c for p, c in zip(data.heldout["prompt"][:6], data.heldout["chosen"][:6])]
    return AutoTokenizer.from_pretrained(lm_path)(texts, return_tensors="pt", padding=True)


def _signature(folder, batch, where: str = ""):
    """The user ids of a saved model and everyone's rewards `[B, users + 1]` (the population last)."""
    try:
        model = RewardFeatureModel.from_pretrained(folder).eval()
    except Exception as error:  # noqa: BLE001  (any failure to load is the finding)
        raise AssertionError(f"{where}: {folder} does not load: {type(error).__name__}: {error}") from error
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    with torch.no_grad():
        rewards = torch.cat([base.rewards_for_users(**batch), model(**batch).logits], dim=-1)
    return list(base.user_ids), rewards


def _same(signature, expected) -> bool:
    return signature[0] == expected[0] and torch.allclose(signature[1], expected[1], rtol=0, atol=ATOL)


def _leftovers(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.name.startswith(("_tmp-", "_old-")))


def _draw_kill_points(rng: random.Random, moments: list[str], count: int) -> list[dict]:
    """`count` moments of the uninterrupted run, at most one per phase (a save's moments after a kill in it differ:
    the rerun's commit finds a folder in another state), covering a training step, two checkpoint saves, the final
    save and the adapt_users save; in a save, half the time from its commit on. In the run's order, so that each is
    reached by the runs that resume after the previous kill."""
    phases = list(dict.fromkeys(moment.split("/")[0] for moment in moments))
    steps = [phase for phase in phases if phase.startswith("step-")]
    checkpoints = [phase for phase in phases if phase.startswith("checkpoint-")]
    chosen = {rng.choice(steps), *rng.sample(checkpoints, 2), "final-save", "adapt-save"}
    chosen |= set(rng.sample([phase for phase in phases if phase not in chosen], count - len(chosen)))
    points = []
    for phase in sorted(chosen, key=phases.index):
        candidates = [m for m in moments if m.split("/")[0] == phase]
        commit = [i for i, m in enumerate(candidates) if m.split("/")[1].startswith(COMMIT_MOMENTS)]
        if commit and rng.random() < 0.5:  # half the time, from the first rename of the save on: where kills do harm
            candidates = candidates[commit[0] :]
        moment = rng.choice(candidates)
        mode = rng.choice(["at", "after"])
        points.append({"moment": moment, "mode": mode, "delay": round(rng.uniform(0.0, 0.02), 4)})
    return points


def _describe(point: dict) -> str:
    return point["moment"] + ("" if point["mode"] == "at" else f" +{point['delay'] * 1000:.0f} ms")


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_sigkill_at_random_moments_then_resume(lora, seed, lm_path, forkserver, tmp_path, capsys):
    rng = random.Random(f"{seed}-{'lora' if lora else 'full'}")
    batch = _batch(lm_path)
    reference_spec = JobSpec(model_path=lm_path, output_dir=str(tmp_path / "reference" / "run"), lora=lora)
    reference = Run(forkserver, reference_spec)
    assert reference.outcome == "done"
    output = Path(reference_spec.output_dir)
    expected_checkpoints = {Path(c).name: _signature(c, batch) for c in checkpoints_of(str(output))}
    assert sorted(expected_checkpoints) == ["checkpoint-2", "checkpoint-4", "checkpoint-6", "checkpoint-8"]
    adapted = _signature(output, batch)
    # The final model: the adapted one without the 2 new users (adding users changes no other row, nor the learned
    # population weights). Not the last checkpoint: the end of training refits the users' rows under their prior.
    final = (adapted[0][:-2], torch.cat([adapted[1][:, :-3], adapted[1][:, -1:]], dim=-1))
    assert final[0] == expected_checkpoints["checkpoint-8"][0]

    points = _draw_kill_points(rng, reference.moments, KILLS_PER_CHAIN)
    root = tmp_path / "killed"
    spec = JobSpec(model_path=lm_path, output_dir=str(root / "run"), lora=lora)

    def log(line: str) -> None:  # as it happens, so that a failure shows the kills before it
        with capsys.disabled():
            print(line, flush=True)

    log(f"\nseed {seed} ({'LoRA' if lora else 'full'}): {len(reference.moments)} moments in an uninterrupted run")
    kills = 0
    for point in points:
        run = Run(forkserver, spec, point)
        assert run.outcome == "killed", f"{_describe(point)} was not reached; the run went through {run.moments[-3:]}"
        kills += 1
        log(f"  kill {kills}: {_describe(point):<50} (the run had resumed from {run.resumed_from or 'the start'})")
        state = _check_after_kill(Path(spec.output_dir), batch, final, adapted, expected_checkpoints, point)
        log(f"          the folder holds {state}; {len(_leftovers(root))} staging folder(s) left")
    last = Run(forkserver, spec)
    assert last.outcome == "done"
    log(f"  then a run resumed from {last.resumed_from or 'the start'} and completed")

    assert _same(_signature(spec.output_dir, batch), adapted), "the resumed run ended with another model"
    for checkpoint in checkpoints_of(spec.output_dir):
        assert _same(_signature(checkpoint, batch), expected_checkpoints[Path(checkpoint).name]), checkpoint
    assert _leftovers(root) == [], f"left behind after the next run: {_leftovers(root)}"
    assert kills >= KILLS_PER_CHAIN


def _check_after_kill(output: Path, batch, final, adapted, expected_checkpoints, point) -> str:
    where = f"after a kill at {_describe(point)}"
    complete = [c for c in checkpoints_of(str(output)) if is_complete_checkpoint(c)]
    for checkpoint in complete:
        signature = _signature(checkpoint, batch, where)
        assert _same(signature, expected_checkpoints[Path(checkpoint).name]), f"{where}: {checkpoint} differs"
    # `config.json` commits a save into a folder without a model (written last, after a LoRA save's adapter files).
    if (output / "config.json").is_file():
        signature = _signature(output, batch, where)
        if _same(signature, final):
            return "the final model"
        assert _same(signature, adapted), f"{where}: the output folder holds a mixture (users {signature[0]})"
        return "the final model with the adapted users"
    return f"no final model; {Path(complete[-1]).name} loads" if complete else "no complete checkpoint yet"


def _reports(report_dir: Path) -> dict[int, list]:
    reports = {}
    for path in report_dir.glob("rank*.log"):
        lines = [line for line in path.read_text().splitlines() if line.endswith("]")]  # a line being written: later
        reports[int(path.stem[4:])] = [json.loads(line) for line in lines]
    return reports


def test_a_rank_killed_under_accelerate_launch_ends_the_launch_naming_it(seed, lm_path, tmp_path, capsys):
    """2 processes (DDP over gloo on CPU): rank `r`, drawn with the seed, stops in the forward of step 3 and is killed.
    The other rank must not wait for it forever: the launch ends within the timeout, with an error naming the lost
    rank, and the folder keeps its complete checkpoint, which loads."""
    rng = random.Random(f"{seed}-launch")
    rank = rng.choice([0, 1])
    moment = "step-3/forward#1"
    report_dir = tmp_path / "reports"
    report_dir.mkdir()
    spec = JobSpec(model_path=lm_path, output_dir=str(tmp_path / "run"))
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
        "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_local_port()),
        "-m", "trl_rfm.testing.killable_training", json.dumps(spec.to_dict()), str(report_dir), f"{rank}:{moment}",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(tmp_path / "launch.log", "w+") as log:
        launch = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + RUN_TIMEOUT_S
            stopped = None
            while stopped is None and launch.poll() is None and time.monotonic() < deadline:
                time.sleep(0.5)
                reports = _reports(report_dir)
                stopped = next((line for line in reports.get(rank, []) if line[1] == "stopped"), None)
            assert stopped is not None, f"rank {rank} did not reach {moment}:\n{Path(log.name).read_text()[-3000:]}"
            os.kill(stopped[0], signal.SIGKILL)
            killed_at = time.monotonic()
            try:
                launch.wait(LAUNCH_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"the launch still runs {LAUNCH_TIMEOUT_S} s after rank {rank} was killed: it hangs")
            ended_after = time.monotonic() - killed_at
        finally:
            if launch.poll() is None:
                launch.kill()
                launch.wait()
        log.seek(0)
        output = log.read()
    with capsys.disabled():
        print(f"\nseed {seed}: rank {rank} of 2 killed at {moment}; the launch ended {ended_after:.1f} s later")
    assert launch.returncode != 0
    # torch's elastic agent (under accelerate launch) ends the other rank and names the lost one as the root cause.
    root_cause = output.partition("Root Cause (first observed failure):")[2].partition("=====")[0]
    assert re.search(rf"rank\s*: {rank} \(local_rank: {rank}\)\s+exitcode\s*: -9", root_cause), output[-3000:]
    assert "Signal 9 (SIGKILL)" in root_cause, output[-3000:]
    checkpoint = Path(spec.output_dir) / "checkpoint-2"
    assert is_complete_checkpoint(str(checkpoint))
    assert RewardFeatureModel.from_pretrained(checkpoint).user_ids == ["user_0", "user_1", "user_2", "user_3"]
