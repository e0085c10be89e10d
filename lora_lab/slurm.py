"""A sweep's runs on SLURM: the Job each grid point becomes (its run, and the resources it is
launched with), the cluster profiles slurm/<cluster>.yaml (submitit's settings plus lora-lab's own
keys: gpu_mem_gib, max_gpus_per_node, max_nodes), the GPUs and nodes of each run (from the command
line's hydra.launcher.*, the experiment's arm, else the fewest whose memory estimate fits:
lora_lab/memory.py place), several runs packed into one SLURM job (`runs_per_job`), and which runs
SLURM's queue holds: every job lora-lab submits carries `--comment=lora-lab:<record>#<first pack>`,
the record (<sweep dir>/slurm-<n>.json) naming the runs of each of its jobs, so that `squeue` tells
which runs are queued or running (`queued_runs`), whoever submitted them. The launching itself is
lora_lab/dispatch.py's; `submit` sends packs without waiting for them (`sweep --detach`).

    lora-lab sweep paper/rank_tulu3_llama8b launcher=slurm cluster=example-gpu --dry-run   # each run's GPUs
    squeue -o '%i %T %j %k'    # lora-lab's jobs: their comment names the record of their runs
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote, unquote

from lora_lab.config import CONF_DIR, Config, ConfigError
from lora_lab.runs import run_dir, run_id

SLURM_DIR = Path(os.environ.get("LORA_LAB_SLURM", CONF_DIR.parent / "slurm"))


@dataclass
class Job:
    overrides: list[str]  # the grid point: what the launcher adds to the experiment's overrides
    cfg: Config
    arm: str = "grid"     # the name of the grid (hydra.sweeper.grids) it came from
    master: tuple[str, ...] = ()  # the experiment's overrides shared by its runs (+experiments=..., fixed)
    launcher_args: tuple[str, ...] = ()  # hydra.launcher.* given on the command line
    request: dict = field(default_factory=dict)  # the arm's launcher.gpus_per_node / launcher.nodes
    placement: Any = None  # SLURM: memory.Placement, the GPUs chosen for it (place_jobs)
    resources: dict = field(default_factory=dict)  # SLURM: submitit settings that differ from the profile's

    @property
    def path(self) -> Path:
        return run_dir(self.cfg)

    @property
    def run_id(self) -> str:
        return run_id(self.cfg)


def pack_jobs(jobs: list[Job], runs_per_job: int) -> list[list[Job]]:
    """The grid's runs in packs of up to runs_per_job consecutive runs, one SLURM job each; runs
    launched with different hydra.launcher.* settings never share a job."""
    packs: list[list[Job]] = []
    for job in jobs:
        if (packs and len(packs[-1]) < runs_per_job and packs[-1][0].launcher_args == job.launcher_args
                and packs[-1][0].resources == job.resources and int(job.resources.get("tasks_per_node", 1)) == 1):
            packs[-1].append(job)
        else:
            packs.append([job])
    return packs


def runs_per_job(value: Any, where: str) -> int:
    """A profile's runs_per_job (default 1: one run per SLURM job), checked (ConfigError, exit 2)."""
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        if not (isinstance(value, str) and value.isdigit() and int(value) >= 1):
            raise ConfigError(f"{where}: runs_per_job={value}: expected a positive integer (runs run one after "
                              "another in each SLURM job; 1 = a job per run)")
    return int(value)


def cluster_overrides(cluster: str) -> list[str]:
    """slurm/<cluster>.yaml (keys of hydra-submitit-launcher's submitit_slurm) -> hydra.launcher.* overrides."""
    profile = cluster_profile(cluster)
    runs_per_job(profile.get("runs_per_job"), f"slurm/{cluster}.yaml")  # a bad value stops here
    out = []
    for key, value in profile.items():
        if key in PROFILE_KEYS:  # lora-lab's own (place_jobs), not submitit's
            continue
        out.append(f"++hydra.launcher.{key}={json.dumps(value) if not isinstance(value, str) else value}")
    return out


