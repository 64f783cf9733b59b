"""Training one run (a ``baseline@``, ``multistage@`` or ``ablate@`` stage), resumable, on 1..N processes.

The recipe of the original (method.md): two phases, each its own one-cycle
(timm's cosine schedule with warmup): the encoder frozen but for its norms, then
all layers with the encoder at ``lr / encoder_lr_div``; RAdam + Lookahead;
label smoothing; bf16 autocast on CUDA. A checkpoint (weights, optimiser,
scheduler, scaler, RNG states, history, MLflow run) is written atomically at each
epoch end and every ``ckpt_every`` steps; the same command started again resumes
from it. The final epoch is evaluated on the test split, never a best epoch.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch.utils.data import DataLoader
from tqdm import tqdm

from . import evaluate
from .config import RunConfig
from .data.loader import EpochBatches, Manifest, ManifestDataset
from .errors import UserError
from .io import atomic_write_bytes, write_json, write_text
from .multistage import build, joint_loss

CHECKPOINT_FORMAT = 1


class NonFiniteLossError(UserError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass(frozen=True)
class RunPaths:
    data: Path          # data/prepared/<dataset>
    model_dir: Path     # models/<dataset>/<name>
    metrics: Path       # metrics/<dataset>/<name>.json
    history: Path       # metrics/<dataset>/<name>_history.csv
    checkpoints: Path   # checkpoints/<dataset>/<name> (not a DVC output: it survives a killed run)

    @classmethod
    def for_run(cls, dataset: str, name: str, root: Path = Path(".")) -> "RunPaths":
        return cls(root / "data/prepared" / dataset, root / "models" / dataset / name,
                   root / "metrics" / dataset / f"{name}.json", root / "metrics" / dataset / f"{name}_history.csv",
                   root / "checkpoints" / dataset / name)


@dataclass(frozen=True)
class Phase:
    name: str
    epochs: int
    lr: float
    frozen: bool


def phases(cfg: RunConfig) -> list[Phase]:
    t = cfg.train
    all_phases = [Phase("frozen", t.epochs_frozen, t.lr_frozen, True), Phase("unfrozen", t.epochs, t.lr, False)]
    return [p for p in all_phases if p.epochs > 0]


# ------------------------------------------------------------------ distributed
@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "Dist":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def all_true(self, flag: bool, device) -> bool:
        if self.world == 1:
            return flag
        t = torch.tensor([1 if flag else 0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())

    def gather(self, obj):
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


def _device(d: Dist) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(d.local_rank)
        return torch.device("cuda", d.local_rank)
    return torch.device("cpu")


def _autocast(device: torch.device, enabled: bool):
    if device.type == "cuda" and enabled:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return lambda: torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext


# ------------------------------------------------------------------ optimisation
def _param_groups(net: torch.nn.Module, phase: Phase, cfg: RunConfig) -> list[dict]:
    """Head (and, when frozen, the encoder's norms) at ``lr``; the rest of the encoder at ``lr / div``."""
    norms = set(net.norm_param_names())
    head, encoder = [], []
    for name, p in net.named_parameters():
        is_encoder = name.startswith("encoder.")
        p.requires_grad_(not (phase.frozen and is_encoder and name not in norms))
        if not p.requires_grad:
            continue
        (encoder if is_encoder and not phase.frozen else head).append(p)
    wd = cfg.train.weight_decay
    groups = []
    for params, lr in ((head, phase.lr), (encoder, phase.lr / cfg.train.encoder_lr_div)):
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]  # biases and norms: no weight decay
        groups += [{"params": g, "lr": lr, "weight_decay": w} for g, w in ((decay, wd), (no_decay, 0.0)) if g]
    return groups


