"""SIGINT, SIGTERM and SIGUSR1 as requests to stop cleanly: the loop finishes its iteration,
checkpoints and returns, and the command exits 128 + the signal number (130, 143, 138). SIGUSR1 is
what a cluster sends before a job's time limit (SLURM: --signal=USR1@120; scripts/slurm.sbatch):
its exit code and message say to requeue the job with the same command line (init_from: auto).

    early = catch_early()      # at the start of train: a SIGUSR1 during start-up is kept, not fatal

    with StopSignal(every=log_interval) as stop:
        while ...:
            if stop.received(accelerator, iter_num): ...
    with RaiseOnSignal():     # a wait that must end at once: the signal raises Interrupted(signum)
        future.result()

With several processes every process must stop at the same iteration, so their flags are
gathered: an all-gather and a device-to-host read. That happens only at multiples of `every`
(the loop passes log_interval, where it reads the loss on the host anyway), the same iterations
on every process; a signal takes effect within `every` iterations.
"""

import os
import signal
import threading

import torch

USR1 = getattr(signal, "SIGUSR1", None)  # not on Windows
_early = {"signum": 0}  # a SIGUSR1 received before the loop began


def catch_early() -> None:
    """Keep a SIGUSR1 that arrives during start-up (its default action ends the process at once) for
    the loop's StopSignal, which stops at its first iteration then. Main thread only."""
    if USR1 is not None and threading.current_thread() is threading.main_thread():
        signal.signal(USR1, lambda signum, frame: _early.update(signum=signum))


class StopSignal:
    """While active, SIGINT, SIGTERM and SIGUSR1 only set a flag."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM) + ((USR1,) if USR1 is not None else ())

    def __init__(self, every: int = 1):
        self.signum, _early["signum"] = _early["signum"], 0
        self.every = max(1, every)

    def __enter__(self):
        self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame):
        self.signum = signum

    def received(self, accelerator, iter_num: int) -> int:
        """The signal any process got; with several processes, looked at when iter_num is a
        multiple of `every` only (0 otherwise)."""
        if accelerator.num_processes == 1:
            return self.signum
        if iter_num % self.every:
            return 0
        return int(accelerator.gather(torch.tensor([self.signum], device=accelerator.device)).max().item())


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def next_step(signum: int) -> str:
    """What to run after a stop by `signum`: SIGUSR1 (a cluster's time limit) is a requeue."""
    if signum != USR1:
        return "continue with --init_from=resume"
    job = os.environ.get("SLURM_JOB_ID")
    requeue = f"scontrol requeue {job}" if job else "requeue the job"
    return (f"the job's time is nearly up: {requeue} with the same command line (init_from: auto resumes this "
            "checkpoint; scripts/slurm.sbatch requeues itself)")


class Interrupted(Exception):
    def __init__(self, signum: int):
        super().__init__(signal_name(signum))
        self.signum = signum


class RaiseOnSignal(StopSignal):
    """While active, SIGINT and SIGTERM raise Interrupted(signum) in the main thread: for a wait
    that must end at once (the final push). Elsewhere than the main thread it does nothing."""

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            return super().__enter__()
        self.previous = {}
        return self

    def _handle(self, signum, frame):
        raise Interrupted(signum)
