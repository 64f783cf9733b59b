"""A throw-away copy of the project, made as ``benchmarks/profiles.py`` makes it, for running the real pipeline."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.profiles import PROFILES, Profile, environment, sync

from .conftest import ROOT


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


def make_project(dest: Path, profile: str | Profile = "smoke") -> Project:
    """The copy ``python benchmarks/profiles.py <profile>`` makes, in ``dest`` (a profile name or a :class:`Profile`)."""
    env = environment(DVC_SITE_CACHE_DIR=str(dest.parent / f"{dest.name}-dvc-site"))
    env.pop("MLFLOW_TRACKING_URI", None)
    sync(dest, PROFILES[profile] if isinstance(profile, str) else profile, env, ROOT)
    return Project(dest, env)