def _optimizer_and_schedule(net, phase: Phase, cfg: RunConfig, steps_per_epoch: int):
    t = cfg.train
    groups = _param_groups(net, phase, cfg)
    opt = create_optimizer_v2(groups, opt=t.opt, lr=phase.lr, weight_decay=t.weight_decay)
    low = min(g["lr"] for g in groups)
    # one cycle per phase: a linear warmup over the first `warmup` of the steps up to the peak,
    # then the schedule's decay (cosine: annealing) over the rest
    sched, _ = create_scheduler_v2(opt, sched=t.sched, num_epochs=(1 - t.warmup) * phase.epochs,
                                   warmup_epochs=t.warmup * phase.epochs, warmup_prefix=True, warmup_lr=low / 25,
                                   min_lr=low * t.min_lr_ratio, step_on_epochs=False,
                                   updates_per_epoch=steps_per_epoch)
    return opt, sched


# ------------------------------------------------------------------ checkpoints
def config_hash(cfg: RunConfig, manifest: Path) -> str:
    h = hashlib.sha256(cfg.to_yaml().encode())
    h.update(manifest.read_bytes())
    return h.hexdigest()[:16]


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpoints:
    """``<folder>/last.pt``, written atomically; only resumed by a run with the same config and data."""

    def __init__(self, folder: Path, key: str):
        self.folder, self.key = folder, key
        self.path = folder / "last.pt"

    def load(self) -> dict | None:
        if not self.path.exists():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=False)
        if state.get("format") != CHECKPOINT_FORMAT or state.get("key") != self.key:
            tqdm.write(f"{self.path}: written for another config or data; starting from scratch")
            return None
        return state

    def save(self, state: dict) -> None:
        import io

        buf = io.BytesIO()
        torch.save({"format": CHECKPOINT_FORMAT, "key": self.key, **state}, buf)
        atomic_write_bytes(self.path, buf.getvalue())

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


# ------------------------------------------------------------------ the run
def _loader(ds, *, workers: int, device, **batching) -> DataLoader:
    return DataLoader(ds, num_workers=workers, pin_memory=device.type == "cuda",
                      prefetch_factor=4 if workers else None, **batching)


def _eval_loader(ds: ManifestDataset, d: Dist, cfg: RunConfig, device) -> DataLoader:
    shard = torch.utils.data.Subset(ds, list(range(d.rank, len(ds), d.world)))
    return _loader(shard, batch_size=cfg.train.eval_batch_size, workers=cfg.train.workers, device=device)


def _predict(model, ds, d: Dist, cfg, device, autocast) -> evaluate.Predictions | None:
    part = evaluate.predict(model, _eval_loader(ds, d, cfg, device), device, autocast)
    parts = d.gather(part)
    return evaluate.Predictions.concat(parts).sorted() if d.main else None


