"""Run a params profile through DVC in a throw-away clone of the project.

``dvc repro`` always reads ``params.yaml``, so a profile other than the paper's runs in
a copy of the project with the profile in that place; the project's own ``params.yaml``
and ``dvc.lock`` are never touched. The copy holds the working tree as git sees it
(tracked and untracked files, not the ignored ones: the committed ``.dvc/`` set-up
included, nothing initialised by hand), committed to a fresh git repository so that
``dvc exp run`` works there too. It is kept, so running the same command again only
re-runs what changed, and a killed run resumes.

    python benchmarks/profiles.py smoke      # CI's pipeline: miniature archives, a tiny ViT (about 7 min on 2 cores)
    python benchmarks/profiles.py cpu        # the CPU benchmark on cluttered digits (about 25 min on 2 cores)
    python benchmarks/profiles.py rehearsal  # the paper's DAG at full size, a step per phase: reports/rehearsal.md (about 25 min)
    python benchmarks/profiles.py cpu --seeds 3                      # the CPU benchmark, then its key rows with
    python benchmarks/profiles.py cpu --seeds 3 --seed-variants NAME     # 2 more seeds: reports/cpu/seeds.md
    python benchmarks/profiles.py pretrained --seeds 3 --seed-variants parts_small  # the same with a fractal-
                                        # pretrained encoder: reports/cpu/pretrained.md (54 min on 2 cores)

``--seeds N`` (the ``cpu`` and ``pretrained`` profiles) runs the profile as above with its own ``seed``, then
with each of the next N - 1 seeds in its own copy, ``.profiles/cpu-seed<s>`` (beside ``--dir``):
the same profile but for ``seed``, and with only the ablation variants that ``--seed-variants``
names (none by default: the baseline, the equal-time baseline and the multistage model, roughly
14 min a seed on 2 cores by the profile's stage times; each variant repeated adds about 5 min). Then
``reports/cpu/seeds.md`` gives each row's test accuracy per seed, mean and std, and which
paired differences exceed the seed-to-seed spread (:mod:`benchmarks.seeds`). A killed run
resumes where it stopped: each copy is kept.

The test suite's pipeline tests build their copies with :func:`sync`, as this command does.
(Not ``profile.py``: with this folder first on ``sys.path``, that name would shadow the standard
library's ``profile``, which torch imports through ``cProfile``.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Profile:
    params: str                 # the params file that becomes the copy's params.yaml
    about: str
    fixtures: tuple[str, ...] | None = None  # write the original archives into the copy's data/fixtures, with
                                             # these arguments of ``python -m tests.fixtures``
    reports: str | None = None  # a folder the pipeline writes, copied back into this project when done


PROFILES = {
    "smoke": Profile("params-smoke.yaml", "every stage on miniature archives in the original formats (CI)",
                     fixtures=()),
    "cpu": Profile("params-cpu.yaml", "the method on cluttered digits, a small ViT from scratch",
                   reports="reports/cpu"),
    "pretrained": Profile("params-pretrained.yaml", "the CPU benchmark with its encoder pretrained on generated "
                          "fractals (pretrain@fractals)", reports="reports/pretrained"),
    "rehearsal": Profile("params.yaml", "the paper's DAG at full size on archives at the real image sizes, a few "
                         "steps per phase (benchmarks/rehearsal.py)", fixtures=("--realistic",)),
}


def stage_order(params: dict) -> list[str]:
    """Every stage of a params profile in an order that respects the DAG."""
    datasets, equal_time = params["pipeline"]["datasets"], params["pipeline"]["equal_time"]
    ablations = [f"{d}-{v}" for d in params["ablation"]["datasets"] for v in params["ablation"]["variants"]]
    return [*(f"{s}@{d}" for s in ("download", "prepare", "baseline", "multistage") for d in datasets),
            *(f"evaluate@{d}-{m}" for d in datasets for m in ("baseline", "multistage")),
            *(f"{s}@{d}" for s in ("baseline_equal_time", "evaluate_equal_time") for d in equal_time),
            *(f"{s}@{a}" for s in ("ablate", "evaluate_ablation") for a in ablations),
            *(f"figures@{d}" for d in datasets), "tables"]


def project_files(root: Path) -> list[str]:
    """The working tree as git sees it: tracked and untracked files, not the ignored ones."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=root,
                         capture_output=True, check=True)
    return [f for f in out.stdout.decode().split("\0") if f and (root / f).is_file()]


