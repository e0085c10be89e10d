"""The local pool of a sweep (lora_lab/sweep.py), and how a signal stops it: `parallel` workers
each hand Hydra's submitit_local launcher one job at a time; on SIGINT (Ctrl-C) or SIGTERM no worker
takes another job, the runs in flight get SIGINT (SIGKILL after STOP_GRACE_S, or at once on a second
signal), they stay unfinished and resume on the next launch, and SweepInterrupted carries what was
stopped and what never started. Jobs are the sweep's (anything with a run directory `path`).
"""

from __future__ import annotations

import collections
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from lora_lab.runs import FINAL_STATUSES, run_state


STOP_GRACE_S = 10.0  # how long stopped runs get to end on their own before SIGKILL


class SweepInterrupted(KeyboardInterrupt):
    """A local sweep stopped by SIGINT or SIGTERM: the runs in flight were stopped (they stay
    unfinished and resume on the next launch) and the queued ones never started. A KeyboardInterrupt,
    so that callers that do not know it (lora-lab reproduce) stop as on Ctrl-C."""

    def __init__(self, signum: int, stopped: int, not_started: int):
        self.signum, self.stopped, self.not_started = signum, stopped, not_started
        super().__init__(signum, stopped, not_started)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's code for a process ended by the signal: 130, 143

    def __str__(self) -> str:
        return (f"interrupted by {signal.Signals(self.signum).name}: stopped {_runs(self.stopped)} in flight, "
                f"{_runs(self.not_started)} never started; relaunch the same command to resume")


def _runs(n: int) -> str:
    return f"{n} run" if n == 1 else f"{n} runs"


class _Interrupts:
    """While a local pool runs, SIGINT and SIGTERM ask it to stop instead of ending this process:
    a KeyboardInterrupt would leave the workers launching the rest of the queue, and SIGTERM's default
    would leave the runs' processes running. The handler only records the signal (taking a lock in a
    handler can deadlock with the main thread it interrupts); a second signal asks for no grace."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.hurry = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum
        else:
            self.hurry = True

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is threading.main_thread():  # the only thread that may set handlers
            for sig in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(sig) is not signal.SIG_IGN:  # e.g. a background job of a script: left ignored
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)  # None: set outside Python
        self._previous.clear()


def run_pool(jobs: Sequence[Any], parallel: int, run_batch: Callable[[int, list[Any]], list[str]]) -> list[str]:
    """`parallel` workers, each handing the launcher one job at a time (the launcher blocks until its
    job ends, so this keeps every core busy without a barrier between batches). On SIGINT or SIGTERM
    no worker takes another job, the runs in flight are stopped (_stop_runs) and SweepInterrupted is
    raised once they have ended."""
    from concurrent.futures import ThreadPoolExecutor

    import psutil

    queue = collections.deque(enumerate(jobs))
    in_flight: set[int] = set()
    lines: dict[int, list[str]] = {}
    lock = threading.Lock()
    interrupts = _Interrupts()

    def work() -> None:
        # Inherited by the processes this thread starts: submitit's controllers then leave a terminal's
        # Ctrl-C to this process's handler (each would print a traceback and SIGKILL its run 1 s later).
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        while True:
            with lock:
                if interrupts.signum is not None or not queue:
                    return
                i, job = queue.popleft()
                in_flight.add(i)
            lines[i] = run_batch(i, [job])
            with lock:
                in_flight.discard(i)

    # Children this process had before the sweep are not the sweep's to stop.
    before = {p.pid for p in psutil.Process().children()}
    pool = ThreadPoolExecutor(max_workers=parallel)
    with interrupts:
        workers = [pool.submit(work) for _ in range(min(parallel, len(jobs)))]
        # Polled, not waited on: the handler sets a plain attribute (see _Interrupts).
        while interrupts.signum is None and not all(w.done() for w in workers):
            time.sleep(0.2)
        if interrupts.signum is not None:
            with lock:
                flight, never = sorted(in_flight), len(queue)
            _stop_runs(workers, before, lambda: interrupts.hurry)
            pool.shutdown(wait=False)
            stopped = sum(run_state(jobs[i].path)["state"] not in FINAL_STATUSES for i in flight)
            raise SweepInterrupted(interrupts.signum, stopped, never)
    pool.shutdown()
    for w in workers:
        w.result()  # a worker's own error, if any
    return [line for i in sorted(lines) for line in lines[i]]


def _stop_runs(workers: list[Future], before: set[int], hurry: Callable[[], bool],
               grace_s: float = STOP_GRACE_S) -> None:
    """Stop the runs in flight, then wait for the workers to return: a worker between its check and
    the start of its job's process would otherwise start a run after the stop. This process's new
    children are submitit's controllers; each runs one job process, which gets SIGINT (SIGTERM would
    not do: submitit's job process ignores it) and ends as interrupted (run_job). What is left after
    grace_s, or on a second signal, gets SIGKILL, the job before its controller (a controller killed
    first would orphan its job)."""
    import psutil

    signalled: set[int] = set()
    t0 = time.monotonic()
    # Bounded: a killed job leaves no result, which submitit waits 15 s for before its worker returns.
    while not all(w.done() for w in workers) and time.monotonic() - t0 < grace_s + 60:
        kill = hurry() or time.monotonic() - t0 > grace_s
        for controller in _live_children(psutil.Process(), exclude=before):
            for job in _live_children(controller):
                if kill:
                    for p in [*_live_children(job, recursive=True), job]:
                        _send(p, signal.SIGKILL)
                elif job.pid not in signalled:
                    _send(job, signal.SIGINT)
                    signalled.add(job.pid)
            if kill:
                _send(controller, signal.SIGKILL)
        time.sleep(0.1)


def _live_children(proc: Any, exclude: set[int] | frozenset[int] = frozenset(), recursive: bool = False) -> list[Any]:
    import psutil

    try:
        children = proc.children(recursive=recursive)
    except psutil.Error:  # gone meanwhile
        return []
    out = []
    for c in children:
        try:
            if c.pid not in exclude and c.status() != psutil.STATUS_ZOMBIE:
                out.append(c)
        except psutil.Error:
            pass
    return out


def _send(proc: Any, sig: int) -> None:
    import psutil

    try:
        proc.send_signal(sig)  # psutil checks that the pid was not reused meanwhile
    except psutil.Error:
        pass


def interrupt_once() -> None:
    """In a local run's process: the first SIGINT interrupts the run, later ones are ignored, so that
    its cleanup ends and its result reaches the launcher. Ctrl-C in a terminal reaches the run twice:
    from the terminal, and from the sweep (_stop_runs). The run's process inherits SIGINT blocked
    from the sweep's worker thread (run_pool); one that came meanwhile is delivered here."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
