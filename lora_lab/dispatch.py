"""A sweep's runs sent out: `launch_jobs` reports the states of a list of runs and launches those
not done, on this machine through the local workers (lora_lab/pool.py, lora_lab/worker.py) or one
submitit_local process per run, on SLURM as one job array per set of resources through Hydra's
submitit_slurm launcher (several runs per job with `runs_per_job`: PackedRuns), or submitted
without waiting (`--detach`: SlurmRuns). `lora-lab sweep` (lora_lab/sweep.py) and `lora-lab
reproduce` (lora_lab/reproduce.py) launch through it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import datetime as dt
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

from lora_lab.checks import check_run_root
from lora_lab.config import CONF_DIR, Config, experiment_overrides, from_dictconfig
from lora_lab.pool import SweepInterrupted, interrupt_once, run_pool, run_workers
from lora_lab.progress import DONE, SHOWN_STATES, _slurm_queue, _Watch, run_steps, shown_state, status_table
from lora_lab.runs import STATES, run_dir, run_id, run_state
from lora_lab.shared import share
from lora_lab.slurm import (Job, Queue, cluster_overrides, job_comment, pack_jobs, place_jobs, placement_note,
                            runs_per_job, submit, write_record)

QUEUED_SHOWN = 10  # queued runs named one by one when a launch skips them


def launch_jobs(title: str, jobs: list[Job], where: Path, launcher: str = "local", cluster: str | None = None,
                max_parallel: int | None = None, dry_run: bool = False, progress: bool = True,
                overrides: Sequence[str] = (), workers: bool = True, detach: bool = False) -> int:
    """Report the jobs' states and launch those not done; launcher files go to <where>/.sweeps/<time>
    (local workers: worker-<slot>.log, each worker's output, and runs.jsonl, a line per run ended;
    SLURM: slurm-<n>.json, the runs of each job, and .submitit/). A run whose lock a live process
    holds is not launched again, nor on SLURM one that a queued or running job holds (squeue).
    `detach` (SLURM): submit and return at once; the jobs write runs.jsonl and copy their finished
    runs to the experiments that share them (SlurmRuns)."""
    infos = [run_state(j.path) for j in jobs]
    queue = _slurm_queue(title, infos) if launcher == "slurm" else Queue()
    shown = [shown_state(i, queue.get(j.path)) for j, i in zip(jobs, infos)]
    todo = [j for j, s in zip(jobs, shown) if s not in DONE and s != "queued"]
    running = [j for j, i in zip(jobs, infos) if i["state"] == "running"]
    counts = {s: sum(x == s for x in shown) for s in SHOWN_STATES}
    # A run another experiment has (lora_lab/shared.py): copied if it finished there, else trained once.
    shared = share(todo, copy=not dry_run)
    todo = shared.launch
    print(f"{title}: {len(jobs)} runs; " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
          + f"; {len(todo) - len(running)} to launch", flush=True)
    if shared.note():
        print(f"{title}: {shared.note()}", flush=True)
    queued = [(j, queue[j.path]) for j, s in zip(jobs, shown) if s == "queued"]
    if queued and not dry_run:
        print(f"{title}: {len(queued)} run{'s are' if len(queued) > 1 else ' is'} held by SLURM jobs that are queued or "
              "running (squeue): not submitted again", flush=True)
        for j, q in queued[:QUEUED_SHOWN]:
            print(f"  {j.run_id}: {q.note()}", flush=True)
        if len(queued) > QUEUED_SHOWN:
            print(f"  ... and {len(queued) - QUEUED_SHOWN} more (`lora-lab status` lists them)", flush=True)
    if launcher == "slurm":
        place_jobs(todo, cluster)  # GPUs per run from the arm or the memory estimate
    if dry_run:
        rows = [{**i, "state": s, "note": queue[j.path].note() if j.path in queue and s != i["state"] else ""}
                for j, i, s in zip(jobs, infos, shown)]
        print(status_table(rows, [j.run_id for j in jobs], [run_steps(j.cfg) for j in jobs]))
        for j in todo:
            print("  " + placement_note(j) + " ".join(j.overrides))
        return 0
    unfit = [j for j in todo if j.placement is not None and not j.placement.fits]
    for j in unfit:
        print(f"not launched: {j.run_id} ({j.arm}): does not fit: {j.placement.why}", file=sys.stderr)
    # Runs of the same resources next to each other: one job array each (launch_by_resources).
    todo = sorted((j for j in todo if not any(j is u for u in unfit)), key=lambda j: sorted(j.resources.items()))
    if running:
        print(f"{len(running)} runs are running in another process; not launching them again", file=sys.stderr)
        todo = [j for j in todo if j not in running]
    if not todo:
        return 0 if counts["failed"] == 0 and not unfit else 1
    check_run_root(todo[0].cfg.run.root)  # a file or a read-only root: one line, before any launch
    cap = local_parallel(max_parallel) if launcher == "local" else None
    stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    sweep_dir = where / ".sweeps" / stamp
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "jobs.json").write_text(json.dumps({"title": title, "overrides": list(overrides),
                                                     "jobs": [{"run_id": j.run_id, "overrides": j.overrides} for j in todo]}, indent=1))
    if detach:
        return _submit_detached(title, todo, shared.held, cluster, max_parallel, sweep_dir, unfit)
    local_workers = launcher == "local" and workers
    if local_workers:
        cap = min(cap or 1, len(todo))
        threads = local_threads(max_parallel)
        how = (f"{cap} worker process{'es' if cap > 1 else ''} of {threads} torch thread{'s' if threads > 1 else ''}, "
               "each running one run after another")
    elif launcher == "local":
        how = f"at most {cap} at a time, a process per run"
    else:
        how = f"cluster profile {cluster or 'local'}"
    print(f"launching {len(todo)} runs ({launcher}, {how}); launcher files in {sweep_dir}", flush=True)
    try:
        held = {id(j) for j, _ in shared.held}  # trained by their twins: not work of their own
        watched = [j for j in jobs if id(j) not in held]
        with _Watch(watched, todo=todo, workers=cap if local_workers else None) if progress else contextlib.nullcontext():
            if local_workers:
                problems = run_workers(todo, cap, threads, sweep_dir, on_result=_log_result(sweep_dir / "runs.jsonl"))
            else:
                problems = launch(todo, launcher_overrides(launcher, cluster, max_parallel, sweep_dir), cap)
    except SweepInterrupted as exc:
        print(f"{title}: {exc}", file=sys.stderr, flush=True)
        raise
    if launcher == "slurm" and shared.held:  # their twins were submitted, not trained yet
        print(f"{title}: {len(shared.held)} runs are copied from their twins' runs once those end: run this "
              "command again then", flush=True)
    else:
        problems = list(problems) + shared.fill()
    final = [run_state(j.path) for j in jobs]
    counts = {s: sum(i["state"] == s for i in final) for s in STATES}
    print(f"{title}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n), flush=True)
    for line in problems:
        print(f"  not done: {line}", file=sys.stderr)
    return 0 if all(i["state"] in DONE for i in final) else 1


def _submit_detached(title: str, todo: list[Job], held: list[tuple[Job, Job]], cluster: str | None,
                     max_parallel: int | None, sweep_dir: Path, unfit: list[Job]) -> int:
    """launch_jobs's detached submission: the jobs of `todo`, each copying its finished run to the
    held jobs it trains (shared runs); returns at once (1 if something could not be submitted)."""
    submitted = {id(j) for j in todo}
    copies: dict[Path, list[Job]] = {}
    for job, twin in held:
        if id(twin) in submitted:
            copies.setdefault(twin.path, []).append(job)
    print(f"submitting {len(todo)} runs (slurm, cluster profile {cluster or 'local'}, detached); launcher files in "
          f"{sweep_dir}", flush=True)
    problems = launch(todo, launcher_overrides("slurm", cluster, max_parallel, sweep_dir), None, detach=True,
                      copies=copies)
    waiting = len(held) - sum(map(len, copies.values()))
    if waiting:  # their twins run in another process, which does not copy them
        print(f"{title}: {waiting} runs are copied from their twins' runs once those end: run this command "
              "again then", flush=True)
    for line in problems:
        print(f"  not submitted: {line}", file=sys.stderr)
    return 1 if problems or unfit else 0


def _log_result(path: Path):
    """on_result of run_workers: a JSON line per run that ended in a worker, with its worker and time."""
    lock = threading.Lock()

    def log(result: dict) -> None:
        line = {k: result.get(k) for k in ("run_id", "status", "code", "error", "record", "steps", "wall_s", "pid",
                                           "slot", "attempt")}
        with lock, open(path, "a") as f:
            f.write(json.dumps({**line, "ended_at": dt.datetime.now().isoformat(timespec="seconds")}) + "\n")

    return log


# -- through Hydra's submitit launcher -------------------------------------------------------------

def run_job(dcfg: Any) -> dict:
    """Hydra task function: one run of the grid, in a submitit job. Never raises (a failed run is
    recorded in its summary.json), so that one bad run does not stop the rest of a batch."""
    import torch

    from lora_lab.launch import train

    if "SLURM_CPUS_PER_TASK" not in os.environ:
        from hydra.core.hydra_config import HydraConfig

        threads = HydraConfig.get().launcher.get("cpus_per_task")
        if threads:
            torch.set_num_threads(int(threads))
    cfg = from_dictconfig(dcfg)
    local = os.environ.get("SUBMITIT_EXECUTOR") == "local"
    try:
        if local:
            interrupt_once()
        summary = train(cfg)
        return {"run_id": run_id(cfg), "status": summary.get("status")}
    except KeyboardInterrupt:
        if not local:
            raise
        # A stopped local sweep (_stop_runs): the run stays unfinished (train() wrote no summary).
        # A result lets the launcher return at once instead of waiting for one that never comes.
        return {"run_id": run_id(cfg), "status": "interrupted"}
    except Exception as exc:  # recorded by train() in summary.json
        return {"run_id": run_id(cfg), "status": "failed", "error": f"{type(exc).__name__}: {exc}"}


class PackedRuns:
    """The Hydra task function of a sweep whose SLURM jobs hold several runs (`runs_per_job`): job n
    runs its own grid point (the config Hydra composed for it) and then the other runs of its pack,
    one after another in the job's process (lora_lab/worker.py run_pack, a local worker's code). A
    requeued job runs its pack again: the finished runs are skipped by their run directories, the
    interrupted one resumes from its checkpoint."""

    def __init__(self, rest: dict[int, list[dict]]):
        self.rest = rest  # job number -> the resolved configs of the pack's other runs

    def __call__(self, dcfg: Any) -> dict:
        from hydra.core.hydra_config import HydraConfig

        from lora_lab.worker import run_pack

        configs = [from_dictconfig(dcfg)] + [from_dictconfig(d) for d in self.rest.get(HydraConfig.get().job.num, [])]
        runs = run_pack(configs)
        worst = next((r for r in runs if r["status"] not in DONE), runs[0])
        return {"run_id": runs[0]["run_id"], "status": worst["status"], "error": worst.get("error"), "runs": runs}


class SlurmRuns:
    """What a detached SLURM job runs (`sweep --detach`): its runs one after another in the job's
    process, as a packed job's (lora_lab/worker.py run_config, the process's state put back before
    each), and after each what the sweep's process does for the runs it waits for: a finished run is
    copied into the experiments that share it (lora_lab/shared.py), and a line per run ended goes to
    the sweep's runs.jsonl. Nothing is left for a process that waits: a run's directory is complete
    when its job ends. A requeued job (time limit, preemption: `checkpoint`) runs its pack again: the
    finished runs are skipped, the interrupted one resumes."""

    def __init__(self, log: str):
        self.log = log  # <sweep dir>/runs.jsonl

    def __call__(self, configs: list[dict], copies: list[list[dict]]) -> dict:
        from lora_lab.distributed import env_from_environ, world_size_from_env
        from lora_lab.launch import outcome
        from lora_lab.worker import Baseline, run_config

        # A run of several tasks (FSDP2) is never packed (pack_jobs): every task trains it, rank 0 records it.
        several = world_size_from_env() > 1
        baseline = None if several else Baseline()
        runs = []
        for d, twins in zip(configs, copies):
            cfg = from_dictconfig(d)
            before = run_state(run_dir(cfg))["state"]  # a requeued pack meets its finished runs again
            result = outcome(cfg) if several else run_config(cfg, baseline)
            runs.append(result)
            if env_from_environ().is_main:
                self.ended(cfg, result, [from_dictconfig(t) for t in twins], logged=before in DONE)
        return {"runs": runs}

    def ended(self, cfg: Config, result: dict, twins: list[Config], logged: bool) -> None:
        """After a run: copy it to its twins if it finished, and (unless an earlier attempt of the job
        did) append its line to runs.jsonl."""
        from lora_lab.shared import SharePlan

        held = [(Job([], t), Job([], cfg)) for t in twins]
        if result["status"] in DONE:
            SharePlan(held=held).fill()
        if logged:
            return
        line = {k: result.get(k) for k in ("run_id", "status", "code", "error", "record", "steps", "wall_s")}
        copied = [str(j.path) for j, _ in held if run_state(j.path)["state"] in DONE]
        with open(self.log, "a") as f:
            f.write(json.dumps({**line, "slurm_job_id": _slurm_job_id(), "host": os.uname().nodename,
                                "copied_to": copied, "ended_at": dt.datetime.now().isoformat(timespec="seconds")}) + "\n")

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's hook on SIGUSR2 (time limit, preemption): requeue this job as it was submitted."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _slurm_job_id() -> str | None:
    """This SLURM job's id as squeue shows it (`123_4` for an array element)."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


