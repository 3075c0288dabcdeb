"""
The end of a distributed run: on every rank, torch.distributed's process groups are destroyed and gloo's worker
threads stopped before the interpreter starts finalising, whether or not the script calls
`accelerator.end_training()`.

Why, from a core dump of the rank that aborted (`terminate called without an active exception` after a good save):
a `pt_gloo_runloop` worker thread finished a collective (an all-gather) and, destroying its work object, dropped the
last reference to a tensor that Python had created; that needs the GIL, but the main thread was already in
`Py_FinalizeEx`, so `take_gil` ended the worker with `pthread_exit`, whose forced unwind through a `noexcept`
destructor calls `std::terminate`. The worker threads outlive the script because `destroy_process_group()` does not
stop them (torch 2.13: as many `pt_gloo_runloop` threads after it as before; `tests/test_process_group.py`): they stop
only when the `ProcessGroup` object is freed, and it is not freed because

- modules imported after `init_process_group` captured the group as a default argument (`group=group.WORLD` in
  `torch.distributed.nn.functional`, `group=GroupMember.WORLD` in `deepspeed.comm.torch.TorchBackend`): defaults are
  evaluated once, so they hold the group for the life of the process; DeepSpeed also keeps groups in module globals
  (`deepspeed.utils.groups`);
- the trainer and its accelerator hold the DDP wrapper / DeepSpeed engine (which DeepSpeed's forward hooks on the
  model keep alive), which hold it too, as do ZeRO-3's partitioned parameters.

At exit (an `atexit` handler: it runs while the interpreter is whole) this module destroys the groups, drops those
references, and collects them; freeing a `ProcessGroup` from Python releases the GIL and joins its workers, so a
worker still destroying a work object can take the GIL and finish. If something else (a user's own reference to the
wrapped model) still holds a group, the handler waits, GIL released, until every gloo worker is idle.
"""

import atexit
import gc
import os
import sys
import time
import types
import warnings
import weakref

import torch.distributed as dist


GLOO_WORKER_THREAD_NAME = "pt_gloo_runloop"  # the name torch gives ProcessGroupGloo's worker threads (Linux)

_trainers: "weakref.WeakSet" = weakref.WeakSet()
_registered = False


def release_process_groups_at_exit(trainer=None) -> None:
    """Registers [`end_distributed_run`] to run at interpreter exit (once per process, when a process group exists),
    and `trainer` as one whose references to the wrapped model it drops then."""
    global _registered
    if not (dist.is_available() and dist.is_initialized()):
        return
    if trainer is not None:
        _trainers.add(trainer)
    if not _registered:
        atexit.register(end_distributed_run)
        _registered = True


def end_distributed_run() -> None:
    """Destroys the process groups (if the script has not), frees them, and returns once no gloo worker thread runs."""
    try:
        # Before the groups go: DeepSpeed's engine.destroy() (in accelerate's free_memory) still reads the rank.
        holders = [holder for trainer in list(_trainers) for holder in _drop_wrapped_model(trainer)]
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for holder in holders:
            _clear_destroyed_groups(getattr(holder, "__dict__", {}))
        del holders
        with warnings.catch_warnings():  # looking at every module global touches deprecated ones (`dist.reduce_op`)
            warnings.simplefilter("ignore")
            _clear_destroyed_group_references()
        gc.collect()  # frees the groups (and joins their workers) now that nothing holds them
    finally:
        wait_for_idle_gloo_workers()


def _drop_wrapped_model(trainer) -> list:
    """Drops the trainer's references to the DDP wrapper, DeepSpeed's engine and optimizer (DeepSpeed's forward hooks
    keep its engine alive regardless); returns them with the model's parameters (ZeRO-3: `ds_process_group` and its
    kin), the objects whose process groups are to be cleared once destroyed. At exit nothing trains any more."""
    holders = [trainer.model_wrapped, trainer.optimizer, getattr(trainer.optimizer, "optimizer", None)]
    holders += list(trainer.model.parameters())
    trainer.model_wrapped = trainer.model
    trainer.deepspeed = trainer.optimizer = trainer.lr_scheduler = None
    trainer.callback_handler.optimizer = trainer.callback_handler.lr_scheduler = None
    trainer.accelerator.free_memory()
    return holders


