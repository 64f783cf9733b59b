"""``vitfgvc repro``: the stages ``dvc repro`` would run, up to N at once, on Ray.

One process, the driver (this module, run by ``vitfgvc repro``), touches DVC, and it holds the
repository's lock from start to end. It reads the graph from DVC and decides, stage by stage in
``dvc repro``'s own order and with DVC's own calls, what ``dvc repro`` would do: skip a stage
whose inputs did not change (judged once everything upstream of it is done), restore one that
DVC's run cache holds, or run it. A stage to run has its outputs removed and its dependencies
saved, as ``dvc repro`` does, and its command (as ``dvc.yaml`` writes it, in the stage's folder,
with the environment ``dvc repro`` gives it) goes to Ray as a task; when the task ends well the
driver records the stage in DVC (outputs saved, cached and entered in ``dvc.lock``, the run
cache updated), one stage at a time. A task never runs DVC, so no lock can collide, also on a
shared filesystem.

Ray places each task where its resources are: a training stage asks for ``runtime.nproc`` GPUs
where the cluster has GPUs (Ray sets ``CUDA_VISIBLE_DEVICES``; the stage's ``torchrun`` uses
exactly those), an evaluation one, everything else none. Each task asks for ``cores / N`` CPUs
and gets as many torch threads, so N stages never oversubscribe a machine. Without ``address``
a local Ray is started for the run, on loopback, and shut down after it; with one, the stages
run on that cluster, whose nodes must see the project at the same path (checked at start).

Every stage writes its output to ``logs/<stage>.log``. The first failure stops new stages; the
running ones finish and are recorded; the same command again continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from dvc.exceptions import DvcException

from .errors import UserError

TRAINING_SCRIPT = "stages/train.py"      # asks for runtime.nproc GPUs
EVALUATION_SCRIPT = "stages/evaluate.py"  # asks for one GPU
LOGS = "logs"


class ReproError(UserError):
    pass


# ------------------------------------------------------------------ the plan (DVC)
@dataclasses.dataclass
class Plan:
    """The stages a run considers, in ``dvc repro``'s order, and what each waits for."""

    order: list[str]                       # stage addressing, as dvc repro would evaluate them
    upstream: dict[str, list[str]]         # the planned stages each one depends on
    stages: dict[str, object]              # addressing -> dvc Stage
    graph_upstream: dict[str, list]        # addressing -> every upstream Stage (DVC's `upstream` argument)


def plan(repo, targets: Sequence[str]) -> Plan:
    """What ``dvc repro TARGETS`` evaluates: the targets and everything they depend on, in DVC's order."""
    from dvc.repo.reproduce import collect_stages, get_active_graph, plan_repro

    stages = collect_stages(repo, list(targets) or ["dvc.yaml"])
    graph = get_active_graph(repo.index.graph)
    steps = plan_repro(graph, stages)
    names = [s.addressing for s in steps]
    planned = set(names)
    return Plan(order=names,
                upstream={s.addressing: [u.addressing for u in graph.successors(s) if u.addressing in planned]
                          for s in steps},
                stages={s.addressing: s for s in steps},
                graph_upstream={s.addressing: list(graph.successors(s)) for s in steps})


def stage_commands(stage) -> list[str]:
    cmd = stage.cmd
    return list(cmd) if isinstance(cmd, list) else str(cmd).splitlines()


def gpus_for(stage, nproc: int) -> int:
    """GPUs a stage asks for where there are GPUs: a training its processes, an evaluation one, the rest none."""
    text = " ".join(stage_commands(stage))
    if TRAINING_SCRIPT in text:
        return nproc
    return 1 if EVALUATION_SCRIPT in text else 0