def train(cfg: RunConfig, paths: RunPaths, *, stage: str, tracker_factory=None, progress: bool = True) -> dict | None:
    """Train and evaluate one run; write its outputs (on the main process); return the test metrics."""
    d = Dist.from_env()
    if d.world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = _device(d)
    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    if t.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)

    manifest = Manifest.read(paths.data)
    size = cfg.high_res if cfg.model == "multistage" else cfg.backbone.img_size
    train_ds = ManifestDataset(manifest, "train", size, train=True, transform=cfg.transform, seed=cfg.seed)
    test_ds = ManifestDataset(manifest, "test", size, train=False)
    has_val = (manifest.table["split"] == "val").any()
    val_ds = ManifestDataset(manifest, "val", size, train=False) if has_val else None
    sampler = EpochBatches(len(train_ds), t.batch_size, seed=cfg.seed, rank=d.rank, world=d.world,
                           accum=t.accum_steps)
    steps_per_epoch = sampler.steps

    torch.manual_seed(cfg.seed)  # the head's initialisation does not depend on what ran before
    model = build(cfg, len(manifest.classes)).to(device)
    net = model.net
    autocast = _autocast(device, t.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and t.amp
                                  and not torch.cuda.is_bf16_supported())

    ckpt = Checkpoints(paths.checkpoints, config_hash(cfg, paths.data / "manifest.csv"))
    state = ckpt.load()
    if state is not None:
        net.load_state_dict(state["model"])
        if d.main:
            tqdm.write(f"{stage}: resuming from {ckpt.path} (epoch {state['epoch'] + 1}, step {state['step']})",
                       file=sys.stderr)
    history: list[dict] = state["history"] if state else []
    tracker = None
    if d.main and tracker_factory is not None:
        tracker = tracker_factory()
        tracker.start(cfg.run_name, tags=_tags(cfg, stage), params=cfg.model_dump(mode="json"),
                      run_id=state.get("mlflow_run_id") if state else None)

    all_phases = phases(cfg)
    epoch_offset = 0
    status = "FAILED"
    try:
        for p_index, phase in enumerate(all_phases):
            if state is not None and p_index < state["phase"]:
                epoch_offset += phase.epochs
                continue
            opt, sched = _optimizer_and_schedule(net, phase, cfg, steps_per_epoch)
            updates = 0
            start_epoch, start_step, carry = 0, 0, None
            if state is not None and p_index == state["phase"]:
                opt.load_state_dict(state["optimizer"])
                sched.load_state_dict(state["scheduler"])
                scaler.load_state_dict(state["scaler"])
                _set_rng_state(state["rng"])
                start_epoch, start_step, updates = state["epoch"] - epoch_offset, state["step"], state["updates"]
                carry = state["epoch_sums"][d.rank] if state.get("epoch_sums") else None
                state = None
            wrapped = model
            if d.world > 1:
                wrapped = torch.nn.parallel.DistributedDataParallel(
                    model, device_ids=[device.index] if device.type == "cuda" else None)
            for local_epoch in range(start_epoch, phase.epochs):
                epoch = epoch_offset + local_epoch
                row, updates = _train_epoch(
                    wrapped, model, train_ds, sampler, cfg, phase, opt, sched, scaler, autocast, device, d,
                    epoch=epoch, start_step=start_step, carry=carry, updates=updates, ckpt=ckpt, history=history,
                    p_index=p_index, tracker=tracker, progress=progress, stage=stage)
                start_step, carry = 0, None
                if val_ds is not None:
                    val = _predict(model, val_ds, d, cfg, device, autocast)
                    if d.main:
                        row.update({f"val_{k}": v for k, v in evaluate.metrics(val, manifest.classes).items()
                                    if k != "images"})
                history.append(row)
                if d.main:
                    if tracker:
                        tracker.log_metrics({k: v for k, v in row.items() if k not in ("epoch", "phase")},
                                            step=epoch + 1)
                    ckpt.save(_checkpoint_state(net, opt, sched, scaler, p_index, epoch + 1, 0, updates, history,
                                                tracker))
                d.barrier()
            epoch_offset += phase.epochs

        test = _predict(model, test_ds, d, cfg, device, autocast)
        result = None
        if d.main:
            result = _write_outputs(cfg, paths, model, manifest, test_ds, test, history, tracker)
            ckpt.clear()
        status = "FINISHED"
        d.barrier()
        return result
    finally:
        if tracker is not None:
            tracker.finish(status)
        if d.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def equal_time_config(cfg: RunConfig, multistage: dict, baseline: dict) -> RunConfig:
    """The baseline given the multistage model's wall-clock budget: its epochs scaled by the time ratio.

    ``multistage`` and ``baseline`` are the metrics of the two runs (their ``train_seconds``).
    """
    factor = multistage["train_seconds"] / baseline["train_seconds"]
    t = cfg.train
    train = t.model_copy(update={"epochs_frozen": round(t.epochs_frozen * factor),
                                 "epochs": max(1, round(t.epochs * factor)) if t.epochs else 0})
    return cfg.model_copy(update={"variant": "equal_time", "train": train})


