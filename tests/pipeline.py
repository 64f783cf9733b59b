"""A throw-away git + DVC copy of the project, for running the real pipeline in tests."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .conftest import ROOT, subprocess_env


def project_files() -> list[str]:
    """The working tree as git sees it: tracked and untracked files, not the ignored ones."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                         capture_output=True, check=True)
    return [f for f in out.stdout.decode().split("\0") if f and (ROOT / f).is_file()]


@dataclass
class Project:
    root: Path
    env: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)

    def run(self, *cmd: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
        proc = subprocess.run(cmd, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n"
                                 f"{proc.stderr[-6000:]}")
        return proc

    def dvc(self, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
        return self.run(sys.executable, "-m", "dvc", *args, check=check, timeout=timeout)

    def repro(self, *args: str) -> tuple[list[str], str]:
        """Run ``dvc repro``; return the stages that ran and the whole output."""
        start = time.perf_counter()
        proc = self.dvc("repro", *args)
        self.timings[" ".join(("repro", *args))] = time.perf_counter() - start
        output = proc.stdout + proc.stderr
        return stages_run(output), output


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def make_project(dest: Path, profile: str = "params-smoke.yaml", *, fixtures: bool = True) -> Project:
    """Copy the project into ``dest`` with ``profile`` as its params.yaml; git + DVC initialised."""
    dest.mkdir(parents=True, exist_ok=True)
    for rel in project_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    shutil.copy2(ROOT / profile, dest / "params.yaml")
    env = subprocess_env(DVC_SITE_CACHE_DIR=str(dest.parent / f"{dest.name}-dvc-site"),
                         GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.com",
                         GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.com")
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("DVC_ROOT", None)
    project = Project(dest, env)
    if fixtures:
        project.run(sys.executable, "-m", "tests.fixtures", "data/fixtures")
    project.run("git", "init", "-q", "-b", "main")
    project.dvc("init", "-q")
    project.dvc("config", "core.autostage", "true")
    project.run("git", "add", "-A")
    project.run("git", "commit", "-qm", "project")
    return project
