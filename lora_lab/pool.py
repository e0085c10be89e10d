"""The local pool of a sweep (lora_lab/sweep.py), and how a signal stops it.

Workers (the default, `run_workers`): one process per parallel slot (lora_lab/worker.py) that
imports torch and transformers once and trains the queued runs one after another; a worker that
dies (segfault, out of memory, SIGKILL) is replaced, and its run is retried once on the new worker
(it resumes from its checkpoint) and recorded as failed if its worker dies again. One process per
run (`run_pool`, `workers=false`): `parallel` threads each hand Hydra's submitit_local launcher one
job at a time.

Either way, on SIGINT (Ctrl-C) or SIGTERM no run starts any more, the runs in flight are stopped
(SIGKILL after STOP_GRACE_S, or at once on a second signal), they stay unfinished and resume on the
next launch, and SweepInterrupted carries what was stopped and what never started. Jobs are the
sweep's (anything with a run directory `path`, a `run_id` and a `cfg`).
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from lora_lab.runs import FINAL_STATUSES, CorruptFile, RunBusy, RunDir, run_state
from lora_lab.worker import PROTOCOL


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


# -- workers: one process per slot, many runs each -----------------------------------------------------

WORKER_RETRIES = 1  # a run whose worker died is retried this many times on a new worker


class WorkerError(RuntimeError):
    """Workers cannot be started (e.g. a broken environment): the sweep stops taking runs."""


class _Worker:
    """A worker process (lora_lab/worker.py) and its pipes: jobs on its stdin, answers on its stdout,
    everything else it prints appended to `log`."""

    def __init__(self, slot: int, threads: int, log: Path):
        self.slot, self.log = slot, log
        with open(log, "a") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lora_lab.worker", "--threads", str(threads)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=f, text=True, bufsize=1,
                env={**os.environ, "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "false")})
        self.pid = self.proc.pid

    def ready(self) -> dict | None:
        """Its hello once it has imported what runs need; None if it ended first."""
        hello = self._read()
        if hello is not None and (not hello.get("ready") or hello.get("protocol") != PROTOCOL):
            raise WorkerError(f"worker {self.pid} speaks another protocol ({hello}); reinstall lora-lab")
        return hello

    def run(self, i: int, job: Any, threads: int) -> dict | None:
        """Send one job and wait for its answer; None if the worker died meanwhile."""
        msg = {"job": i, "run_id": job.run_id, "path": str(job.path), "config": job.cfg.to_dict(), "threads": threads}
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return None
        while True:
            answer = self._read()
            if answer is None or answer.get("job") == i:
                return answer

    def _read(self) -> dict | None:
        assert self.proc.stdout is not None
        for line in iter(self.proc.stdout.readline, ""):
            try:
                msg = json.loads(line)
            except ValueError:  # a line cut short by a signal
                continue
            if isinstance(msg, dict):
                return msg
        return None

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except OSError:
                pass

    def close(self, timeout: float = STOP_GRACE_S) -> None:
        """End of input: it exits when its run ends; SIGKILL if it does not within `timeout`."""
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()

    def how_it_ended(self) -> str:
        code = self.proc.wait()
        if code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exit code {code}"

    def log_tail(self, n: int = 3) -> str:
        try:
            lines = [ln for ln in self.log.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return " | ".join(lines[-n:])


def run_workers(jobs: Sequence[Any], parallel: int, threads: int, log_dir: Path,
                on_result: Callable[[dict], None] | None = None) -> list[str]:
    """Run the jobs on `parallel` worker processes of `threads` torch threads each, each worker taking
    the next queued job when it is done with one. Returns one line per job that did not end completed
    or diverged. On SIGINT or SIGTERM: no job starts any more, the workers' runs are stopped (SIGTERM;
    SIGKILL after STOP_GRACE_S or on a second signal) and SweepInterrupted is raised once they have
    ended. on_result: called with each answer (and its slot, attempt, worker pid), e.g. to log it."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    queue = collections.deque(enumerate(jobs))
    attempts: collections.Counter[int] = collections.Counter()
    in_flight: dict[int, int] = {}  # slot -> job index
    workers: dict[int, _Worker] = {}  # slot -> its live worker
    lines: dict[int, list[str]] = {}
    lock = threading.Lock()
    stop = threading.Event()  # no job starts any more
    errors: list[BaseException] = []
    interrupts = _Interrupts()

    def note(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def slot_loop(k: int) -> None:
        worker: _Worker | None = None
        failed_starts = 0
        try:
            while True:
                if worker is None:
                    with lock:
                        if stop.is_set() or interrupts.signum is not None or not queue:
                            return
                        worker = workers[k] = _Worker(k, threads, log_dir / f"worker-{k}.log")
                    if worker.ready() is None:
                        why = worker.how_it_ended()
                        with lock:
                            workers.pop(k, None)
                        if stop.is_set() or interrupts.signum is not None:
                            return
                        failed_starts += 1
                        if failed_starts > WORKER_RETRIES:
                            raise WorkerError(f"a worker process ended before it was ready ({why}), twice; its log "
                                              f"{worker.log}: {worker.log_tail()}")
                        worker = None
                        continue
                    failed_starts = 0
                with lock:
                    if stop.is_set() or interrupts.signum is not None or not queue:
                        return
                    i, job = queue.popleft()
                    in_flight[k] = i
                    attempts[i] += 1
                answer = worker.run(i, job, threads)
                if answer is not None and answer.get("status") != "interrupted":
                    with lock:
                        in_flight.pop(k, None)
                    if answer.get("status") not in FINAL_STATUSES:
                        error = answer.get("error") or ""
                        record = f" (traceback in {answer['record']})" if answer.get("record") else ""
                        lines[i] = [f"{job.run_id}: {answer.get('status')}: {error}{record}"]
                    if on_result:
                        on_result({**answer, "slot": k, "attempt": attempts[i]})
                    continue
                # The worker is gone, or stopped its run on a SIGTERM. A SIGTERM to the sweep's whole
                # process group reaches the worker as well as this process: give the sweep's own
                # handler a moment to say so before calling it a stop from outside.
                why = "stopped by SIGTERM" if answer is not None else worker.how_it_ended()
                deadline = time.monotonic() + 1.0
                while interrupts.signum is None and time.monotonic() < deadline:
                    time.sleep(0.05)
                worker.close(timeout=STOP_GRACE_S)
                with lock:
                    workers.pop(k, None)
                worker = None
                if stop.is_set() or interrupts.signum is not None:
                    return  # stopped by the sweep: the run stays unfinished, in flight, counted as stopped
                with lock:
                    in_flight.pop(k, None)
                if on_result:
                    on_result({"job": i, "run_id": job.run_id, "status": "worker died" if answer is None else "interrupted",
                               "error": why, "slot": k, "attempt": attempts[i]})
                if answer is not None:
                    lines[i] = [f"{job.run_id}: interrupted: its worker was {why}; the run is unfinished and "
                                "resumes on the next launch"]
                elif attempts[i] <= WORKER_RETRIES:
                    note(f"{job.run_id}: its worker died ({why}); retrying it on a new worker")
                    with lock:
                        queue.appendleft((i, job))
                else:
                    log = log_dir / f"worker-{k}.log"
                    lines[i] = [f"{job.run_id}: failed: its worker died ({why}) {attempts[i]} times; see {log}"]
                    _record_worker_death(job, f"WorkerDied: the worker process running this run died "
                                              f"{attempts[i]} times ({why}); its log: {log}")
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            with lock:
                errors.append(exc)
                stop.set()
        finally:
            if worker is not None:
                worker.close()
                with lock:
                    workers.pop(k, None)

    slots = [threading.Thread(target=slot_loop, args=(k,), daemon=True, name=f"worker-slot-{k}")
             for k in range(min(parallel, len(jobs)))]
    with interrupts:
        for t in slots:
            t.start()
        # Polled, not waited on: the signal handler sets a plain attribute (see _Interrupts).
        while interrupts.signum is None and any(t.is_alive() for t in slots):
            time.sleep(0.2)
        if interrupts.signum is not None:
            with lock:
                stop.set()
                live = list(workers.values())
            for w in live:
                w.signal(signal.SIGTERM)
            t0 = time.monotonic()
            while any(t.is_alive() for t in slots):
                if interrupts.hurry or time.monotonic() - t0 > STOP_GRACE_S:
                    with lock:
                        live = list(workers.values())
                    for w in live:
                        w.signal(signal.SIGKILL)
                time.sleep(0.1)
            # What the slots left in flight was stopped; what is queued never started.
            flight, never = sorted(in_flight.values()), len(queue)
            stopped = sum(run_state(jobs[i].path)["state"] not in FINAL_STATUSES for i in flight)
            raise SweepInterrupted(interrupts.signum, stopped, never)
    for t in slots:
        t.join()
    if errors:
        raise errors[0]
    return [line for i in sorted(lines) for line in lines[i]]


def _record_worker_death(job: Any, error: str) -> None:
    """summary.json of a run whose worker died on it more than WORKER_RETRIES times: failed, with
    why, so that `lora-lab status` shows it and a relaunch retries it. Only a run directory that the
    run has written (config.yaml) gets one, and only while nobody else holds it."""
    rd = RunDir(job.path)
    if not rd.config_path.is_file():
        return
    try:
        rd.lock()
    except RunBusy:
        return
    try:
        try:
            done = rd.summary()
        except CorruptFile:
            done = None
        if done and done.get("status") in FINAL_STATUSES:
            return
        steps = [r["step"] for r in rd.metrics() if "train_loss" in r or "reward" in r]
        rd.write_summary({"run_id": job.run_id, "method": job.cfg.method, "status": "failed",
                          "steps": steps[-1] if steps else 0, "error": error})
    finally:
        rd.unlock()
