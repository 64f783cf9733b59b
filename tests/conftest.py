"""Shared test set-up: the repository root, and environment for subprocess runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Ray, wherever a test starts it (and the stages it runs), binds to loopback only: its single-machine mode
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto`` (pyproject's addopts): one worker per CPU this process may run on (psutil's physical count
    can say 1 on a 2-vCPU machine), at most 8: ``--dist loadscope`` hands out whole modules, and the smoke
    pipeline's module alone is about 40 % of the suite."""
    return max(1, min(len(os.sched_getaffinity(0)), 8))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for stage/DVC subprocesses: this interpreter first on PATH, no analytics."""
    from benchmarks.profiles import environment

    return environment(PYTHONUNBUFFERED="1", **extra)


def set_dotted(data: dict, **dotted) -> dict:
    """Set ``{"a.b": v}`` style keys in a nested params mapping (in place); returns it."""
    from benchmarks.profiles import set_dotted as set_keys

    return set_keys(data, dotted)


def smoke_params(**dotted) -> dict:
    import yaml

    return set_dotted(yaml.safe_load((ROOT / "params-smoke.yaml").read_text()), **dotted)


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
    """Prepared ``dogs`` (the fixture archives, 8 images a class) and ``digits``, and a params file for them."""
    import yaml

    from vitfgvc.config import Params
    from vitfgvc.data.acquire import acquire
    from vitfgvc.data.prepare import prepare

    from .fixtures import write_dogs

    root = tmp_path_factory.mktemp("ws")
    fx = write_dogs(root / "fixtures", per_class=8)
    data = smoke_params(**{"datasets.dogs.path": str(fx.root)})
    params = Params.model_validate(data)
    for name in ("dogs", "digits"):
        acquire(name, params.dataset(name), params.runtime.download, root / "data/raw" / name, progress=False)
        prepare(name, params, root / "data/raw" / name, root / "data/prepared" / name, progress=False)
    (root / "params.yaml").write_text(yaml.safe_dump(data))
    return root


@pytest.fixture()
def torch_state():
    """Training sets torch's global switches (threads, determinism): put them back afterwards."""
    import torch

    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(det)


def train_in_process(workspace: Path, out: Path, dataset: str, model: str, variant=None, uri=None, **dotted):
    """Train one run on the workspace's prepared data, then evaluate it, as the training and evaluation stages do;
    outputs under ``out``. Returns (cfg, paths, test metrics)."""
    import yaml

    from vitfgvc.config import Params
    from vitfgvc.evaluate import evaluate_model
    from vitfgvc.tracking import Tracker
    from vitfgvc.training import RunPaths, train

    data = set_dotted(yaml.safe_load((workspace / "params.yaml").read_text()), **dotted)
    params = Params.model_validate(data)
    cfg = params.run_config(dataset, model, variant)
    name = f"ablation/{variant}" if variant else model
    paths = RunPaths.for_run(dataset, name, out)
    paths = RunPaths(workspace / "data/prepared" / dataset, paths.model_dir, paths.history, paths.checkpoints)
    factory = (lambda: Tracker(params.runtime.mlflow_experiment, root=out, uri=uri)) if uri else None
    train(cfg, params.runtime, paths, stage=f"{model}@{dataset}", tracker_factory=factory, progress=False)
    metrics = evaluate_model(paths.model_dir, paths.data, out / "evaluation" / dataset / name,
                             out / "metrics" / dataset / f"{name}.json", params.runtime, tracker_factory=factory)
    return cfg, paths, metrics