def cluster_profile(cluster: str) -> dict:
    """slurm/<cluster>.yaml as a dict, its lora-lab keys (PROFILE_KEYS) checked."""
    from omegaconf import OmegaConf

    path = SLURM_DIR / f"{cluster}.yaml"
    # A profile name, not a path: `cluster=../x` must not read a file outside slurm/.
    if not re.fullmatch(r"[\w.\-]+", cluster) or cluster.startswith("."):
        raise ConfigError(f"cluster={cluster}: a profile name of slurm/ (letters, digits, '.', '-', '_'), not a path")
    if not path.is_file():
        names = sorted(p.stem for p in SLURM_DIR.glob("*.yaml"))
        raise ConfigError(f"cluster={cluster}: no profile slurm/{cluster}.yaml; choose one of {', '.join(names)} "
                          "or write one (README: cluster profiles)")
    profile = OmegaConf.to_container(OmegaConf.load(path), resolve=True) or {}
    for key in PROFILE_KEYS:
        if key in profile:
            _positive(profile[key], f"slurm/{cluster}.yaml: {key}", float if key == "gpu_mem_gib" else int)
    return profile


# -- SLURM resources: GPUs per run -----------------------------------------------------------------
# A cluster profile names its GPUs' memory and how far a run may spread; lora-lab reads these keys
# itself (submitit does not take them). An experiment's arm may set its GPUs (ARM_KEYS); otherwise
# each run gets the fewest GPUs whose memory estimate fits (lora_lab/memory.py place), one
# process per GPU (FSDP2 over srun tasks).
PROFILE_KEYS = ("gpu_mem_gib", "max_gpus_per_node", "max_nodes")
ARM_KEYS = {"launcher.gpus_per_node": "gpus_per_node", "launcher.nodes": "nodes"}


def _positive(value: Any, where: str, kind: type = int) -> Any:
    try:
        out = kind(value)
        ok = out > 0 and not isinstance(value, bool) and (kind is not int or float(value) == out)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"{where}={value}: expected a positive {'integer' if kind is int else 'number'}")
    return out


def arm_requests(grid: Any, experiment: str) -> dict[str, dict]:
    """arm -> {gpus_per_node, nodes} from the arm's `launcher.gpus_per_node` / `launcher.nodes` keys
    (its SLURM resources; ConfigError for any other launcher.* key or a value that is not a positive
    integer)."""
    out = {}
    for name, axes in (grid.get("grids") or {}).items():
        for key, value in dict(axes or {}).items():
            if not str(key).startswith("launcher."):
                continue
            where = f"{experiment}: hydra.sweeper.grids.{name}.{key}"
            if key not in ARM_KEYS:
                raise ConfigError(f"{where}: not an arm resource; an arm takes {', '.join(ARM_KEYS)}")
            out.setdefault(name, {})[ARM_KEYS[key]] = _positive(value, where)
    return out


def _launcher_value(job: Job, key: str) -> int | None:
    """hydra.launcher.<key>=N given on the command line for this job, if any."""
    for arg in job.launcher_args:
        k, _, v = arg.lstrip("+").partition("=")
        if k == f"hydra.launcher.{key}":
            return _positive(v, arg.partition("=")[0])
    return None


def place_jobs(jobs: list[Job], cluster: str | None) -> None:
    """Set each job's SLURM placement and resources from the profile: GPUs per node and nodes from
    the command line's hydra.launcher.*, else the job's arm, else the fewest GPUs (from the profile's
    gpus_per_node up to max_gpus_per_node on a node, then up to max_nodes nodes) whose estimate fits
    gpu_mem_gib (default 80) less memory.RESERVE_GIB. One task per GPU; mem_gb (per node)
    scales with the GPUs. A profile without gpus_per_node (a CPU cluster) places nothing unless asked."""
    from lora_lab import memory

    profile = cluster_profile(cluster or "local")
    base_gpus = profile.get("gpus_per_node")
    base_nodes = int(profile.get("nodes") or 1)
    for job in jobs:
        asked = {k: _launcher_value(job, k) or job.request.get(k) for k in ("gpus_per_node", "nodes")}
        if not base_gpus and not any(asked.values()):
            continue
        min_gpus = int(base_gpus or 1)
        where = memory.place(
            job.cfg, float(profile.get("gpu_mem_gib") or memory.DEFAULT_GPU_GIB), min_gpus=min_gpus,
            max_gpus_per_node=int(profile.get("max_gpus_per_node") or min_gpus),
            max_nodes=int(profile.get("max_nodes") or base_nodes), **{k: v for k, v in asked.items() if v})
        job.placement = where
        res = {"gpus_per_node": where.gpus_per_node, "tasks_per_node": where.gpus_per_node, "nodes": where.nodes}
        if profile.get("mem_gb") and where.gpus_per_node != min_gpus:
            res["mem_gb"] = int(round(float(profile["mem_gb"]) * where.gpus_per_node / min_gpus))
        same = {"gpus_per_node": base_gpus, "tasks_per_node": profile.get("tasks_per_node") or 1, "nodes": base_nodes}
        job.resources = {} if all(res.get(k) == v for k, v in same.items()) and "mem_gb" not in res else res


