"""A throw-away copy of the project with another params profile, as a git + DVC repository.

``dvc repro`` always reads ``params.yaml``; the usual way to run another profile
(the CI smoke profile, the CPU benchmark) without touching the project's own
``params.yaml`` or ``dvc.lock`` is to copy the project, put the profile in place
as ``params.yaml`` and run DVC there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def project_files(root: Path) -> list[str]:
    """The working tree as git sees it: tracked and untracked files, not the ignored ones."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=root,
                         capture_output=True, check=True)
    return [f for f in out.stdout.decode().split("\0") if f and (root / f).is_file()]


def environment(**extra: str) -> dict[str, str]:
    """This interpreter's folder first on PATH, DVC analytics off, a git identity for the copy's commits."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    for key in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):
        env.setdefault(key, "vitfgvc")
    for key in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        env.setdefault(key, "vitfgvc@localhost")
    env.pop("DVC_ROOT", None)
    env.update(extra)
    return env


def copy_project(root: Path, dest: Path, profile: str | Path, *, env: dict[str, str],
                 cache_dir: Path | None = None) -> None:
    """Copy the project into ``dest`` with ``profile`` as ``params.yaml``; initialise git and DVC there."""
    root, dest = Path(root), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for rel in project_files(root):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)
    shutil.copy2(root / profile, dest / "params.yaml")

    def run(*cmd: str) -> None:
        subprocess.run(cmd, cwd=dest, env=env, check=True, capture_output=True)

    run("git", "init", "-q", "-b", "main")
    run(sys.executable, "-m", "dvc", "init", "-q")
    run(sys.executable, "-m", "dvc", "config", "core.autostage", "true")
    if cache_dir is not None:
        run(sys.executable, "-m", "dvc", "cache", "dir", str(cache_dir))
    run("git", "add", "-A")
    run("git", "commit", "-qm", f"project with {Path(profile).name} as params.yaml")
