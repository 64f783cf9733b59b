"""Training one run (a ``baseline@``, ``multistage@``, ``ablate@`` or ``baseline_equal_time@`` stage).

Shaped as timm's ``train.py``: a :class:`TrainState` (model, optimiser, scheduler,
scaler, counters, history) that owns its checkpoint, :func:`train_one_epoch` and
:func:`validate` over it, and :func:`train` that strings the phases together. The
recipe (method.md): two phases, the encoder frozen but for its norms, then all
layers with the encoder at ``lr / encoder_lr_div``; label smoothing; bf16 autocast
on CUDA. A checkpoint is written atomically at each epoch end and every
``runtime.ckpt_every`` steps; the same command started again resumes from it,
bit-identically. Resumable on 1..N DDP processes.

The run writes its model directory (weights, resolved config, classes, a training
summary) and its history; evaluation on the test split is the evaluation stage's
(:mod:`vitfgvc.evaluate`), never a best epoch.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from tqdm import tqdm

from .config import RunConfig, RuntimeSection
from .data.loader import EpochBatches, Manifest, ManifestDataset
from .data.on_device import batch_views
from .devices import Dist, autocast_for, device_for, keep_freed_memory, make_loader, peak_memory_mib
from .errors import UserError
from .inference import CLASSES, CONFIG, TRAINING_SUMMARY, WEIGHTS, training_record
from .io import atomic_write_bytes, replacing_dir, write_json, write_text
from .multistage import build, joint_loss
from .optim import build_optimizer, start_phase
from .predictions import Predictions, predict

CHECKPOINT_FORMAT = 2


class NonFiniteLossError(UserError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class OutOfMemory(UserError, RuntimeError):
    """A training step ran out of memory; the message names the stage, the step and the micro-batch."""


@dataclass(frozen=True)
class RunPaths:
    data: Path          # data/prepared/<dataset>
    model_dir: Path     # models/<dataset>/<name>
    history: Path       # metrics/<dataset>/<name>_history.csv
    checkpoints: Path   # checkpoints/<dataset>/<name> (not a DVC output: it survives a killed run)

    @classmethod
    def for_run(cls, dataset: str, name: str, root: Path = Path(".")) -> "RunPaths":
        return cls(root / "data/prepared" / dataset, root / "models" / dataset / name,
                   root / "metrics" / dataset / f"{name}_history.csv", root / "checkpoints" / dataset / name)

    @property
    def record(self) -> Path:
        """metrics/<dataset>/<name>_training.json: how the training ran (seconds, hardware, the MLflow run)."""
        return training_record(self.history)


@dataclass(frozen=True)
class Phase:
    name: str
    epochs: int
    lr: float
    frozen: bool


def phases(cfg: RunConfig, *, limited: bool = False) -> list[Phase]:
    """The run's phases; ``limited`` (a rehearsal, ``runtime.limit_steps``): one epoch each."""
    t = cfg.train
    all_phases = [Phase("frozen", t.epochs_frozen, t.lr_frozen, True), Phase("unfrozen", t.epochs, t.lr, False),
                  Phase("final", t.epochs_final, t.lr_final, False)]
    return [Phase(p.name, 1 if limited else p.epochs, p.lr, p.frozen) for p in all_phases if p.epochs > 0]


# ------------------------------------------------------------------ the state and its checkpoint
def config_hash(cfg: RunConfig, manifest: Path, limit_steps: int = 0) -> str:
    """What a checkpoint must have been written for: the resolved config (no runtime key but a rehearsal's
    step limit) and the data."""
    h = hashlib.sha256(cfg.to_yaml().encode())
    h.update(manifest.read_bytes())
    if limit_steps:
        h.update(f"limit_steps={limit_steps}".encode())
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