def resource_groups(packs: list[list[Job]]) -> list[tuple[int, list[list[Job]]]]:
    """(index of the first pack, the packs) of each run of consecutive packs with the same resources:
    one job array each."""
    groups: list[tuple[int, list[list[Job]]]] = []
    for i, pack in enumerate(packs):
        if groups and groups[-1][1][-1][0].resources == pack[0].resources:
            groups[-1][1].append(pack)
        else:
            groups.append((i, [pack]))
    return groups


def submit_detached(params: dict, packs: list[list[Job]], record: Path, copies: dict[Path, list[Job]]) -> list[str]:
    """Submit the packs as SLURM job arrays running SlurmRuns (one array per set of resources, as
    launch_by_resources groups them, with a submitit_slurm launcher's settings) and return at once,
    printing each array's job ids. Returns a line per array that could not be submitted."""
    fn = SlurmRuns(str(record.parent / "runs.jsonl"))
    problems = []
    for start, batch in resource_groups(packs):
        settings = {**params, **batch[0][0].resources, "comment": job_comment(record, start)}
        args = [([j.cfg.to_dict() for j in pack], [[c.cfg.to_dict() for c in copies.get(j.path, [])] for j in pack])
                for pack in batch]
        runs = sum(map(len, batch))
        try:
            ids = submit(settings, fn, args)
        except Exception as exc:  # noqa: BLE001 - sbatch refused it (a bad partition, account, limit)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            problems.append(f"{runs} run(s) in {len(batch)} job(s) from #{start}: not submitted: "
                            f"{type(exc).__name__}: {first}")
            continue
        shown = ids[0] if len(ids) == 1 else f"{ids[0].partition('_')[0]}_[0-{len(ids) - 1}]"
        print(f"submitted {runs} run{'s' if runs != 1 else ''} in {len(ids)} SLURM job{'s' if len(ids) != 1 else ''}: "
              f"{shown}", flush=True)
    return problems


