"""SIGINT and SIGTERM as requests to stop cleanly: the loop finishes its iteration, checkpoints and
returns, and the command exits 128 + the signal number (130, 143).

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

import signal
import threading

import torch


class StopSignal:
    """While active, SIGINT and SIGTERM only set a flag."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, every: int = 1):
        self.signum = 0
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