@dataclass
class TrainState:
    """Everything a training carries from step to step; its checkpoint is this state."""

    model: torch.nn.Module                 # Baseline | MultiStage (its ``.net`` holds the weights)
    scaler: torch.amp.GradScaler
    optimizer: torch.optim.Optimizer       # one for the run (see vitfgvc.optim)
    scheduler: object | None = None        # the current phase's, stepped once per optimiser step
    phase: int = 0                         # index into phases(cfg)
    epoch: int = 0                         # epochs completed over all phases
    step: int = 0                          # optimiser steps completed in the current epoch
    history: list[dict] = field(default_factory=list)
    epoch_sums: list[dict] | None = None   # per process: running sums of a partly done epoch
    mlflow_run_id: str | None = None
    val_before: dict | None = None         # the validation before the first step (what the start weights do)

    def start_phase(self, index: int, phase: Phase, cfg: RunConfig, steps_per_epoch: int) -> None:
        """What trains, a cleared optimiser state and the phase's schedule (fastai's freeze_to + fit_one_cycle)."""
        self.scheduler = start_phase(self.model.net, self.optimizer, phase, cfg.train, steps_per_epoch)
        self.phase = index

    def state_dict(self) -> dict:
        return {"model": self.model.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "rng": _rng_state(),
                "phase": self.phase, "epoch": self.epoch, "step": self.step,
                "history": list(self.history), "epoch_sums": self.epoch_sums, "mlflow_run_id": self.mlflow_run_id,
                "val_before": self.val_before}

    def load_state_dict(self, state: dict) -> None:
        """Counters and weights (before the phase starts); :meth:`load_phase_state` the rest."""
        self.model.net.load_state_dict(state["model"])
        for key in ("phase", "epoch", "step", "history", "epoch_sums", "mlflow_run_id"):
            setattr(self, key, state[key])
        self.val_before = state.get("val_before")

    def load_phase_state(self, state: dict) -> None:
        """The optimiser, schedule, scaler and RNG of the phase the checkpoint was written in."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])


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

    def save(self, state: TrainState) -> None:
        buf = io.BytesIO()
        torch.save({"format": CHECKPOINT_FORMAT, "key": self.key, **state.state_dict()}, buf)
        atomic_write_bytes(self.path, buf.getvalue())

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    # the run's MLflow id, kept from the moment the run starts: a training killed before its first checkpoint
    # continues the same MLflow run instead of leaving a second one behind
    def run_id(self) -> str | None:
        path = self.folder / "mlflow_run.json"
        try:
            kept = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return kept.get("run_id") if kept.get("key") == self.key else None

    def keep_run_id(self, run_id: str) -> None:
        write_json(self.folder / "mlflow_run.json", {"key": self.key, "run_id": run_id})


# ------------------------------------------------------------------ one run's fixed context
@dataclass
class Context:
    """What stays fixed during a run: config, runtime, where it runs, where it writes, how it reports."""

    cfg: RunConfig
    runtime: RuntimeSection
    paths: RunPaths
    stage: str
    dist: Dist
    device: torch.device
    ckpt: Checkpoints
    tracker: object | None = None
    progress: bool = True
    flops: dict = field(default_factory=dict)  # FLOPs of one micro-step per (phase, stages, input shape)

    @property
    def autocast(self):
        return autocast_for(self.device, self.cfg.train.amp)

    def log(self, message: str) -> None:
        if self.dist.main:
            tqdm.write(f"{self.stage}: {message}", file=sys.stderr)


def loss_of(out, labels, cfg: RunConfig):
    """The run's training loss: the joint loss of its stages, with its label smoothing and part reduction."""
    return joint_loss(out, labels, label_smoothing=cfg.train.label_smoothing,
                      part_loss=cfg.multistage.part_loss if cfg.multistage else "sum")


def _sdpa_cpu_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def _sdpa_cpu_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out, query, key, value)


@contextlib.contextmanager
def counting_flops(counts: dict, key) -> object:
    """Count the FLOPs of what runs inside (forward and backward) into ``counts[key]``.

    torch's :class:`~torch.utils.flop_counter.FlopCounterMode` counts matrix products,
    convolutions and attention; its registry lacks the CPU flash-attention kernels that
    ``scaled_dot_product_attention`` runs on a CPU, counted here with the same formulas as
    the CUDA ones, so a run counts the same FLOPs on either device.
    """
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    cpu = {aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
           aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=cpu) as mode:
        yield mode
    counts[key] = mode.get_total_flops()


