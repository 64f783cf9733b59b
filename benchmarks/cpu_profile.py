"""Run the CPU profile (``params-cpu.yaml``: cluttered digits, a small ViT from scratch) through DVC.

The project is copied to ``.profiles/cpu/`` (git-ignored) with ``params-cpu.yaml``
as its ``params.yaml``, and ``dvc repro`` runs there: the project's own
``params.yaml`` and ``dvc.lock`` are never touched. The copy is kept, so a second
run only re-runs what changed, and a run that was killed resumes (DVC skips the
finished stages, a training resumes from its checkpoint). When the pipeline is
done, its reports (``cpu_benchmark.md``, ``tables/``, ``figures/``) are copied
into this project's ``reports/``.

    python benchmarks/cpu_profile.py             # about 20 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from vitfgvc.workspace import environment, project_files

ROOT = Path(__file__).resolve().parents[1]


def sync(dest: Path, profile: str, env: dict[str, str]) -> None:
    """Create or refresh the copy: the project's files, ``profile`` as params.yaml, committed."""
    def run(*cmd: str) -> None:
        subprocess.run(cmd, cwd=dest, env=env, check=True, capture_output=True)

    fresh = not (dest / ".dvc").is_dir()
    dest.mkdir(parents=True, exist_ok=True)
    for rel in project_files(ROOT):
        if rel.startswith("reports/"):
            continue  # the copy's reports are its own outputs
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    shutil.copy2(ROOT / profile, dest / "params.yaml")
    if fresh:
        run("git", "init", "-q", "-b", "main")
        run(sys.executable, "-m", "dvc", "init", "-q")
    run("git", "add", "-A")
    subprocess.run(["git", "commit", "-qm", f"sync with {profile}"], cwd=dest, env=env, capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="params-cpu.yaml")
    ap.add_argument("--dir", default=".profiles/cpu", help="where the copy lives (relative to the project)")
    args = ap.parse_args()
    dest = ROOT / args.dir
    env = environment()
    sync(dest, args.profile, env)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=dest, env=env)
    if proc.returncode != 0:
        sys.exit(f"dvc repro failed in {dest} (exit {proc.returncode}); run this command again to resume")
    reports = ROOT / "reports"
    for name in ("tables", "figures"):
        shutil.rmtree(reports / name, ignore_errors=True)
        shutil.copytree(dest / "reports" / name, reports / name)
    shutil.copy2(dest / "reports/cpu_benchmark.md", reports / "cpu_benchmark.md")
    print(f"{args.profile}: pipeline done in {time.perf_counter() - start:.0f} s; reports copied to {reports}/")


if __name__ == "__main__":
    main()