def hardware() -> dict:
    """What a run was measured on (for the reports)."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "gpu": gpu,
            "torch": torch.__version__}


def loss_of(out, labels, cfg: RunConfig):
    """The run's training loss: the joint loss of its stages, with its label smoothing and part reduction."""
    return joint_loss(out, labels, label_smoothing=cfg.train.label_smoothing,
                      part_loss=cfg.multistage.part_loss if cfg.multistage else "sum")


def _tags(cfg: RunConfig, stage: str) -> dict:
    from .tracking import git_commit, project_root

    return {"dataset": cfg.dataset, "model": cfg.model, "variant": cfg.variant or "", "dvc_stage": stage,
            "dvc_exp_name": os.environ.get("DVC_EXP_NAME"), "git_commit": git_commit(project_root())}


def _checkpoint_state(net, opt, sched, scaler, phase, epoch, step, updates, history, tracker,
                      epoch_sums=None) -> dict:
    return {"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict(), "rng": _rng_state(), "phase": phase, "epoch": epoch, "step": step,
            "updates": updates, "history": list(history), "epoch_sums": epoch_sums,
            "mlflow_run_id": tracker.run_id if tracker else None}


def _train_epoch(wrapped, model, ds, sampler, cfg, phase, opt, sched, scaler, autocast, device, d: Dist, *,
                 epoch, start_step, carry, updates, ckpt, history, p_index, tracker, progress, stage):
    t = cfg.train
    model.train()
    model.set_epoch(epoch)
    ds.set_epoch(epoch)
    sampler.set_epoch(epoch, start_step)
    loader = _loader(ds, batch_sampler=sampler, workers=t.workers, device=device)
    total_steps = sampler.steps
    # running sums of the epoch; a mid-epoch checkpoint carries them, so a resumed epoch reports the same numbers
    sums = dict(carry) if carry else {"loss": 0.0, "correct": 0.0, "images": 0, "seconds": 0.0, "stages": {}}
    stage_losses: dict[str, float] = dict(sums.pop("stages"))
    start = time.perf_counter() - sums.pop("seconds")
    bar = tqdm(total=total_steps, initial=start_step, desc=f"{stage} epoch {epoch + 1} ({phase.name})",
               unit="step", disable=not (progress and d.main), leave=True)
    micro = iter(loader)
    try:
        for step in range(start_step, total_steps):
            step_images = 0
            for a in range(t.accum_steps):
                images, labels, _idx, _boxes, draws = next(micro)
                images, labels, draws = (x.to(device, non_blocking=True) for x in (images, labels, draws))
                sync = a == t.accum_steps - 1 or d.world == 1
                no_sync = wrapped.no_sync if (d.world > 1 and not sync) else contextlib.nullcontext
                with no_sync():
                    with autocast():
                        out = wrapped(images, draws)
                    loss, parts = loss_of(out, labels, cfg)
                    if not d.all_true(bool(torch.isfinite(loss)), device):
                        raise NonFiniteLossError(
                            f"{stage}: the loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                            f"stopped without updating the weights. The last good checkpoint is kept in {ckpt.path} "
                            "(try a lower train.lr / train.lr_frozen, or train.grad_clip > 0)")
                    scaler.scale(loss / t.accum_steps).backward()
                n = labels.shape[0]
                step_images += n
                sums["loss"] += float(loss.detach()) * n
                sums["images"] += n
                probs = out.probabilities()["combined"]
                sums["correct"] += float((probs.argmax(1) == labels).sum())
                for k, v in parts.items():
                    stage_losses[k] = stage_losses.get(k, 0.0) + float(v) * n
            if t.grad_clip > 0:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], t.grad_clip)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            updates += 1
            sched.step_update(num_updates=updates)
            elapsed = time.perf_counter() - start
            bar.update()
            bar.set_postfix(loss=f"{sums['loss'] / sums['images']:.3f}",
                            acc=f"{100 * sums['correct'] / sums['images']:.1f}",
                            img_s=f"{sums['images'] * d.world / max(elapsed, 1e-9):.1f}")
            if t.ckpt_every and (step + 1) % t.ckpt_every == 0 and step + 1 < total_steps:
                carries = d.gather({**sums, "seconds": elapsed, "stages": dict(stage_losses)})  # one per process
                if d.main:
                    ckpt.save(_checkpoint_state(model.net, opt, sched, scaler, p_index, epoch, step + 1, updates,
                                                history, tracker, carries))
                d.barrier()
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    if d.world > 1:  # the epoch's numbers over every process's images
        keys = sorted(stage_losses)
        total = torch.tensor([sums["loss"], sums["correct"], sums["images"], *(stage_losses[k] for k in keys)],
                             dtype=torch.float64, device=device)
        dist.all_reduce(total)
        sums["loss"], sums["correct"], sums["images"] = total[0].item(), total[1].item(), int(total[2].item())
        stage_losses = {k: total[3 + i].item() for i, k in enumerate(keys)}
    images = max(sums["images"], 1)
    row = {"epoch": epoch + 1, "phase": phase.name, "lr": opt.param_groups[0]["lr"],
           "train_loss": round(sums["loss"] / images, 6), "train_acc": round(100 * sums["correct"] / images, 4),
           **{f"train_loss_{k}": round(v / images, 6) for k, v in sorted(stage_losses.items())},
           "seconds": round(seconds, 3), "images_per_s": round(sums["images"] / max(seconds, 1e-9), 2)}
    return row, updates


