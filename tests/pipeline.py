"""A throw-away copy of the project, made as ``benchmarks/profiles.py`` makes it, for running the real pipeline."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys
import time
import urllib.request
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(db: Path, env: dict[str, str]):
    """An ``mlflow server`` on 127.0.0.1 over the SQLite store ``db``, up and healthy; yields its URI."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}",
         "--default-artifact-root", str(db.parent / "mlartifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=db.parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise AssertionError(f"mlflow server did not start: {server.stderr.read1(4000)!r}") from None
                time.sleep(0.5)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)