def begin(stage, upstream: list, force: bool) -> str:
    """``dvc repro``'s first half for one stage (Stage.reproduce, Stage.run, run_stage up to the command):
    ``"skipped"`` (its inputs did not change), ``"restored"`` (from the run cache, and recorded), or ``"run"``
    (outputs removed, dependencies saved: the command is to run)."""
    from dvc.stage.cache import RunCacheNotFoundError

    if stage.frozen:
        return "skipped"
    if not force and not stage.changed(False, upstream):
        return "skipped"
    stage.remove_outs(ignore_remove=False, force=False)
    if not force:
        try:
            stage.repo.stage_cache.restore(stage)
        except RunCacheNotFoundError:
            stage.save_deps()
        else:
            record(stage)
            return "restored"
    return "run"


def record(stage) -> None:
    """``dvc repro``'s second half: the outputs saved and cached, the run cache, the stage in ``dvc.lock``."""
    no_cache_outs = any(not out.use_cache for out in stage.outs if not (out.is_metric or out.is_plot))
    stage.save(allow_missing=False, run_cache=not no_cache_outs)
    stage.commit(allow_missing=False)
    stage.dump(update_pipeline=False)


def stage_environment(stage, threads: int | None) -> dict[str, str]:
    """The environment ``dvc repro`` gives a stage's command (``DVC_ROOT``, ``DVC_STAGE``), with ``threads``."""
    from dvc.utils import fix_env

    env = fix_env(None)
    env.setdefault("DVC_ROOT", stage.repo.root_dir)
    env["DVC_STAGE"] = stage.addressing
    if threads:
        for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[key] = str(threads)
    return env


def log_path(root: Path, stage: str) -> Path:
    return root / LOGS / f"{re.sub(r'[^A-Za-z0-9@._-]', '_', stage)}.log"