def _fresh_record(sweep_dir: Path) -> Path:
    """<sweep dir>/slurm-<n>.json, the first n not taken (launches in the same second share a directory)."""
    n = 0
    while (sweep_dir / f"slurm-{n}.json").exists():
        n += 1
    return sweep_dir / f"slurm-{n}.json"


def launch_by_resources(hlauncher: Any, packs: list[list[Job]], run_batch: Any) -> list[str]:
    """Launch SLURM packs (consecutive when they share resources: launch_jobs sorts them) as one job
    array per set of resources, each from a copy of the launcher with the profile's settings updated,
    at the same time (each array blocks until its jobs end). Job numbers stay the packs' indices."""
    groups = resource_groups(packs)
    if len(groups) == 1 and not packs[0][0].resources:
        return run_batch(0, packs)

    def one(start: int, batch: list[list[Job]]) -> list[str]:
        launcher = copy.copy(hlauncher)
        res = batch[0][0].resources
        launcher.params = {**hlauncher.params, **res}
        if int(res.get("tasks_per_node", 1)) * int(res.get("nodes", 1)) > 1:
            launcher.task_function = run_job  # a run of several tasks is never packed (pack_jobs)
        return run_batch(start, batch, launcher)

    with concurrent.futures.ThreadPoolExecutor(len(groups)) as pool:
        futures = [pool.submit(one, start, batch) for start, batch in groups]
        return [line for f in futures for line in f.result()]


