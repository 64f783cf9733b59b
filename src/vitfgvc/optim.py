"""The optimiser and learning-rate schedule of a run: the original's fastai recipe from torch/timm parts.

The authors trained with fastai's ``ranger`` and ``fit_one_cycle``; this module rebuilds them:

* **Parameter groups**, fixed for the whole run: the encoder, its final norm and the head (the
  original's splitter ``(image_encoder, norm, classifier)``), each split into decay / no-decay by
  fastai's ``wd_bn_bias=False`` rule: no weight decay on the parameters of norm layers nor on any
  module's ``bias``. Every other parameter decays, ``cls_token`` and ``pos_embed`` included (fastai's
  ``norm_bias_params`` does not list them).
* **Phases**: frozen, only the head, the final norm and every norm layer of the encoder train
  (fastai's ``freeze_to(1)`` with ``train_bn=True``); unfrozen, everything. A phase starts with empty
  optimiser state, as fastai's ``freeze_to`` / ``unfreeze`` clear it (``Learner.freeze_to`` calls
  ``opt.clear_state()``).
* ``ranger``: ``torch.optim.RAdam`` with decoupled weight decay inside :class:`Lookahead`.
* ``one_cycle``: ``torch.optim.lr_scheduler.OneCycleLR`` per phase, the learning rate of each group
  from ``lr_max / div`` up to ``lr_max`` and down to ``lr_max / div_final`` along cosines, beta1
  cycled ``moms[0] -> moms[1] -> moms[0]``; per-group ``lr_max`` is the phase's lr, the encoder's
  divided by ``encoder_lr_div`` once unfrozen.

Any other ``train.opt`` is a timm optimiser over the same groups, any other ``train.sched`` a timm
scheduler with a linear warm-up (the project's earlier recipe). The optimiser and every scheduler
have ``state_dict`` / ``load_state_dict``: a run resumed mid-phase continues bit-identically.
"""

from __future__ import annotations

from typing import Protocol

import torch
from timm.optim import Lookahead as TimmLookahead
from timm.optim import create_optimizer_v2, get_optimizer_info, list_optimizers
from timm.scheduler import create_scheduler_v2
from torch import nn
from torch.optim.lr_scheduler import OneCycleLR

from .config import TrainSection
from .errors import UserError

__all__ = ["PARTS", "Lookahead", "PerStep", "PhaseLike", "build_optimizer", "lr_max", "param_groups", "phase_scheduler",
           "ranger", "reset_state", "set_trainable", "start_phase"]

PARTS = ("encoder", "norm", "head")  # the original's parameter groups, in its order
FINAL_NORMS = ("norm", "fc_norm")    # the timm encoder's norms after the last block (the original's `norm` group)


class PhaseLike(Protocol):
    """What a training phase tells this module (``vitfgvc.training.Phase`` has these fields)."""

    epochs: int
    lr: float
    frozen: bool


# ------------------------------------------------------------------ parameters
def _is_norm(module: nn.Module) -> bool:
    # the rule of vitfgvc.model.norm_param_names: timm's norm layers all carry "Norm" in the class name
    return "Norm" in type(module).__name__


def _no_decay_ids(net: nn.Module) -> set[int]:
    """fastai's ``norm_bias_params(net, with_bias=True)``: every norm layer's parameters and every module's bias."""
    ids = set()
    for module in net.modules():
        own = dict(module.named_parameters(recurse=False))
        if _is_norm(module):
            ids |= {id(p) for p in own.values()}
        elif own.get("bias") is not None:
            ids.add(id(own["bias"]))
    return ids


def _part(name: str) -> str:
    if name.startswith("head."):
        return "head"
    if name.startswith("encoder."):
        return "norm" if name.split(".")[1] in FINAL_NORMS else "encoder"
    raise ValueError(f"parameter {name!r} is in neither net.encoder nor net.head: no optimiser group takes it")


def param_groups(net: nn.Module, train_cfg: TrainSection) -> list[dict]:
    """The run's groups: for each of :data:`PARTS` its decaying and its non-decaying parameters (empty ones left out).

    Each group carries ``part`` (``"encoder"``, ``"norm"``, ``"head"``), ``decay`` (bool) and its
    ``weight_decay`` (``train_cfg.weight_decay`` or 0). Frozen parameters stay in their group; without
    a gradient the optimiser skips them.
    """
    no_decay = _no_decay_ids(net)
    members: dict[tuple[str, bool], list[nn.Parameter]] = {(part, d): [] for part in PARTS for d in (True, False)}
    for name, p in net.named_parameters():
        members[_part(name), id(p) not in no_decay].append(p)
    return [{"params": params, "part": part, "decay": decay, "weight_decay": train_cfg.weight_decay if decay else 0.0}
            for (part, decay), params in members.items() if params]


