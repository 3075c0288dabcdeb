"""trl-rfm ends a distributed run at interpreter exit: the process groups destroyed and freed, so that no
gloo worker thread is left to need the GIL while the interpreter finalises (an abort diagnosed from a
core dump in trl_rfm/trainer/process_group.py).

Two processes over gloo (`torchrun`): a DDP-wrapped layer trains a step and is deleted, as a script's last lines
would. Then torch's own `destroy_process_group()` leaves the gloo workers running (DDP's import of
`torch.distributed.nn` captured the group as a default argument), and trl-rfm's exit handler stops them.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from trl_rfm.testing import free_local_port


SCRIPT = textwrap.dedent(
    """
    import atexit, json, os
    import torch, torch.distributed as dist

    dist.init_process_group("gloo")
    # DDP imports torch.distributed.nn here, after the group exists (as in a script that builds its model after
    # init_process_group): its functions' `group=group.WORLD` defaults capture the group.
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 1))
    model(torch.randn(8, 4)).sum().backward()
    del model

    from trl_rfm.trainer.process_group import gloo_worker_states, release_process_groups_at_exit

    report = {"running": gloo_worker_states()}
    # Registered before trl-rfm's handler, so it runs after it: it sees what that handler left.
    # One file per rank: the ranks share torchrun's stdout, where two reports printed at once run into one line.
    report_path = os.path.join(os.environ["REPORT_DIR"], f"rank{os.environ['RANK']}.json")

    def write_report():
        with open(report_path, "w") as report_file:
            json.dump({**report, "at_exit": gloo_worker_states(), "initialized_at_exit": dist.is_initialized()},
                      report_file)

    atexit.register(write_report)
    if os.environ.get("TRL_RFM") == "1":
        release_process_groups_at_exit()
        release_process_groups_at_exit()  # registers once
    if os.environ.get("DESTROY_FIRST") == "1":
        dist.destroy_process_group()  # a script that already called accelerator.end_training()
    """
)


def _run(tmp_path, **env) -> list[dict]:
    """One report per rank."""
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_local_port()), str(script)]  # fmt: skip
    report_dir = tmp_path / "reports"
    report_dir.mkdir()
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "REPORT_DIR": str(report_dir), **env}
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads(path.read_text()) for path in sorted(report_dir.glob("rank*.json"))]
    assert len(reports) == 2, (result.stdout, result.stderr[-3000:])
    return reports


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="gloo worker threads are counted through /proc")
@pytest.mark.parametrize("destroy_first", ["0", "1"], ids=["script-leaves-group", "script-destroys-group"])
def test_exit_handler_stops_every_gloo_worker(destroy_first, tmp_path):
    for report in _run(tmp_path, TRL_RFM="1", DESTROY_FIRST=destroy_first):
        assert len(report["running"]) >= 1  # the workers the abort came from
        assert report["at_exit"] == []
        assert report["initialized_at_exit"] is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="gloo worker threads are counted through /proc")
def test_destroying_the_group_alone_leaves_the_workers_running(tmp_path):
    """The control: what trl-rfm's handler is for. If torch one day frees the group on `destroy_process_group()`,
    this fails and the handler's reference clearing can go."""
    for report in _run(tmp_path, TRL_RFM="0", DESTROY_FIRST="1"):
        assert len(report["at_exit"]) == len(report["running"]) >= 1