# ------------------------------------------------------------------ one epoch
@dataclass
class EpochSums:
    """One epoch's running numbers on this process. A mid-epoch checkpoint carries the sums (:meth:`snapshot`),
    so that a resumed epoch reports the same numbers; the seconds waited and optimising are this sitting's."""

    sums: dict                     # loss (summed over images), correct, images, flops
    stages: dict[str, float]       # each stage's loss, summed over images
    start: float                   # time.perf_counter() when the epoch began (a resumed one: its seconds earlier)
    waited: float = 0.0            # seconds blocked on the loader
    optimizing: float = 0.0        # seconds in optimiser steps
    images: torch.Tensor | None = None  # the last micro-batch, to say where a step failed

    @classmethod
    def resume(cls, epoch_sums: list[dict] | None, d: Dist) -> "EpochSums":
        """The sums a checkpoint carried for this process (:func:`_carry`), or zeros."""
        carry = _carry(epoch_sums, d)
        sums = dict(carry) if carry else {"loss": 0.0, "correct": 0.0, "images": 0, "flops": 0, "seconds": 0.0,
                                          "stages": {}}
        stages = dict(sums.pop("stages"))
        return cls(sums, stages, time.perf_counter() - sums.pop("seconds"))

    def add(self, out, loss: torch.Tensor, parts: dict, labels: torch.Tensor, flops: int) -> None:
        """A micro-batch's share: its FLOPs, loss, images, correct combined predictions and stage losses."""
        n = labels.shape[0]
        self.sums["flops"] += flops
        self.sums["loss"] += float(loss.detach()) * n
        self.sums["images"] += n
        self.sums["correct"] += float((out.probabilities()["combined"].argmax(1) == labels).sum())
        for k, v in parts.items():
            self.stages[k] = self.stages.get(k, 0.0) + float(v) * n

    def snapshot(self, elapsed: float) -> dict:
        """What a checkpoint carries of this process's partly done epoch."""
        return {**self.sums, "seconds": elapsed, "stages": dict(self.stages)}

    def all_reduce(self, d: Dist, device: torch.device) -> None:
        """The epoch's numbers over every process's images (nothing to do on one process)."""
        if d.world == 1:
            return
        keys = sorted(self.stages)
        total = torch.tensor([self.sums["loss"], self.sums["correct"], self.sums["images"], self.sums["flops"],
                              *(self.stages[k] for k in keys)], dtype=torch.float64, device=device)
        dist.all_reduce(total)
        self.sums["loss"], self.sums["correct"] = total[0].item(), total[1].item()
        self.sums["images"], self.sums["flops"] = int(total[2].item()), int(total[3].item())
        self.stages = {k: total[4 + i].item() for i, k in enumerate(keys)}


def _next_views(micro, device: torch.device, epoch: EpochSums):
    """The next micro-batch from the loader, on the device: its views (the views' augmentation runs there,
    ``runtime.augment``), labels and per-sample draws. The time blocked on the loader is counted."""
    t0 = time.perf_counter()
    images, labels, _idx, _boxes, draws, aug = next(micro)
    epoch.waited += time.perf_counter() - t0
    epoch.images = images  # until its views exist, a failure is named with the loader's crops
    images = epoch.images = batch_views(images, aug, device)
    labels, draws = (x.to(device, non_blocking=True) for x in (labels, draws))
    return images, labels, draws


def _forward_loss(state: TrainState, ctx: Context, wrapped: torch.nn.Module, images, labels, draws):
    """Forward (under autocast) and the run's loss; stops every process at once when the loss is not finite,
    before any weight is updated. Returns the model's output, the loss and the loss of each stage."""
    with ctx.autocast():
        out = wrapped(images, draws)
    loss, parts = loss_of(out, labels, ctx.cfg)
    if not ctx.dist.all_true(bool(torch.isfinite(loss)), ctx.device):
        raise NonFiniteLossError(
            f"{ctx.stage}: the loss became {loss.item()} at epoch {state.epoch + 1}, step "
            f"{state.step + 1}; stopped without updating the weights. The last good checkpoint is "
            f"kept in {ctx.ckpt.path} (try a lower train.lr / train.lr_frozen, or train.grad_clip > 0)")
    return out, loss, parts