def set_trainable(net: nn.Module, frozen: bool, frozen_norms: str = "final") -> None:
    """Unfrozen: every parameter trains. Frozen: the head and the final norm, and with ``frozen_norms="all"``
    every norm layer of the encoder too (fastai's ``train_bn``).

    The original asked for ``train_bn`` but checkpointed every block with reentrant checkpointing, whose
    output needs no gradient when its input needs none (a frozen patch embedding): the block norms got no
    gradient and only the final norm and the head trained. ``"final"`` is that, ``"all"`` fastai as written.
    """
    keep = set(net.norm_param_names()) if frozen_norms == "all" else set()
    if frozen_norms not in ("final", "all"):
        raise ValueError(f"frozen_norms must be 'final' or 'all', got {frozen_norms!r}")
    for name, p in net.named_parameters():
        p.requires_grad_(not frozen or name in keep or _part(name) != "encoder")


def lr_max(part: str, phase: PhaseLike, train_cfg: TrainSection) -> float:
    """A group's peak lr in a phase: the phase's lr, the encoder's divided by ``encoder_lr_div`` once unfrozen."""
    return phase.lr / train_cfg.encoder_lr_div if part == "encoder" and not phase.frozen else phase.lr


# ------------------------------------------------------------------ optimiser
class Lookahead(TimmLookahead):
    """timm's Lookahead whose slow weights start from each parameter's value before its first update.

    timm creates a slow buffer at the first sync from the fast weights of that moment, which makes
    the first sync a no-op; fastai's Lookahead copies the weights before the first step, so the
    first sync (after ``k`` steps) already pulls the weights halfway back. This does the latter.
    The buffers live in the base optimiser's per-parameter state, so ``state_dict`` carries them.
    """

    @torch.no_grad()
    def step(self, closure=None):
        state = self._base_optimizer.state
        first = [(p, p.detach().clone()) for group in self.param_groups for p in group["params"]
                 if p.grad is not None and "lookahead_slow_buff" not in state.get(p, {})]
        loss = self._base_optimizer.step(closure)
        for p, before in first:
            state[p]["lookahead_slow_buff"] = before
        for group in self.param_groups:
            group["lookahead_step"] += 1
            if group["lookahead_step"] % group["lookahead_k"] == 0:
                self.update_slow(group)
        return loss


def ranger(groups: list[dict], train_cfg: TrainSection) -> Lookahead:
    """fastai's ``ranger``: Lookahead(k, alpha) over RAdam with decoupled weight decay ``p *= 1 - lr * wd``."""
    t = train_cfg
    radam = torch.optim.RAdam(groups, lr=t.lr, betas=tuple(t.betas), eps=t.eps, weight_decay=t.weight_decay,
                              decoupled_weight_decay=True)
    return Lookahead(radam, alpha=t.lookahead_alpha, k=t.lookahead_k)


def _timm_optimizer(groups: list[dict], train_cfg: TrainSection) -> torch.optim.Optimizer:
    t = train_cfg
    base = t.opt.removeprefix("lookahead_")  # timm wraps "lookahead_<name>" itself
    if base not in list_optimizers():
        raise UserError(f"train.opt: unknown optimiser {t.opt!r}; expected 'ranger' or a timm optimiser name "
                        "(timm.optim.list_optimizers(), optionally prefixed 'lookahead_')")
    info = get_optimizer_info(base)
    extra = {}
    if info.has_betas and info.num_betas == 2:  # e.g. adan's three betas keep timm's defaults
        extra["betas"] = tuple(t.betas)
    if info.has_eps:
        extra["eps"] = t.eps
    return create_optimizer_v2(groups, opt=t.opt, lr=t.lr, weight_decay=t.weight_decay, **extra)


def build_optimizer(net: nn.Module, train_cfg: TrainSection) -> torch.optim.Optimizer:
    """The one optimiser of a run, over :func:`param_groups`; ``train.opt`` ``ranger`` or a timm name."""
    groups = param_groups(net, train_cfg)
    return ranger(groups, train_cfg) if train_cfg.opt == "ranger" else _timm_optimizer(groups, train_cfg)