def placement_note(job: Job) -> str:
    """`[4 GPUs: 4 x 1 node, ~68.6 GiB/GPU] ` for a dry run's line (empty when not placed)."""
    where = job.placement
    if where is None:
        return ""
    gib = where.estimate.total / 2**30
    if not where.fits:
        return f"[does not fit: {where.why}] "
    return (f"[{where.gpus} GPU{'s' if where.gpus > 1 else ''}: {where.gpus_per_node} x {where.nodes} node"
            f"{'s' if where.nodes > 1 else ''}, ~{gib:.1f} GiB/GPU{', from the arm' if where.chosen == 'arm' else ''}] ")


# -- SLURM's queue: which runs have a job ------------------------------------------------------------
# A job's comment names the record of the packs it was submitted with and the index of its first
# pack; an array's element n holds pack <first> + n. One comment per array (SLURM has no comment per
# element), so the runs are looked up in the record, which lives beside the launcher's other files.
QUEUE_TAG = "lora-lab:"
SQUEUE_TIMEOUT_S = 30.0
# Job states squeue may still list for a while after a job is over: such a job holds its runs no more.
ENDED = ("COMPLETING", "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "BOOT_FAIL", "DEADLINE",
         "OUT_OF_MEMORY", "REVOKED")


@dataclass
class QueuedJob:
    """A live SLURM job (squeue lists it) that holds a run: its id (`123_4` for an array element),
    state (PENDING, RUNNING, ...) and squeue's reason or node list."""

    job_id: str
    state: str
    where: str = ""

    def note(self) -> str:
        """`SLURM job 123_4 PENDING (Priority)` for status tables and launch messages."""
        where = self.where if self.where.startswith("(") or not self.where else f"on {self.where}"
        return f"SLURM job {self.job_id} {self.state}" + (f" {where}" if where else "")


class Queue(dict):
    """run directory -> the QueuedJob that holds it, looked up by any path of the directory (a
    relative run.root, a symlink): keys are resolved paths."""

    def __getitem__(self, path: Any) -> QueuedJob:
        return super().__getitem__(Path(path).resolve())

    def __contains__(self, path: Any) -> bool:
        return bool(self) and super().__contains__(Path(path).resolve())

    def get(self, path: Any, default: Any = None) -> Any:
        return super().get(Path(path).resolve(), default) if self else default


def job_comment(record: Path, start: int) -> str:
    """The `--comment` of the jobs whose packs are listed in `record`, the first being pack `start`
    (percent-encoded: an sbatch option line must not hold spaces)."""
    return f"{QUEUE_TAG}{quote(str(Path(record).resolve()))}#{start}"


def write_record(record: Path, packs: list[list[Job]], copies: dict[Path, list[Job]] | None = None) -> None:
    """The runs of each pack (and the runs copied from them once they end: shared runs), in the
    order the jobs are numbered, for `queued_runs`."""
    copies = copies or {}
    rows = [{"runs": [str(Path(j.path).resolve()) for j in pack],
             "copies": [str(Path(c.path).resolve()) for j in pack for c in copies.get(j.path, [])]} for pack in packs]
    Path(record).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(record).with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"packs": rows}, indent=1))
    os.replace(tmp, record)


def _record_packs(path: str, cache: dict[str, list | None]) -> list | None:
    if path not in cache:
        try:
            cache[path] = json.loads(Path(path).read_text())["packs"]
        except (OSError, ValueError, KeyError, TypeError):
            cache[path] = None  # another user's unreadable record, or one since deleted
    return cache[path]