def _micro_step(state: TrainState, ctx: Context, wrapped: torch.nn.Module, phase: Phase, batch, last: bool):
    """One micro-batch forward and backward (its share of the optimiser step's loss; gradients synchronised
    across processes on the ``last`` micro-batch only). Its FLOPs are counted the first time its shape runs:
    they depend on the phase (what trains), the stages that run and the input shape.
    Returns the output, loss, stage losses and FLOPs."""
    images, labels, draws = batch
    no_sync = wrapped.no_sync if (ctx.dist.world > 1 and not last) else contextlib.nullcontext
    shape = (phase.name, bool(getattr(state.model, "full_image_only", False)), tuple(images.shape))
    count = contextlib.nullcontext() if shape in ctx.flops else counting_flops(ctx.flops, shape)
    with count, no_sync():
        out, loss, parts = _forward_loss(state, ctx, wrapped, images, labels, draws)
        state.scaler.scale(loss / ctx.runtime.accum_steps).backward()
    return out, loss, parts, ctx.flops[shape]


def _step(state: TrainState, ctx: Context, epoch: EpochSums, bar, steps: int) -> None:
    """The optimiser step that ends ``runtime.accum_steps`` micro-batches (its time counted), the progress bar,
    and every ``runtime.ckpt_every`` steps but the epoch's last a checkpoint holding every process's sums."""
    t0 = time.perf_counter()
    _optimizer_step(state, ctx.cfg)
    epoch.optimizing += time.perf_counter() - t0
    state.step += 1
    elapsed = time.perf_counter() - epoch.start
    sums, d = epoch.sums, ctx.dist
    bar.update()
    bar.set_postfix(loss=f"{sums['loss'] / sums['images']:.3f}", acc=f"{100 * sums['correct'] / sums['images']:.1f}",
                    img_s=f"{sums['images'] * d.world / max(elapsed, 1e-9):.1f}")
    every = ctx.runtime.ckpt_every
    if every and state.step % every == 0 and state.step < steps:
        state.epoch_sums = d.gather(epoch.snapshot(elapsed))
        if d.main:
            ctx.ckpt.save(state)
        d.barrier()


@contextlib.contextmanager
def _naming_the_step(state: TrainState, ctx: Context, phase: Phase, epoch: EpochSums):
    """A training step that fails says where (:func:`_where`); out of memory, also what to try."""
    try:
        yield
    except torch.OutOfMemoryError as exc:
        raise OutOfMemory(f"{ctx.stage}: out of memory at {_where(state, ctx, phase, epoch.images)}: {exc}. Try a "
                          f"larger runtime.accum_steps (smaller micro-batches, same optimiser batch) or "
                          f"runtime.grad_checkpointing: true; the last checkpoint is kept in {ctx.ckpt.path}") from exc
    except Exception as exc:
        exc.add_note(f"{ctx.stage}: raised at {_where(state, ctx, phase, epoch.images)}")
        raise


def _history_row(state: TrainState, epoch: EpochSums, phase: Phase, steps: int, seconds: float,
                 device: torch.device) -> dict:
    """The epoch's row of the history: losses, accuracy, learning rates, FLOPs, times, memory."""
    sums, images = epoch.sums, max(epoch.sums["images"], 1)
    lrs = {g["part"]: g["lr"] for g in state.optimizer.param_groups}  # the last step's, per group
    return {"epoch": state.epoch + 1, "phase": phase.name, "lr": lrs["head"], "lr_encoder": lrs.get("encoder"),
            "train_loss": round(sums["loss"] / images, 6), "train_acc": round(100 * sums["correct"] / images, 4),
            **{f"train_loss_{k}": round(v / images, 6) for k, v in sorted(epoch.stages.items())},
            "steps": steps, "seconds": round(seconds, 3), "flops": int(sums["flops"]),
            "seconds_per_step": round(seconds / max(steps, 1), 4),
            "data_seconds": round(epoch.waited, 3), "optimizer_seconds": round(epoch.optimizing, 3),
            "images_per_s": round(sums["images"] / max(seconds, 1e-9), 2),
            "peak_memory_mib": round(peak_memory_mib(device)[0], 1)}


