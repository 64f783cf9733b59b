"""Kill anywhere, lose nothing: each kind of stage is SIGKILLed at seeded random points and run again.

Every stage script runs as DVC runs it (``stages/<name>.py`` in the project folder), in a
forked process so that a run costs its work and not the interpreter's start. After each
kill no output holds a half-written file (an output is absent, or complete and equal to
the uninterrupted run's); after the last run every output equals the uninterrupted
run's, byte for byte where the stage is deterministic. A download killed mid-file
continues from the bytes it kept, and nothing already verified is fetched again.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import runpy
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from vitfgvc.data.download import Checksums, fetch

from benchmarks.outcome import digest

from .conftest import ROOT, set_dotted, smoke_params
from .fixtures import FileServer, write_cub

pytestmark = pytest.mark.slow

KILLS = 3  # random kill points per stage


def _stage(project: Path, script: str, *args: str) -> None:
    """The body of a forked child: run ``stages/<script>`` in ``project`` as DVC would."""
    os.chdir(project)
    sys.argv = [script, *args]
    import torch

    torch.set_num_threads(1)
    try:
        runpy.run_path(str(ROOT / "stages" / script), run_name="__main__")
    except SystemExit as exc:
        os._exit(exc.code or 0)
    os._exit(0)


def _run(project: Path, script: str, *args: str, kill_after: float | None = None, timeout: float = 300) -> str:
    """Run a stage in a forked child; with ``kill_after``, SIGKILL it then. Returns "finished" or "killed"."""
    child = mp.get_context("fork").Process(target=_stage, args=(project, script, *args))
    child.start()
    child.join(kill_after if kill_after is not None else timeout)
    if child.is_alive():
        if kill_after is None:
            child.kill()
            raise AssertionError(f"{script} {' '.join(args)} did not finish in {timeout} s")
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        return "killed"
    assert child.exitcode == 0, f"{script} {' '.join(args)} exited with {child.exitcode}"
    return "finished"


STAGES = [  # (script, args, outputs)
    ("download.py", ("--dataset", "cub"), ["data/raw/cub"]),
    ("prepare.py", ("--dataset", "cub"), ["data/prepared/cub", "metrics/prepare/cub.json"]),
    ("train.py", ("--dataset", "cub", "--model", "multistage"), ["models/cub/multistage",
                                                                  "metrics/cub/multistage_training.json",
                                                                  "metrics/cub/multistage_history.csv"]),
    ("evaluate.py", ("--dataset", "cub", "--run", "multistage"), ["evaluation/cub/multistage",
                                                                   "metrics/cub/multistage.json"]),
    ("figures.py", ("--dataset", "cub"), ["reports/figures/cub"]),
    ("tables.py", (), ["reports/tables.md", "reports/tables"]),
]


def _project(root: Path, fixtures: Path) -> Path:
    data = set_dotted(smoke_params(), **{
        "pipeline.datasets": ["cub"], "pipeline.equal_time": [], "ablation.datasets": [],
        "datasets.cub.path": str(fixtures), "runtime.ckpt_every": 1, "runtime.workers": 0,
        "runtime.prepare_workers": 1, "train.epochs": 2})
    root.mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump(data))
    return root


def _import_the_stages() -> None:
    """What the stage scripts import, imported once here: a forked run then costs its work, and the kills land in
    the work, not in the imports."""
    import matplotlib.pyplot  # noqa: F401
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

    import vitfgvc.data.acquire  # noqa: F401
    import vitfgvc.data.prepare  # noqa: F401
    import vitfgvc.evaluate  # noqa: F401
    import vitfgvc.report.tables  # noqa: F401
    import vitfgvc.tracking  # noqa: F401
    import vitfgvc.training  # noqa: F401
    import vitfgvc.viz  # noqa: F401


def test_every_stage_killed_anywhere_ends_as_an_uninterrupted_run(tmp_path, monkeypatch, torch_state):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    _import_the_stages()
    fx = write_cub(tmp_path / "fx", per_class=6)
    whole, killed = _project(tmp_path / "whole", fx.root), _project(tmp_path / "killed", fx.root)
    rng = np.random.default_rng(16)
    tried = {}
    for script, args, outputs in STAGES:
        start = time.perf_counter()
        assert _run(whole, script, *args) == "finished"
        seconds = time.perf_counter() - start
        reference = {o: digest(whole / o) for o in outputs}
        outcomes = []
        for delay in sorted(rng.uniform(0.05, 0.95, KILLS) * seconds):
            outcomes.append(_run(killed, script, *args, kill_after=float(delay)))
            for o in outputs:  # an output is absent, or whole: never half-written
                got = digest(killed / o)
                assert got in ({}, reference[o]), f"{script} killed after {delay:.2f} s left a partial {o}"
        assert _run(killed, script, *args) == "finished"
        for o in outputs:
            assert digest(killed / o) == reference[o], f"{script}: {o} differs from the uninterrupted run"
        tried[script] = (outcomes.count("killed"), round(seconds, 2))
    print(f"\nkill points (killed, seconds of an uninterrupted run): {tried}")
    # every kind of stage was killed mid-way at least once (a run resumed after a kill may finish before the next
    # kill point: a training continues from its checkpoint)
    assert all(killed_runs >= 1 for killed_runs, _ in tried.values()), tried
    leftovers = [p for p in killed.rglob(".*.tmp*")]
    assert leftovers == [], leftovers


def _killed_fetch(url: str, dest: Path, checksums: Checksums, after: float) -> int:
    def body():
        fetch(url, dest, checksums=checksums, retries=0, chunk_size=64 << 10, progress=False)
        os._exit(0)

    child = mp.get_context("fork").Process(target=body)
    child.start()
    child.join(after)
    if child.is_alive():
        os.kill(child.pid, signal.SIGKILL)
        child.join()
    part = dest.with_name(dest.name + ".part")
    return part.stat().st_size if part.exists() else 0


def test_a_download_killed_mid_file_continues_from_what_it_kept(tmp_path):
    data = np.random.default_rng(3).integers(0, 256, 2 << 20, dtype=np.uint8).tobytes()
    checksums = Checksums(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    dest = tmp_path / "cache/big.bin"
    with FileServer({"/big.bin": data}) as srv:
        srv.chunk_delay = 0.01  # 32 chunks of 64 KiB: about 0.3 s for the whole file
        kept = []
        for after in (0.08, 0.12, 0.1):
            kept.append(_killed_fetch(srv.url("/big.bin"), dest, checksums, after))
            assert not dest.exists()  # never a partial file under the final name
        assert 0 < kept[0] < kept[1] < kept[2] < len(data), kept
        requests = srv.requests_for("/big.bin")
        ranges = [r.range for r in requests]
        assert ranges[0] is None and ranges[1:] == [f"bytes={k}-" for k in kept[:-1]], (ranges, kept)
        fetch(srv.url("/big.bin"), dest, checksums=checksums, retries=0, progress=False)
        assert srv.requests_for("/big.bin")[-1].range == f"bytes={kept[-1]}-"
        assert hashlib.sha256(dest.read_bytes()).hexdigest() == checksums.sha256
        srv.clear_log()
        fetch(srv.url("/big.bin"), dest, checksums=checksums, retries=0, progress=False)
        assert srv.requests == []  # verified: never fetched again