def reset_state(optimizer: torch.optim.Optimizer) -> None:
    """Forget the moments, step counts and Lookahead slow weights (fastai's ``clear_state``); keep the groups."""
    sd = optimizer.state_dict()
    sd["state"] = {}
    for group in sd["param_groups"]:
        if "lookahead_step" in group:
            group["lookahead_step"] = 0
    optimizer.load_state_dict(sd)


# ------------------------------------------------------------------ schedules
class PerStep:
    """A timm scheduler stepped once per optimiser step; its update count is part of its state."""

    def __init__(self, scheduler):
        self.scheduler, self.updates = scheduler, 0

    def step(self) -> None:
        self.updates += 1
        self.scheduler.step_update(num_updates=self.updates)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.updates = state["updates"]
        self.scheduler.load_state_dict(state["scheduler"])


def _one_cycle(optimizer, peaks: list[float], steps: int, t: TrainSection) -> OneCycleLR:
    # fastai sets step i (0..N-1) of a phase at position i/N, so the peak falls on step warmup*N and
    # the end (lr_max/div_final) only after the last step. OneCycleLR peaks at step pct*total - 1 and
    # ends at total - 1: one extra step and pct = (warmup*N + 1)/(N + 1) give fastai's positions exactly.
    defaults = optimizer.defaults
    return OneCycleLR(optimizer, max_lr=peaks, total_steps=steps + 1, pct_start=(t.warmup * steps + 1) / (steps + 1),
                      anneal_strategy="cos", cycle_momentum="betas" in defaults or "momentum" in defaults,
                      max_momentum=t.moms[0], base_momentum=t.moms[1], div_factor=t.div,
                      final_div_factor=t.div_final / t.div, three_phase=False)


def _timm_schedule(optimizer, peaks: list[float], phase: PhaseLike, t: TrainSection, steps_per_epoch: int) -> PerStep:
    for group, peak in zip(optimizer.param_groups, peaks):
        group["lr"] = group["initial_lr"] = peak  # timm only sets initial_lr once: each phase has its own peaks
    low = min(peaks)
    # a linear warm-up over the first `warmup` of the steps from one floor (the smallest peak / div), then the decay
    sched, _ = create_scheduler_v2(optimizer, sched=t.sched, num_epochs=(1 - t.warmup) * phase.epochs,
                                   warmup_epochs=t.warmup * phase.epochs, warmup_prefix=True, warmup_lr=low / t.div,
                                   min_lr=low * t.min_lr_ratio, step_on_epochs=False,
                                   updates_per_epoch=steps_per_epoch)
    return PerStep(sched)


def phase_scheduler(optimizer: torch.optim.Optimizer, phase: PhaseLike, train_cfg: TrainSection,
                    steps_per_epoch: int) -> OneCycleLR | PerStep:
    """The learning-rate (and, for one_cycle, beta1) schedule of one phase; call ``.step()`` after each optimiser step.

    Setting it up puts every group at its step-0 values, so on resume build it first, then load the
    optimiser's and the scheduler's states.
    """
    steps = phase.epochs * steps_per_epoch
    if steps < 1:
        raise ValueError(f"a phase needs at least one optimiser step, got {phase.epochs} epochs x {steps_per_epoch}")
    peaks = [lr_max(g["part"], phase, train_cfg) for g in optimizer.param_groups]
    if train_cfg.sched == "one_cycle":
        return _one_cycle(optimizer, peaks, steps, train_cfg)
    return _timm_schedule(optimizer, peaks, phase, train_cfg, steps_per_epoch)


def start_phase(net: nn.Module, optimizer: torch.optim.Optimizer, phase: PhaseLike, train_cfg: TrainSection,
                steps_per_epoch: int) -> OneCycleLR | PerStep:
    """Begin a phase as fastai's ``freeze_to`` / ``unfreeze`` + ``fit_one_cycle`` did: set what trains, clear the
    optimiser's state, and return the phase's schedule. (On resume: call it, then load the saved states.)"""
    set_trainable(net, phase.frozen, train_cfg.frozen_norms)
    reset_state(optimizer)
    return phase_scheduler(optimizer, phase, train_cfg, steps_per_epoch)