def train_one_epoch(state: TrainState, ctx: Context, ds: ManifestDataset, sampler: EpochBatches,
                    wrapped: torch.nn.Module, phase: Phase) -> dict:
    """One epoch from ``state.step`` on (a resumed epoch continues where it stopped); returns its history row.

    Each optimiser step: ``runtime.accum_steps`` micro-batches, each moved to the device and given its views
    (:func:`_next_views`), forward, loss and backward (:func:`_micro_step`) and counted (:meth:`EpochSums.add`);
    then the step itself, with a checkpoint every ``runtime.ckpt_every`` steps (:func:`_step`)."""
    rt, device = ctx.runtime, ctx.device
    state.model.train()
    state.model.set_epoch(state.epoch)
    ds.set_epoch(state.epoch)
    sampler.set_epoch(state.epoch, state.step)
    loader = make_loader(ds, batch_sampler=sampler, workers=rt.workers, device=device)
    epoch = EpochSums.resume(state.epoch_sums, ctx.dist)
    bar = tqdm(total=sampler.steps, initial=state.step, desc=f"{ctx.stage} epoch {state.epoch + 1} ({phase.name})",
               unit="step", disable=not (ctx.progress and ctx.dist.main), leave=True)
    micro = iter(loader)
    try:
        with _naming_the_step(state, ctx, phase, epoch):
            while state.step < sampler.steps:
                for a in range(rt.accum_steps):
                    batch = _next_views(micro, device, epoch)
                    out, loss, parts, flops = _micro_step(state, ctx, wrapped, phase, batch, a == rt.accum_steps - 1)
                    epoch.add(out, loss, parts, batch[1], flops)
                _step(state, ctx, epoch, bar, sampler.steps)
    finally:
        bar.close()
    seconds = time.perf_counter() - epoch.start
    epoch.all_reduce(ctx.dist, device)
    return _history_row(state, epoch, phase, sampler.steps, seconds, device)


def _where(state: TrainState, ctx: Context, phase: Phase, images: torch.Tensor | None) -> str:
    """Where a training step failed: epoch, phase, step, and the micro-batch with its image size."""
    cfg, rt = ctx.cfg, ctx.runtime
    micro = cfg.train.batch_size // (rt.accum_steps * ctx.dist.world)
    shape = f"{images.shape[-1]}x{images.shape[-2]} px" if images is not None else f"{cfg.high_res} px"
    return (f"epoch {state.epoch + 1} ({phase.name}), step {state.step + 1}, micro-batch of {micro} images of "
            f"{shape} (train.batch_size {cfg.train.batch_size}, model input {cfg.backbone.img_size} px)")


def _carry(epoch_sums: list[dict] | None, d: Dist) -> dict | None:
    """This process's share of a partly done epoch's sums; a run resumed on another number of processes
    gives rank 0 the sums of all the processes that wrote the checkpoint."""
    if not epoch_sums:
        return None
    if len(epoch_sums) == d.world:
        return epoch_sums[d.rank]
    if d.rank:
        return None
    total = {"loss": 0.0, "correct": 0.0, "images": 0, "flops": 0, "seconds": max(s["seconds"] for s in epoch_sums),
             "stages": {}}
    for s in epoch_sums:
        for k in ("loss", "correct", "images", "flops"):
            total[k] += s[k]
        for k, v in s["stages"].items():
            total["stages"][k] = total["stages"].get(k, 0.0) + v
    return total


def _optimizer_step(state: TrainState, cfg: RunConfig) -> None:
    opt, scaler = state.optimizer, state.scaler
    if cfg.train.grad_clip > 0:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], cfg.train.grad_clip)
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    state.scheduler.step()


def validate(state: TrainState, ctx: Context, ds: ManifestDataset) -> dict:
    """Accuracy of every stage on a validation split (``val_accuracy_a``, ..., ``val_accuracy``) and, for the
    multistage model, its object box against the true boxes (``val_box_iou``, ``val_box_iou50``, ``val_box_recall``)."""
    d = ctx.dist
    shard = torch.utils.data.Subset(ds, list(range(d.rank, len(ds), d.world)))
    loader = make_loader(shard, batch_size=ctx.runtime.eval_batch_size, workers=ctx.runtime.workers,
                         device=ctx.device)
    parts = d.gather(predict(state.model, loader, ctx.device, ctx.autocast))
    if not d.main:
        return {}
    pred = Predictions.concat(parts)
    return {f"val_{k}": v for k, v in {**pred.accuracies(), **pred.box_scores()}.items()}


