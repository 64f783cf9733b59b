"""The whole smoke pipeline both ways: ``dvc repro`` and ``vitfgvc repro --jobs N``, in fresh copies.

Each copy is made as ``benchmarks/profiles.py smoke`` makes one (the project's files, the smoke
params, the fixture archives); one runs ``dvc repro``, the other ``vitfgvc repro --jobs N`` (a
local Ray, started and stopped by the command, its start-up included). Both wall times, their
ratio and whether the outcomes are the same (``benchmarks/outcome.py``: every out and dep hash,
the measurement files without their measurements, the MLflow runs) go to a section of
``reports/performance.md`` (``benchmarks/run.py`` keeps that section when it rewrites the file).

    python benchmarks/bench_parallel.py [--jobs 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.outcome import compare  # noqa: E402
from benchmarks.profiles import PROFILES, environment, sync  # noqa: E402

HEADING = "## `vitfgvc repro --jobs N` against `dvc repro`"


def measure(jobs: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-parallel-") as tmp:
        copies = {}
        for name in ("sequential", "parallel"):
            dest = Path(tmp) / name
            env = environment(DVC_SITE_CACHE_DIR=str(Path(tmp) / f"{name}-site"),
                              RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
            env.pop("MLFLOW_TRACKING_URI", None)
            sync(dest, PROFILES["smoke"], env)
            copies[name] = (dest, env)
        seconds = {}
        for name, cmd in (("sequential", [sys.executable, "-m", "dvc", "repro"]),
                          ("parallel", [str(Path(sys.executable).parent / "vitfgvc"), "repro", "--jobs", str(jobs)])):
            dest, env = copies[name]
            print(f"bench_parallel: {' '.join(Path(c).name for c in cmd[:2])} ... in {dest}", flush=True)
            start = time.perf_counter()
            proc = subprocess.run(cmd, cwd=dest, env=env, capture_output=True, text=True)
            seconds[name] = time.perf_counter() - start
            if proc.returncode != 0:
                sys.exit(f"bench_parallel: {name} run failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
        diffs = compare(copies["sequential"][0], copies["parallel"][0])
        stages = len(__import__("yaml").safe_load((copies["sequential"][0] / "dvc.lock").read_text())["stages"])
    return {"jobs": jobs, "seconds": seconds, "ratio": seconds["sequential"] / seconds["parallel"], "diffs": diffs,
            "stages": stages, "cores": os.cpu_count()}


def section(r: dict) -> str:
    same = "the same outcome" if not r["diffs"] else f"**different outcomes** ({'; '.join(r['diffs'][:5])})"
    return "\n".join([
        HEADING, "",
        f"Measured by `python benchmarks/bench_parallel.py --jobs {r['jobs']}` on "
        f"{datetime.now(timezone.utc):%Y-%m-%d}, {r['cores']} cores: the smoke pipeline's {r['stages']} stages "
        "from scratch in two fresh copies.", "",
        "| command | seconds |", "| --- | --- |",
        f"| `dvc repro` | {r['seconds']['sequential']:.0f} |",
        f"| `vitfgvc repro --jobs {r['jobs']}` (a local Ray, its start included) | {r['seconds']['parallel']:.0f} |",
        "", f"`dvc repro` / `vitfgvc repro --jobs {r['jobs']}`: **{r['ratio']:.2f}x**, with {same} "
        "(every out and dep hash, the measurement files without their measurements, the MLflow runs)."]) + "\n"


def replace_section(path: Path, heading: str, text: str) -> None:
    """Put ``text`` (a ``## `` section starting with ``heading``) in the Markdown file ``path``, in place of the
    section with that heading, or at its end."""
    old = path.read_text() if path.exists() else ""
    start = old.find(heading)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = old.find("\n## ", start + len(heading))
        new = old[:start] + text + (old[end + 1:] if end >= 0 else "")
    path.write_text(new)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "reports/performance.md")
    args = ap.parse_args(argv)
    r = measure(args.jobs)
    text = section(r)
    replace_section(args.out, HEADING, text)
    print(text)
    if r["diffs"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