def parse_queue(text: str) -> Queue:
    """run directory -> its job, from `squeue -h -r -o '%i|%T|%R|%K|%k'` (one line per array element);
    lines of jobs without a lora-lab comment, or of jobs that are over (ENDED), are ignored."""
    out = Queue()
    cache: dict[str, list | None] = {}
    for line in text.splitlines():
        parts = line.strip().split("|", 4)
        if len(parts) < 5 or not parts[4].startswith(QUEUE_TAG):
            continue
        job_id, state, where, task, comment = parts
        if state in ENDED:
            continue
        record, _, start = comment[len(QUEUE_TAG):].rpartition("#")
        packs = _record_packs(unquote(record), cache)
        if packs is None or not start.isdigit():
            continue
        n = int(start) + (int(task) if task.isdigit() else 0)
        if n >= len(packs):
            continue
        job = QueuedJob(job_id, state, where)
        for path in packs[n].get("runs", []) + packs[n].get("copies", []):
            dict.setdefault(out, Path(path), job)
    return out


def submitted_near(dirs: list[Path], up: int = 2, down: int = 0) -> bool:
    """Whether a record of lora-lab's SLURM jobs (.sweeps/*/slurm-*.json) lies in one of these
    directories, in one up to `up` levels above it, or up to `down` levels below it: where a sweep
    (<run.root>/<experiment>) or reproduce (<run.root>/<scale>) writes them. Status and wait ask
    squeue only then, so that a machine whose SLURM is down or absent does not wait on it."""
    seen: set[tuple[Path, int]] = set()
    for d in dirs:
        d = Path(d).resolve()
        for c, depth in [(d, down), *((p, 0) for p in list(d.parents)[:up])]:
            if (c, depth) in seen:
                continue
            seen.add((c, depth))
            for k in range(depth + 1):
                if next(c.glob("/".join(["*"] * k + [".sweeps", "*", "slurm-*.json"])), None) is not None:
                    return True
    return False


def queued_runs(timeout: float = SQUEUE_TIMEOUT_S) -> tuple[Queue, str | None]:
    """(run directory -> the live SLURM job that holds it, for every job of lora-lab's that squeue
    lists, any user's; a line saying why squeue could not be asked, or None). Without SLURM (no
    squeue on PATH) the queue is empty."""
    if not shutil.which("squeue"):
        return Queue(), None
    try:
        res = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T|%R|%K|%k"], capture_output=True, text=True,
                             timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Queue(), f"squeue: {type(exc).__name__}: {exc}"
    if res.returncode != 0:
        first = (res.stderr.strip().splitlines() or [f"exit code {res.returncode}"])[0]
        return Queue(), f"squeue: {first}"
    return parse_queue(res.stdout), None


# -- submitting without waiting -------------------------------------------------------------------
# hydra-submitit-launcher's keys that submitit's AutoExecutor takes as they are; the others are
# SLURM's (prefixed slurm_), and max_num_timeout is the executor's own (the launcher's mapping).
_BASE_KEYS = ("timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "name",
              "stderr_to_stdout")


def executor_parameters(params: dict) -> tuple[dict, dict]:
    """(AutoExecutor's init arguments, its update_parameters) from a submitit_slurm launcher's settings,
    as hydra-submitit-launcher maps them."""
    init = {"folder": params["submitit_folder"]}
    if params.get("max_num_timeout") is not None:
        init["slurm_max_num_timeout"] = params["max_num_timeout"]
    rest = {k if k in _BASE_KEYS else f"slurm_{k}": v for k, v in params.items()
            if k not in ("submitit_folder", "max_num_timeout", "runs_per_job", "_target_")}
    return init, rest


def submit(params: dict, fn: Callable, args: list[tuple]) -> list[str]:
    """Submit fn(*a) for each a in args as one SLURM job array (a plain job for one), with a
    submitit_slurm launcher's settings; returns the job ids at once (nothing waits for the jobs)."""
    import submitit

    init, rest = executor_parameters(params)
    executor = submitit.AutoExecutor(cluster="slurm", **init)
    executor.update_parameters(**rest)
    jobs = executor.map_array(fn, *zip(*args))
    return [j.job_id for j in jobs]