# ------------------------------------------------------------------ the run
def train(cfg: RunConfig, runtime: RuntimeSection, paths: RunPaths, *, stage: str, tracker_factory=None,
          progress: bool = True) -> dict | None:
    """Train one run and write its model directory and history (on the main process); return its summary."""
    d = Dist.from_env()
    if d.world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = device_for(d)
    if device.type == "cpu":
        keep_freed_memory()  # each step's activations reuse the last step's memory
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    if cfg.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)

    manifest = Manifest.read(paths.data)
    size = cfg.high_res  # both models take the high-res view (the baseline resizes it), as in the original
    on_device = runtime.augment == "device"
    train_ds = ManifestDataset(manifest, "train", size, train=True, transform=cfg.transform, seed=cfg.seed,
                               on_device=on_device)
    val_ds = ManifestDataset(manifest, "val", size, train=False, transform=cfg.transform, on_device=on_device) \
        if (manifest.table["split"] == "val").any() else None
    sampler = EpochBatches(len(train_ds), cfg.train.batch_size, seed=cfg.seed, rank=d.rank, world=d.world,
                           accum=runtime.accum_steps, limit=runtime.limit_steps)

    torch.manual_seed(cfg.seed)  # the head's initialisation does not depend on what ran before
    model = build(cfg, len(manifest.classes), grad_checkpointing=runtime.grad_checkpointing).to(device)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and cfg.train.amp
                                  and not torch.cuda.is_bf16_supported())
    ctx = Context(cfg, runtime, paths, stage, d, device,
                  Checkpoints(paths.checkpoints, config_hash(cfg, paths.data / "manifest.csv", runtime.limit_steps)),
                  progress=progress)
    state = TrainState(model, scaler, build_optimizer(model.net, cfg.train))
    resumed = ctx.ckpt.load()
    if resumed is not None:
        state.load_state_dict(resumed)
        ctx.log(f"resuming from {ctx.ckpt.path} (epoch {state.epoch + 1}, step {state.step})")
    if d.main and tracker_factory is not None:
        ctx.tracker = tracker_factory()
        state.mlflow_run_id = ctx.tracker.start(cfg.run_name, tags=_tags(cfg, stage),
                                                params=cfg.model_dump(mode="json"), source=stage,
                                                run_id=state.mlflow_run_id or ctx.ckpt.run_id())
        ctx.ckpt.keep_run_id(state.mlflow_run_id)
        ctx.tracker.log_data(paths.data / "manifest.csv", cfg.dataset, splits=("train", "val"))

    status = "FAILED"
    try:
        _run_phases(state, ctx, train_ds, sampler, val_ds, resumed)
        summary = None
        if d.main:
            summary = _write_outputs(state, ctx, manifest.classes)
            ctx.ckpt.clear()
        status = "FINISHED"
        d.barrier()
        return summary
    finally:
        if ctx.tracker is not None:
            ctx.tracker.finish(status)
        if d.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _run_phases(state: TrainState, ctx: Context, train_ds, sampler: EpochBatches, val_ds,
                resumed: dict | None) -> None:
    """Every phase from where ``state`` stands (``resumed``: the checkpoint it was loaded from)."""
    first_epoch = 0
    every = ctx.cfg.train.eval_every
    all_phases = phases(ctx.cfg, limited=bool(ctx.runtime.limit_steps))
    total_epochs = sum(p.epochs for p in all_phases)
    if val_ds is not None and every and state.epoch == 0 and state.step == 0 and state.val_before is None:
        state.val_before = validate(state, ctx, val_ds) or None  # the start weights, before any step
    for index, phase in enumerate(all_phases):
        last_epoch = first_epoch + phase.epochs
        if state.epoch >= last_epoch:  # a phase a resumed run has finished
            first_epoch = last_epoch
            continue
        state.start_phase(index, phase, ctx.cfg, sampler.steps)
        if resumed is not None and resumed["phase"] == index:
            state.load_phase_state(resumed)
        resumed = None
        wrapped = state.model  # wrapped per phase: DDP syncs the parameters that train in this phase
        if ctx.dist.world > 1:
            wrapped = torch.nn.parallel.DistributedDataParallel(
                state.model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
        while state.epoch < last_epoch:
            row = train_one_epoch(state, ctx, train_ds, sampler, wrapped, phase)
            done = state.epoch + 1
            last = state.history[-1] if state.history else {}
            row["cum_seconds"] = round(last.get("cum_seconds", 0.0) + row["seconds"], 3)
            row["cum_flops"] = last.get("cum_flops", 0) + row["flops"]
            if val_ds is not None and every and (done % every == 0 or done in (1, total_epochs)):
                row.update(validate(state, ctx, val_ds))
            state.epoch, state.step, state.epoch_sums = state.epoch + 1, 0, None
            state.history.append(row)
            if ctx.dist.main:
                if ctx.tracker is not None:
                    ctx.tracker.log_metrics({k: v for k, v in row.items() if k not in ("epoch", "phase")},
                                            step=state.epoch)
                ctx.ckpt.save(state)
            ctx.dist.barrier()
        first_epoch = last_epoch


def _write_outputs(state: TrainState, ctx: Context, classes: list[str]) -> dict:
    """The model directory (weights, resolved config, classes, training summary), then the training's record and
    history; returns the summary and the record as one dict."""
    from safetensors.torch import save_file

    cfg, paths, history = ctx.cfg, ctx.paths, state.history
    seconds = sum(r["seconds"] for r in history)
    peak, memory = peak_memory_mib(ctx.device)
    # what was computed: the same for the same config and data, on any machine (the model directory's hash)
    summary = {"dataset": cfg.dataset, "model": cfg.model, "variant": cfg.variant, "backbone": cfg.backbone.name,
               "epochs": len(history), "train_flops": int(sum(r.get("flops", 0) for r in history)),
               "final_train_loss": history[-1]["train_loss"] if history else None,
               "batch_size": cfg.train.batch_size,
               "parameters": sum(p.numel() for p in state.model.net.parameters()),
               "limit_steps": ctx.runtime.limit_steps or None, "val_before_training": state.val_before}
    # how it ran: measurements, the processes and the MLflow run (beside the history)
    record = {"train_seconds": round(seconds, 2), "seconds_per_epoch": round(seconds / max(len(history), 1), 3),
              "train_images_per_s": round(float(np.mean([r["images_per_s"] for r in history])), 2)
              if history else None,
              "micro_batch": cfg.train.batch_size // (ctx.runtime.accum_steps * ctx.dist.world),
              "processes": ctx.dist.world, "grad_checkpointing": ctx.runtime.grad_checkpointing,
              "peak_memory_mib": round(peak, 1), "memory": memory, "hardware": hardware(),
              "mlflow_run_id": state.mlflow_run_id}
    with replacing_dir(paths.model_dir) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.model.net.state_dict().items()},
                  str(tmp / WEIGHTS))
        write_text(tmp / CONFIG, cfg.to_yaml())
        pd.DataFrame({"label": range(len(classes)), "class_name": classes}).to_csv(tmp / CLASSES, index=False)
        write_json(tmp / TRAINING_SUMMARY, summary)
    write_json(paths.record, record)
    write_text(paths.history, pd.DataFrame(history).to_csv(index=False))
    if ctx.tracker is not None:
        ctx.tracker.log_artifact(paths.model_dir / CONFIG)
    return {**summary, **record}


def equal_time_config(cfg: RunConfig, multistage: dict, baseline: dict) -> RunConfig:
    """The baseline given the multistage model's wall-clock budget: its epochs scaled by the time ratio.

    ``multistage`` and ``baseline`` are the two trainings' records (their ``train_seconds``).
    """
    factor = multistage["train_seconds"] / baseline["train_seconds"]
    t = cfg.train
    train = t.model_copy(update={"epochs_frozen": round(t.epochs_frozen * factor),
                                 "epochs": max(1, round(t.epochs * factor)) if t.epochs else 0,
                                 "epochs_final": round(t.epochs_final * factor)})
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


def _tags(cfg: RunConfig, stage: str) -> dict:
    """The project's own run tags (MLflow's source tags, the git commit among them, come from the tracker)."""
    return {"dataset": cfg.dataset, "model": cfg.model, "variant": cfg.variant or "", "dvc_stage": stage,
            "dvc_exp_name": os.environ.get("DVC_EXP_NAME")}