def _clear_destroyed_group_references() -> None:
    """Replaces by `None`, in loaded modules, the destroyed process groups held as module globals (DeepSpeed's
    `deepspeed.utils.groups`) and as default arguments of functions and methods (`None` is what every torch and
    DeepSpeed collective reads as the default group, and what those globals hold before initialisation)."""
    for module in list(sys.modules.values()):
        if not isinstance(module, types.ModuleType):
            continue
        try:  # a third-party module with an exotic namespace must not stop the rest of the exit
            namespace = vars(module)
            _clear_destroyed_groups(namespace)
            for value in list(namespace.values()):  # no getattr on unknown objects: lazy modules import on access
                if isinstance(value, types.FunctionType):
                    _clear_defaults(value)
                elif isinstance(value, type) and vars(value).get("__module__") == module.__name__:
                    for member in list(vars(value).values()):
                        if isinstance(member, (staticmethod, classmethod)):
                            member = member.__func__
                        if isinstance(member, types.FunctionType):
                            _clear_defaults(member)
        except Exception:  # noqa: BLE001
            continue


def _clear_destroyed_groups(namespace: dict) -> None:
    """Sets to `None` the entries of an object's or module's namespace that are destroyed process groups, or lists
    or tuples of nothing but."""
    for name, value in list(namespace.items()):
        if _is_destroyed_group(value) or (
            isinstance(value, list | tuple) and value and all(_is_destroyed_group(v) for v in value)
        ):
            namespace[name] = None


def _clear_defaults(function: types.FunctionType) -> None:
    if function.__defaults__ and any(_is_destroyed_group(d) for d in function.__defaults__):
        function.__defaults__ = tuple(None if _is_destroyed_group(d) else d for d in function.__defaults__)
    if function.__kwdefaults__ and any(_is_destroyed_group(d) for d in function.__kwdefaults__.values()):
        function.__kwdefaults__ = {
            k: None if _is_destroyed_group(d) else d for k, d in function.__kwdefaults__.items()
        }


def _is_destroyed_group(value) -> bool:
    if not isinstance(value, dist.ProcessGroup):
        return False
    return value not in dist.distributed_c10d._world.pg_map


def gloo_worker_states() -> list[str]:
    """The scheduler state (`R` running or runnable, `S` sleeping, ...) of each gloo worker thread of this process;
    empty when none is left (or where `/proc` does not exist)."""
    states = []
    task_dir = "/proc/self/task"
    if not os.path.isdir(task_dir):
        return states
    for thread in os.listdir(task_dir):
        try:
            with open(os.path.join(task_dir, thread, "comm")) as comm:
                if comm.read().strip() != GLOO_WORKER_THREAD_NAME:
                    continue
            with open(os.path.join(task_dir, thread, "stat")) as stat:
                states.append(stat.read().rsplit(")", 1)[1].split()[0])
        except OSError:  # the thread ended while being read
            continue
    return states


def wait_for_idle_gloo_workers(timeout: float = 10.0, settle: int = 3, interval: float = 0.01) -> bool:
    """Sleeps (the GIL released) until every gloo worker thread left has been asleep on its queue for `settle`
    consecutive checks, so that none is still finishing a collective when the interpreter finalises. Returns whether
    it settled within `timeout` seconds."""
    deadline, quiet = time.monotonic() + timeout, 0
    while quiet < settle:
        states = gloo_worker_states()
        quiet = quiet + 1 if all(state == "S" for state in states) else 0
        if not states or time.monotonic() > deadline:
            return not states or quiet >= settle
        time.sleep(interval)
    return True