def set_dotted(data: dict, dotted: Mapping[str, object]) -> dict:
    """Set ``{"a.b": v}`` style keys (as ``dvc exp run -S`` names them) in a nested params mapping, in place;
    returns it."""
    for key, value in dotted.items():
        *parents, last = key.split(".")
        node = data
        for p in parents:
            node = node[p]
        node[last] = value
    return data


def environment(**extra: str) -> dict[str, str]:
    """This interpreter's folder first on PATH, DVC analytics off, a git identity for the copy's commits."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    for key in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):
        env.setdefault(key, "vitfgvc")
    for key in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        env.setdefault(key, "vitfgvc@localhost")
    env.pop("DVC_ROOT", None)  # set when this runs inside a DVC stage: the copy is its own project
    env.update(extra)
    return env


def repro_stage(dest: Path, env: dict[str, str], stage: str) -> tuple[float, subprocess.CompletedProcess]:
    """``dvc repro -s STAGE`` in the copy: its wall time (process start included) and the finished process."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro", "-s", stage], cwd=dest, env=env,
                          capture_output=True, text=True)
    return time.perf_counter() - start, proc


def sync(dest: Path, profile: Profile, env: dict[str, str], root: Path = ROOT, *, params: dict | None = None,
         fixture_args: tuple[str, ...] = ()) -> None:
    """Create or refresh the copy in ``dest``: the project's files, ``profile.params`` (or ``params``, a derived
    profile) as params.yaml, committed.

    Files the project no longer has are removed from the copy; outputs the copy's own
    pipeline wrote (git-ignored there) stay, so DVC decides what to re-run.
    """
    def git(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *cmd], cwd=dest, env=env, check=check, capture_output=True, text=True)

    dest.mkdir(parents=True, exist_ok=True)
    if not (dest / ".git").exists():
        git("init", "-q", "-b", "main")
    # the profile's own report folder is its pipeline's output there: never copied over, never removed
    own = (lambda f: f.startswith(profile.reports + "/")) if profile.reports else (lambda f: False)
    wanted = [f for f in project_files(root) if not own(f)]
    for rel in set(project_files(dest)) - set(wanted) - {"params.yaml"}:
        if not own(rel):
            (dest / rel).unlink()
    for rel in wanted:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)
    if params is None:
        shutil.copy2(root / profile.params, dest / "params.yaml")
    else:
        import yaml

        text = f"# {profile.params}, derived by benchmarks/profiles.py\n" + yaml.safe_dump(params, sort_keys=False)
        if not (dest / "params.yaml").exists() or (dest / "params.yaml").read_text() != text:
            (dest / "params.yaml").write_text(text)
    if profile.fixtures is not None:
        subprocess.run([sys.executable, "-m", "tests.fixtures", str(dest / "data/fixtures"), *profile.fixtures,
                        *fixture_args], cwd=root, env=env, check=True, capture_output=True)
    git("add", "-A")
    git("commit", "-qm", f"project with {profile.params} as params.yaml", check=False)  # nothing new: no commit


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profile", choices=sorted(PROFILES),
                    help="; ".join(f"{k}: {p.params}, {p.about}" for k, p in PROFILES.items()))
    ap.add_argument("--dir", help="where the copy lives (default .profiles/<profile>, git-ignored)")
    ap.add_argument("--fresh", action="store_true", help="delete the copy first and run everything from scratch")
    rehearsal = ap.add_argument_group("rehearsal")
    rehearsal.add_argument("--steps", type=int, default=1, help="optimiser steps per phase (runtime.limit_steps)")
    rehearsal.add_argument("--eval-images", type=int, default=2, help="test images per evaluation (runtime.limit_eval)")
    rehearsal.add_argument("--micro-batch", type=int, default=None,
                           help="images per optimiser step (default: 1 on a CPU; the paper's batches on a GPU)")
    rehearsal.add_argument("--workers", type=int, default=None, help="runtime.workers (default: 1 on a CPU, else 8)")
    study = ap.add_argument_group("seeds (cpu)")
    study.add_argument("--seeds", type=int, default=None, metavar="N",
                       help="run the profile with its own seed and the next N-1 (each in its own copy, "
                            "<dir>-seed<s>) and write reports/cpu/seeds.md")
    study.add_argument("--seed-variants", nargs="+", default=[], metavar="NAME",
                       help="ablation variants to repeat with every seed (default: none, only the baseline, the "
                            "equal-time baseline and the multistage model)")
    args = ap.parse_args(argv)
    profile = PROFILES[args.profile]
    base = None
    if args.seeds is not None or args.seed_variants:
        import yaml

        seeds = _seeds_module()
        base = yaml.safe_load((ROOT / profile.params).read_text())
        try:
            seeds.check_request(args.profile, base, args.seeds, args.seed_variants)
        except seeds.SeedsError as exc:
            ap.error(str(exc))
    dest = Path(args.dir).resolve() if args.dir else ROOT / ".profiles" / args.profile
    if args.fresh:
        shutil.rmtree(dest, ignore_errors=True)
        if base is not None:
            for s in seeds.seed_values(base, args.seeds)[1:]:
                shutil.rmtree(seeds.seed_dir(dest, s), ignore_errors=True)
    env = environment()
    env.pop("MLFLOW_TRACKING_URI", None)  # the copy logs into its own store
    if args.profile == "rehearsal":
        run_rehearsal(dest, profile, env, args)
        return
    if base is not None:
        print(f"{args.profile}: seed {base.get('seed', 0)} (1/{args.seeds}) in {dest}", flush=True)
    sync(dest, profile, env)
    seconds = repro(dest, env, args.profile)
    print(f"{args.profile}: pipeline done in {seconds:.0f} s in {dest}", flush=True)
    if base is not None:
        print(f"{args.profile}: seed {base.get('seed', 0)} (1/{args.seeds}) done in {seconds:.0f} s", flush=True)
    if profile.reports:
        kept = ROOT / profile.reports / "seeds.md"  # written by --seeds, not by the pipeline: kept
        kept_text = kept.read_text() if kept.exists() else None
        shutil.rmtree(ROOT / profile.reports, ignore_errors=True)
        shutil.copytree(dest / profile.reports, ROOT / profile.reports)
        if kept_text is not None:  # a --seeds run writes its own at the end
            kept.write_text(kept_text)
        print(f"{args.profile}: {profile.reports}/ copied into {ROOT}")
    if base is not None:
        command = " ".join(["python benchmarks/profiles.py", *(sys.argv[1:] if argv is None else argv)])
        run_seeds(dest, profile, env, base, args, command=command)