def _write_outputs(cfg: RunConfig, paths: RunPaths, model, manifest: Manifest, test_ds: ManifestDataset,
                   test: evaluate.Predictions, history: list[dict], tracker) -> dict:
    from safetensors.torch import save_file

    from . import viz

    classes = manifest.classes
    tmp = paths.model_dir.with_name(f".{paths.model_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()},
              str(tmp / "model.safetensors"))
    write_text(tmp / "config.yaml", cfg.to_yaml())
    pd.DataFrame({"label": range(len(classes)), "class_name": classes}).to_csv(tmp / "classes.csv", index=False)
    evaluate.prediction_table(test, test_ds, classes).to_csv(tmp / "predictions.csv", index=False)
    evaluate.per_class(test, classes).to_csv(tmp / "per_class.csv", index=False)
    confusion = evaluate.confusion(test, classes)
    confusion.to_csv(tmp / "confusion.csv")
    viz.confusion_figure(confusion, title=cfg.run_name).savefig(tmp / "confusion.png", dpi=100)
    viz.sample_figure(model, test_ds, classes, n=4).savefig(tmp / "attention.png", dpi=100)
    shutil.rmtree(paths.model_dir, ignore_errors=True)
    tmp.rename(paths.model_dir)

    seconds = sum(r["seconds"] for r in history)
    result = {"dataset": cfg.dataset, "model": cfg.model, "variant": cfg.variant, "backbone": cfg.backbone.name,
              **evaluate.metrics(test, classes, auc=cfg.dataset == "plant"),
              "epochs": len(history),
              "train_seconds": round(seconds, 2),
              "seconds_per_epoch": round(seconds / max(len(history), 1), 3),
              "train_images_per_s": round(float(np.mean([r["images_per_s"] for r in history])), 2)
              if history else None,
              "final_train_loss": history[-1]["train_loss"] if history else None,
              "hardware": hardware()}
    write_json(paths.metrics, result)
    write_text(paths.history, pd.DataFrame(history).to_csv(index=False))
    if tracker is not None:
        tracker.log_metrics({f"test_{k}": v for k, v in result.items() if isinstance(v, (int, float))
                             and not isinstance(v, bool)}, step=len(history))
        for name in ("config.yaml", "confusion.png", "attention.png", "per_class.csv"):
            tracker.log_artifact(paths.model_dir / name)
    return result