# ------------------------------------------------------------------ the task (runs on a Ray worker)
def run_commands(commands: list[str], cwd: str, env: dict[str, str], log: str) -> dict:
    """Run a stage's commands as ``dvc repro`` runs them (the user's shell, no rc files), output to ``log``.
    Cancelled, it stops the commands' whole process group before it gives up."""
    import ray
    from dvc.stage.run import _make_cmd, get_executable

    env = dict(env)
    if "CUDA_VISIBLE_DEVICES" in os.environ:  # the GPUs Ray gave this task
        env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
    start = time.perf_counter()
    rc = 0
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        for cmd in commands:
            out.write(f"> {cmd}\n")
            out.flush()
            proc = subprocess.Popen(_make_cmd(get_executable(), cmd), cwd=cwd, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            try:
                rc = _wait(proc)
            except BaseException:  # cancelled (Ray raises KeyboardInterrupt here): stop the commands too
                _stop(proc)
                raise
            if rc != 0:
                break
    return {"returncode": rc, "node": ray.get_runtime_context().get_node_id(),
            "gpus": [str(g) for g in ray.get_gpu_ids()], "seconds": time.perf_counter() - start}


def _wait(proc: subprocess.Popen) -> int:
    """The command's exit status, waited for in short slices: Ray's cancel sets an interrupt that Python raises
    only between bytecodes, never inside one long wait."""
    while True:
        try:
            return proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            continue


def _stop(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def read_token(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"


# ------------------------------------------------------------------ Ray
@dataclasses.dataclass
class Cluster:
    nodes: list[dict]          # alive nodes: {"ip", "id", "cpus", "gpus"}
    local: bool                # started by this run (shut down at its end)

    @property
    def gpus(self) -> bool:
        return any(n["gpus"] for n in self.nodes)

    @property
    def min_cpus(self) -> int:
        return max(1, min(int(n["cpus"]) for n in self.nodes))


def connect(address: str | None) -> Cluster:
    """A local Ray on loopback for this run (``address`` None), or the cluster at ``address``."""
    if address is None:
        # Ray's single-machine mode (its default on macOS and Windows): every address on loopback. Read when
        # ray is first imported.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if address is None:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    else:
        try:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ReproError(f"--address {address}: no Ray cluster there ({exc}); start one with `ray start "
                             "--head` (then --address auto), or leave --address out to run on this machine") from exc
    nodes = [{"ip": n["NodeManagerAddress"], "id": n["NodeID"], "cpus": n["Resources"].get("CPU", 0),
              "gpus": int(n["Resources"].get("GPU", 0))} for n in ray.nodes() if n.get("Alive")]
    return Cluster([n for n in nodes if n["cpus"] > 0], local=address is None)


def check_shared_filesystem(root: Path, cluster: Cluster) -> None:
    """Every node reads a token this driver wrote in the project: one line naming a node that cannot."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = uuid.uuid4().hex
    path = root / ".dvc" / "tmp" / f"vitfgvc-ray-{token[:8]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(token)
    try:
        reader = ray.remote(read_token)
        refs = {n["ip"]: reader.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
            n["id"], soft=False)).remote(str(path)) for n in cluster.nodes}
        for ip, ref in refs.items():
            seen = ray.get(ref, timeout=120)
            if seen != token:
                raise ReproError(f"node {ip} cannot see the project at {root} ({path}: {seen}): every node must "
                                 "see it at the same path (a shared filesystem)")
    finally:
        path.unlink(missing_ok=True)


# ------------------------------------------------------------------ the estimate (--dry)
def rehearsal_weights(root: Path) -> tuple[dict[str, float], str | None]:
    """Hours per stage from the newest rehearsal report (``benchmarks/profiles.py rehearsal``): a training's
    and an evaluation's extrapolated hours for the full run, any other stage's own seconds in the rehearsal;
    and the report's name. Empty where there is no report."""
    for name in ("reports/rehearsal-dag-gpu.md", "reports/rehearsal.md"):
        path = root / name
        if not path.exists():
            continue
        weights: dict[str, float] = {}
        for line in path.read_text().splitlines():
            if not line.startswith("|"):
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            try:
                if len(cells) == 8 and "@" in cells[0]:  # training: its last cell is the full run's hours
                    weights[cells[0]] = float(cells[-1])
                elif len(cells) == 5 and cells[0].startswith("evaluate of "):
                    weights[_evaluation_stage(cells[0].removeprefix("evaluate of "))] = float(cells[-1])
                elif len(cells) == 2 and ("@" in cells[0] or cells[0] == "tables"):  # the rehearsal's seconds
                    weights.setdefault(cells[0], float(cells[1]) / 3600)
            except ValueError:
                continue
        return weights, name
    return {}, None


def _evaluation_stage(training: str) -> str:
    """The evaluation stage of a training stage (``multistage@cub`` -> ``evaluate@cub-multistage``)."""
    kind, _, rest = training.partition("@")
    if kind == "ablate":
        return f"evaluate_ablation@{rest}"
    if kind == "baseline_equal_time":
        return f"evaluate_equal_time@{rest}"
    return f"evaluate@{rest}-{kind}"


def waves(order: Sequence[str], upstream: dict[str, list[str]]) -> list[list[str]]:
    """The stages in waves: each wave runs once the waves before it are done."""
    level: dict[str, int] = {}
    for s in order:  # dvc repro's order puts every stage after its upstream
        level[s] = 1 + max((level[u] for u in upstream[s] if u in level), default=-1)
    out: list[list[str]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for s in order:
        out[level[s]].append(s)
    return out


def critical_path(order: Sequence[str], upstream: dict[str, list[str]], weight: Callable[[str], float]
                  ) -> tuple[list[str], float]:
    """The longest chain of stages, weighted, and its length."""
    best: dict[str, tuple[float, str | None]] = {}
    for s in order:
        prev = max(((best[u][0], u) for u in upstream[s] if u in best), default=(0.0, None))
        best[s] = (prev[0] + weight(s), prev[1])
    if not best:
        return [], 0.0
    end = max(best, key=lambda s: best[s][0])
    chain, node = [], end
    while node is not None:
        chain.append(node)
        node = best[node][1]
    return chain[::-1], best[end][0]


def makespan(order: Sequence[str], upstream: dict[str, list[str]], weight: Callable[[str], float],
             slots: int) -> float:
    """Wall time of the stages on ``slots`` workers: list scheduling, the longest remaining chain first."""
    downstream: dict[str, list[str]] = {s: [] for s in order}
    for s in order:
        for u in upstream[s]:
            downstream[u].append(s)
    tail: dict[str, float] = {}
    for s in reversed(order):
        tail[s] = weight(s) + max((tail[d] for d in downstream[s]), default=0.0)
    finished: dict[str, float] = {}
    running: list[tuple[float, str]] = []  # (end, stage)
    left, now = list(order), 0.0
    while left or running:
        ready = [x for x in left if all(finished.get(u, float("inf")) <= now for u in upstream[x])]
        for x in sorted(ready, key=lambda y: (-tail[y], order.index(y)))[:slots - len(running)]:
            running.append((now + weight(x), x))
            left.remove(x)
        now = min(end for end, _ in running)
        for end, x in [r for r in running if r[0] <= now]:
            finished[x] = end
            running.remove((end, x))
    return max(finished.values(), default=0.0)


# ------------------------------------------------------------------ the driver
@dataclasses.dataclass
class Progress:
    total: int
    done: int = 0
    running: int = 0

    def line(self) -> str:
        return f"{self.done}/{self.total} done, {self.running} running, {self.total - self.done - self.running} waiting"


def _say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def _hours(h: float) -> str:
    return f"{h:.1f} h" if h >= 1 else f"{h * 60:.1f} min"


def dry_run(root: Path, p: Plan, would_run: list[str], jobs: int) -> None:
    """Print the plan: the waves, the critical path and what ``jobs`` GPUs would take."""
    upstream = {s: [u for u in p.upstream[s] if u in would_run] for s in would_run}
    print(f"{len(would_run)} of {len(p.order)} stages would run"
          + ("" if would_run else ": everything is up to date") + ".")
    for i, wave in enumerate(waves(would_run, upstream), 1):
        print(f"wave {i} ({len(wave)}): {' '.join(wave)}")
    if not would_run:
        return
    weights, source = rehearsal_weights(root)
    if all(s in weights for s in would_run):
        def weight(s: str) -> float:
            return weights[s]
        unit = f"hours on the rehearsal's device, from {source}"
        fmt = _hours
    else:
        def weight(s: str) -> float:
            return 1.0
        unit = "stages: no rehearsal report times all of them (benchmarks/profiles.py rehearsal), so each counts one"

        def fmt(x: float) -> str:
            return f"{x:g} stages"
    chain, length = critical_path(would_run, upstream, weight)
    print(f"critical path ({unit}): {' -> '.join(chain)}: {fmt(length)}")
    serial = sum(weight(s) for s in would_run)
    for n in sorted({1, jobs}):
        print(f"with {n} GPU{'s' if n > 1 else ''} (--jobs {n}), each as fast as that device: about "
              f"{fmt(makespan(would_run, upstream, weight, n))}" + (f" (one at a time: {fmt(serial)})" if n > 1 else ""))


def would_run(p: Plan, force: bool) -> list[str]:
    """The stages a run would start, judged without running anything: changed ones and everything below them."""
    out: list[str] = []
    for s in p.order:
        stage = p.stages[s]
        if force or any(u in out for u in p.upstream[s]):
            out.append(s)
            continue
        try:
            changed = stage.changed(False, p.graph_upstream[s])
        except Exception:  # noqa: BLE001 - an input that is not there yet: its upstream makes it
            changed = True
        if changed and not stage.frozen:
            out.append(s)
    return out


def repro(root: Path, targets: Sequence[str] = (), *, jobs: int = 1, address: str | None = None,
          dry: bool = False, force: bool = False) -> int:
    """``vitfgvc repro``; returns the exit status."""
    from dvc.repo import Repo, lock_repo

    from .config import load_params

    root = root.resolve()
    if jobs < 1:
        raise ReproError(f"--jobs must be at least 1, got {jobs}")
    with Repo(str(root)) as repo, lock_repo(repo), repo.scm_context(quiet=False):
        p = plan(repo, targets)
        if dry:
            dry_run(root, p, would_run(p, force), jobs)
            return 0
        driver = Driver(root, p, jobs=jobs, address=address, nproc=load_params(root / "params.yaml").runtime.nproc,
                        force=force)
        try:
            return driver.run()
        finally:
            driver.close()


class Driver:
    """Runs a plan: DVC's decisions and records here, the commands on Ray (started when the first one is due)."""

    def __init__(self, root: Path, p: Plan, *, jobs: int, address: str | None, nproc: int, force: bool):
        self.root, self.plan, self.jobs, self.address, self.nproc, self.force = root, p, jobs, address, nproc, force
        self.cluster: Cluster | None = None
        self.state: dict[str, str] = {}          # stage -> skipped | restored | ran | failed | blocked
        self.running: dict = {}                  # ObjectRef -> stage
        self.failed: list[str] = []
        self.progress = Progress(total=len(p.order))
        self.interrupted = False

    def _on_interrupt(self, signum, frame) -> None:
        """Ctrl-C: stop starting stages and stop the running ones, between two of the driver's steps (never in the
        middle of recording a stage); a second Ctrl-C stops at once."""
        if self.interrupted:
            raise KeyboardInterrupt
        self.interrupted = True
        _say("interrupt: stopping the running stages (Ctrl-C again to stop at once)")

    # ---- Ray, on first use
    def _ray(self) -> Cluster:
        if self.cluster is None:
            self.cluster = connect(self.address)
            if not self.cluster.local:
                check_shared_filesystem(self.root, self.cluster)
            most = max((n["gpus"] for n in self.cluster.nodes), default=0)
            if self.cluster.gpus and self.nproc > most:
                raise ReproError(f"a training stage asks for runtime.nproc = {self.nproc} GPUs, but no node has "
                                 f"more than {most}: lower runtime.nproc")
            c = self.cluster
            where = "this machine (a local Ray)" if c.local else f"{len(c.nodes)} Ray nodes"
            _say(f"up to {self.jobs} stages at once on {where}, {self.cpus} CPU{'s' * (self.cpus > 1)} each"
                 + (f", {sum(n['gpus'] for n in c.nodes)} GPUs" if c.gpus else ", no GPU"))
        return self.cluster

    @property
    def cpus(self) -> int:
        return max(1, self.cluster.min_cpus // self.jobs)

    def close(self) -> None:
        if self.cluster is not None:
            import ray

            ray.shutdown()

    def _node(self, node_id: str) -> str:
        """A node's address, and its id where the cluster has several nodes (they may share an address)."""
        ip = next((n["ip"] for n in self.cluster.nodes if n["id"] == node_id), "?")
        return ip if len(self.cluster.nodes) == 1 else f"{ip} (node {node_id[:8]})"

    # ---- the loop
    def run(self) -> int:
        p = self.plan
        waiting = list(p.order)
        previous = signal.signal(signal.SIGINT, self._on_interrupt)
        try:
            while (waiting and not self.failed) or self.running:  # after a failure: only the running ones finish
                if self.interrupted:
                    return self._interrupted()
                self._start_ready(waiting)
                if self.running:
                    self._collect()
            if self.interrupted:
                return self._interrupted()
        finally:
            signal.signal(signal.SIGINT, previous)
        if self.failed:
            logs = ", ".join(str(log_path(self.root, s).relative_to(self.root)) for s in self.failed
                             if log_path(self.root, s).exists()) or "none"
            left = len(waiting) + sum(v == "blocked" for v in self.state.values())
            _say(f"failed: {', '.join(self.failed)} (log: {logs}); {left} stage{'s' * (left != 1)} did not run. "
                 "Run the same command again to continue from there.")
            return 1
        count = {k: sum(v == k for v in self.state.values()) for k in ("ran", "restored", "skipped")}
        _say(f"all {len(p.order)} stages done: {count['ran']} ran, {count['restored']} restored from the run cache, "
             f"{count['skipped']} unchanged")
        return 0

    def _start_ready(self, waiting: list[str]) -> None:
        """Decide, in plan order, every stage whose upstream is done, and hand those to run to Ray (up to N)."""
        for s in list(waiting):
            if self.failed or self.interrupted or len(self.running) >= self.jobs:
                return
            ups = [self.state.get(u) for u in self.plan.upstream[s]]
            if None in ups:
                continue  # something upstream has not finished
            waiting.remove(s)
            if any(u in ("failed", "blocked") for u in ups):
                self._resolve(s, "blocked")
                continue
            try:
                decision = begin(self.plan.stages[s], self.plan.graph_upstream[s], self.force)
            except DvcException as exc:  # e.g. a dependency that is not there: as dvc repro, the stage fails
                self._fail(s, f"DVC: {exc}", node=None)
                continue
            if decision == "run":
                self._submit(s)
            else:
                self._resolve(s, decision)
                if decision == "restored":
                    _say(f"restored {s} from the run cache ({self.progress.line()})")

    def _resolve(self, s: str, state: str) -> None:
        self.state[s] = state
        self.progress.done += 1

    def _submit(self, s: str) -> None:
        import ray

        cluster = self._ray()
        stage = self.plan.stages[s]
        gpus = gpus_for(stage, self.nproc) if cluster.gpus else 0
        log = log_path(self.root, s)
        ref = ray.remote(run_commands).options(num_cpus=self.cpus, num_gpus=gpus, name=s).remote(
            stage_commands(stage), stage.wdir, stage_environment(stage, None if cluster.gpus else self.cpus), str(log))
        self.running[ref] = s
        self.progress.running += 1
        _say(f"start {s}{f' on {gpus} GPU' + 's' * (gpus > 1) if gpus else ''} ({self.progress.line()}) -> "
             f"{log.relative_to(self.root)}")

    def _collect(self) -> None:
        """Wait for a task to end; record its stage in DVC, or note the failure (no new stage starts after it)."""
        import ray

        ready, _ = ray.wait(list(self.running), num_returns=1, timeout=0.5)  # short: an interrupt is seen soon
        if not ready:
            return
        (ref,) = ready
        s = self.running.pop(ref)
        self.progress.running -= 1
        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as exc:
            result = {"returncode": None, "error": str(exc).strip().splitlines()[-1], "node": "", "gpus": []}
        node = self._node(result["node"]) if result["node"] else None
        if result["returncode"] != 0:
            why = f"exit {result['returncode']}" if result["returncode"] is not None else result["error"]
            self._fail(s, why, node)
            return
        try:
            record(self.plan.stages[s])
        except DvcException as exc:  # e.g. an output the command did not write
            self._fail(s, f"its outputs could not be recorded: {exc}", node)
            return
        self._resolve(s, "ran")
        gpus = f", GPU {','.join(result['gpus'])}" if result["gpus"] else ""
        _say(f"done {s} in {result['seconds']:.1f} s on {node}{gpus} ({self.progress.line()})")

    def _fail(self, s: str, why: str, node: str | None) -> None:
        self._resolve(s, "failed")
        self.failed.append(s)
        log = log_path(self.root, s)
        _say(f"FAILED {s} ({why}){f' on {node}' if node else ''}"
             + (f": see {log.relative_to(self.root)}" if log.exists() else "")
             + ("; the running stages finish, no new one starts" if self.running else ""))

    def _interrupted(self) -> int:
        """Ctrl-C: the running tasks are cancelled (each stops its commands' process group); one that had already
        ended well is recorded (it is whole), the others are not (their outputs were removed before they ran)."""
        import ray

        for ref in self.running:
            ray.cancel(ref, force=False)
        stopped = []
        for ref, s in self.running.items():
            try:
                result = ray.get(ref, timeout=60)
            except Exception:  # noqa: BLE001 - cancelled, as asked
                stopped.append(s)
                continue
            if result["returncode"] == 0:
                record(self.plan.stages[s])
                _say(f"done {s} before the interrupt reached it: recorded")
            else:
                stopped.append(s)
        _say(f"interrupted: stopped {', '.join(stopped) or 'nothing'}; nothing of theirs was recorded (the same "
             "command again continues)")
        return 130