def _seeds_module():
    """:mod:`benchmarks.seeds` (run as a script, this folder is on sys.path, the project root is not)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from benchmarks import seeds

    return seeds


def repro(dest: Path, env: dict[str, str], name: str) -> float:
    """``dvc repro`` in the copy (its output shown); the seconds it took. Exits naming the copy on failure."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=dest, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{name}: dvc repro failed in {dest} (exit {proc.returncode}); run the same command again "
                 "to resume")
    return seconds


def run_seeds(dest: Path, profile: Profile, env: dict[str, str], base: dict, args, *, command: str) -> None:
    """The further seeds, each in its own copy beside ``dest`` (the profile's own seed ran there), then
    ``<profile.reports>/seeds.md`` from every seed's metrics."""
    seeds = _seeds_module()
    values = seeds.seed_values(base, args.seeds)
    copies = {values[0]: dest}
    for i, s in enumerate(values[1:], 2):
        where = seeds.seed_dir(dest, s)
        print(f"{args.profile}: seed {s} ({i}/{len(values)}) in {where}", flush=True)
        sync(where, profile, env, params=seeds.derive_params(base, s, args.seed_variants))
        seconds = repro(where, env, f"{args.profile} seed {s}")
        print(f"{args.profile}: seed {s} ({i}/{len(values)}) done in {seconds:.0f} s", flush=True)
        copies[s] = where
    try:
        per_seed = {s: seeds.read_seed(c, base, args.seed_variants) for s, c in copies.items()}
    except seeds.SeedsError as exc:
        sys.exit(f"{args.profile}: {exc}")
    text = seeds.report(per_seed, base, args.seed_variants, command=command)
    out = ROOT / (profile.reports or "reports") / "seeds.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"{args.profile}: {out.relative_to(ROOT)} written ({len(values)} seeds)")
    if args.profile == "pretrained":  # the study: beside the from-scratch seeds.md it is compared with
        from benchmarks import pretrained

        study = ROOT / pretrained.REPORT
        study.write_text(pretrained.report(copies, base, args.seed_variants, per_seed, command=command,
                                           scratch_seeds=ROOT / pretrained.SCRATCH_SEEDS))
        print(f"{args.profile}: {pretrained.REPORT} written")