def local_parallel(max_parallel: int | None) -> int:
    # Default: one single-threaded run per core, the best throughput for the tiny models here.
    return max_parallel or (os.cpu_count() or 1)


def local_threads(max_parallel: int | None) -> int:
    """torch threads of each local run: the cores shared out among the runs at a time."""
    return max(1, (os.cpu_count() or 1) // local_parallel(max_parallel))


def launcher_overrides(launcher: str, cluster: str | None, max_parallel: int | None, sweep_dir: Path) -> list[str]:
    common = [f"hydra.sweep.dir={sweep_dir}", "hydra.sweep.subdir=${hydra.job.num}"]
    if launcher == "local":
        threads = local_threads(max_parallel)
        return ["hydra/launcher=submitit_local", f"hydra.launcher.cpus_per_task={threads}",
                "hydra.launcher.timeout_min=10080", *common]
    # The profile's array_parallelism, unless max_parallel is given on the command line.
    cap = [f"hydra.launcher.array_parallelism={max_parallel}"] if max_parallel else []
    return ["hydra/launcher=submitit_slurm", *cluster_overrides(cluster or "local"), *cap, *common]


def launch(jobs: list[Job], launcher_args: list[str], parallel: int | None, detach: bool = False,
           copies: dict[Path, list[Job]] | None = None) -> list[str]:
    """Send the jobs through Hydra's submitit launcher. Local (parallel set): `parallel` workers
    (_run_pool); SIGINT or SIGTERM stops them and raises SweepInterrupted. SLURM (parallel None):
    one job array; the cluster profile's array_parallelism caps it; each job's comment names the
    record of its runs (lora_lab/slurm.py queued_runs). Returns one line per job that did not end
    completed or diverged. `detach` (SLURM): submit with the same settings and return at once
    (submit_detached); `copies`: run directory -> the jobs that take a copy of it once it ends."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.plugins import Plugins
    from hydra.core.utils import JobStatus
    from hydra.types import HydraContext, RunMode

    from lora_lab.config import register_configs, search_path_overrides

    register_configs()
    GlobalHydra.instance().clear()
    hydra = Hydra.create_main_hydra2("lora-lab", create_config_search_path(str(CONF_DIR)))
    # The launcher's own config needs only the search path (for the jobs' +experiments=...) and its
    # settings: the profile's, then any hydra.launcher.* given on the command line.
    extra = list(dict.fromkeys(o for j in jobs for o in j.launcher_args))
    overrides = [*search_path_overrides(["+experiments=_"]), *launcher_args, *extra]
    cfg = hydra.compose_config("config", overrides=overrides, run_mode=RunMode.MULTIRUN, with_log_configuration=True)
    # runs_per_job (a cluster profile's key, not submitit's): several runs one after another per SLURM job.
    per_job = runs_per_job(cfg.hydra.launcher.get("runs_per_job"), "hydra.launcher")
    tasks = int(cfg.hydra.launcher.get("tasks_per_node") or 1) * int(cfg.hydra.launcher.get("nodes") or 1)
    if parallel is not None or tasks > 1:
        if per_job > 1:
            print(f"runs_per_job={per_job} ignored: {'local runs' if parallel is not None else f'jobs of {tasks} tasks'} "
                  "take one run per job", file=sys.stderr)
        per_job = 1
    packs = pack_jobs(jobs, per_job)
    task: Any = run_job
    if per_job > 1:
        task = PackedRuns({n: [j.cfg.to_dict() for j in pack[1:]] for n, pack in enumerate(packs)})
        print(f"{len(jobs)} runs in {len(packs)} SLURM job{'s' if len(packs) > 1 else ''} of up to {per_job} runs each",
              flush=True)
    HydraConfig.instance().set_config(cfg)
    from hydra._internal.callbacks import Callbacks

    context = HydraContext(config_loader=hydra.config_loader, callbacks=Callbacks(cfg))
    hlauncher = Plugins.instance().instantiate_launcher(config=cfg, hydra_context=context, task_function=task)
    hlauncher.params.pop("runs_per_job", None)  # not a submitit parameter
    runs_record = None
    if parallel is None and type(hlauncher).__name__ == "SlurmLauncher":
        runs_record = _fresh_record(Path(str(cfg.hydra.sweep.dir)))
        write_record(runs_record, packs, copies)
    if detach:
        if runs_record is None:
            raise ValueError("a detached launch needs hydra/launcher=submitit_slurm")
        return submit_detached(hlauncher.params, packs, runs_record, copies or {})

    def run_batch(start: int, batch: list[list[Job]], launcher: Any = None) -> list[str]:
        if runs_record is not None:  # squeue then tells which runs this job holds
            launcher = copy.copy(launcher or hlauncher)
            launcher.params = {**launcher.params, "comment": job_comment(runs_record, start)}
        try:
            # As Hydra's own sweepers do: each job's overrides are the task's followed by its grid point
            # (a pack's first run; PackedRuns brings the others); an experiment file as config.experiment_file
            # registered it, which the job's copy of Hydra's state carries.
            points = [[*experiment_overrides(p[0].master), *p[0].overrides] for p in batch]
            results = (launcher or hlauncher).launch(points, initial_job_idx=start)
        except Exception as exc:  # e.g. a SLURM job cancelled: submitit cannot return its result
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            return [f"{sum(map(len, batch))} run(s) in {len(batch)} job(s) from #{start}: {type(exc).__name__}: {first}"]
        out = []
        for pack, res in zip(batch, results):
            if res.status != JobStatus.COMPLETED:
                # The job died: name the pack's runs it left unfinished.
                out += [f"{job.run_id}: {res._return_value!r}" for job in pack if run_state(job.path)["state"] not in DONE]
                continue
            ran = res.return_value.get("runs") or [res.return_value]
            for job, r in zip(pack, ran):
                if r.get("status") not in DONE:
                    record = f" (traceback in {r['record']})" if r.get("record") else ""
                    out.append(f"{job.run_id}: {r.get('status')}: {r.get('error') or ''}{record}")
        return out

    if parallel is None:
        return launch_by_resources(hlauncher, packs, run_batch)
    return run_pool(jobs, parallel, lambda start, batch: run_batch(start, [[j] for j in batch]))
