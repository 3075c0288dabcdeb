"""The default process group is destroyed at interpreter exit by trl-rfm (issue 17), before finalisation, whether or
not the script destroyed it; registering twice registers once."""

import os
import subprocess
import sys
import textwrap


SCRIPT = textwrap.dedent(
    """
    import atexit, os, tempfile
    import torch.distributed as dist
    from trl_rfm.trainer.process_group import destroy_process_group_at_exit

    # Registered first, so it runs last: it sees what trl-rfm's handler left.
    atexit.register(lambda: print("initialized at the end:", dist.is_initialized()))
    destroy_process_group_at_exit()  # no group yet: nothing registered
    store = os.path.join(tempfile.mkdtemp(), "store")
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    destroy_process_group_at_exit()
    destroy_process_group_at_exit()
    if os.environ.get("DESTROY_FIRST"):
        dist.destroy_process_group()  # a script that already called accelerator.end_training()
    print("initialized before exit:", dist.is_initialized())
    """
)


def _run(env_extra: dict) -> str:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env={**os.environ, **env_extra}, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_process_group_is_destroyed_at_exit():
    assert _run({}).splitlines() == ["initialized before exit: True", "initialized at the end: False"]


def test_a_group_the_script_destroyed_is_left_alone():
    assert _run({"DESTROY_FIRST": "1"}).splitlines() == [
        "initialized before exit: False",
        "initialized at the end: False",
    ]