def run_rehearsal(dest: Path, profile: Profile, env: dict[str, str], args) -> None:
    """The paper's DAG stage by stage (each timed) in the copy, then reports/rehearsal.md (on a GPU
    reports/rehearsal-dag-gpu.md; reports/rehearsal-gpu.md is benchmarks/gpu_check.py's)."""
    import json

    import torch
    import yaml

    if str(ROOT) not in sys.path:  # run as a script: this folder is on sys.path, the project root is not
        sys.path.insert(0, str(ROOT))
    from benchmarks import rehearsal

    gpu = torch.cuda.is_available()
    micro = args.micro_batch if args.micro_batch is not None else (None if gpu else 1)
    workers = args.workers if args.workers is not None else (8 if gpu else 1)
    base = yaml.safe_load((ROOT / profile.params).read_text())
    derived = rehearsal.derive_params(base, steps=args.steps, eval_images=args.eval_images, micro_batch=micro,
                                      workers=workers)
    # enough training images for one optimiser batch of the largest dataset batch
    batches = [derived["datasets"][d]["train"].get("batch_size", derived["train"]["batch_size"])
               for d in derived["pipeline"]["datasets"]]
    sync(dest, profile, env, params=derived, fixture_args=("--per-class", str(max(4, 2 * max(batches) // 3 + 2))))
    timings_path = dest / "stage_seconds.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    for stage in stage_order(derived):
        seconds, proc = repro_stage(dest, env, stage)
        if proc.returncode != 0:
            sys.exit(f"rehearsal: stage {stage} failed in {dest} (exit {proc.returncode}):\n{proc.stdout[-3000:]}"
                     f"{proc.stderr[-3000:]}\nRun the same command again to resume from it.")
        if "Running stage" in proc.stdout or stage not in timings:
            timings[stage] = round(seconds, 2)
        print(f"rehearsal: {stage} {timings[stage]:.1f} s", flush=True)
        timings_path.write_text(json.dumps(timings, indent=1))
    name = "reports/rehearsal-dag-gpu.md" if gpu else "reports/rehearsal.md"
    text = rehearsal.report(dest, base, derived, timings, command=" ".join(["python benchmarks/profiles.py",
                                                                           *sys.argv[1:]]))
    (ROOT / name).write_text(text)
    print(text)
    print(f"rehearsal: {name} written ({sum(timings.values()) / 60:.1f} min of stages)")


if __name__ == "__main__":
    main()
