"""The optimiser and schedule: the parameter groups of each phase; ranger and the one-cycle against fastai's."""

from __future__ import annotations

import copy
import io
import math
from dataclasses import dataclass

import pytest
import torch
import yaml
from timm.optim import Lookahead as TimmLookahead
from torch import nn
from torch.nn import functional as F

from vitfgvc.config import ParamsError, TrainSection, load_params
from vitfgvc.errors import UserError
from vitfgvc.model import build_model
from vitfgvc.optim import build_optimizer, lr_max, param_groups, ranger, start_phase

from .conftest import ROOT, smoke_params


@dataclass(frozen=True)
class Phase:  # the fields of vitfgvc.training.Phase that vitfgvc.optim reads
    epochs: int
    lr: float
    frozen: bool


PAPER = TrainSection()  # the paper profile's optimiser: ranger + one_cycle
CPU = load_params(ROOT / "params-cpu.yaml").train  # adamw + timm's cosine
FROZEN, UNFROZEN = Phase(2, 3e-3, True), Phase(4, 1e-3, False)  # the original's two fit_one_cycle calls
STEPS_PER_EPOCH = 5


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("vit_tiny_patch16_224", 5, img_size=32,
                       kwargs=dict(patch_size=8, embed_dim=32, depth=2, num_heads=2))


def train(net, opt, sched, steps: int, first: int = 0) -> None:
    """``steps`` optimiser steps on batches that depend only on the step index (so a resumed run sees the same)."""
    for i in range(first, first + steps):
        g = torch.Generator().manual_seed(i)
        x, y = torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 5, (4,), generator=g)
        F.cross_entropy(net(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()


def named(net) -> dict[int, str]:
    return {id(p): n for n, p in net.named_parameters()}


# ------------------------------------------------------------------ groups and phases
def fastai_norm_bias_params(m: nn.Module) -> list[nn.Parameter]:
    """fastai.torch_core.norm_bias_params(m, with_bias=True), as in fastai 2.3-2.8."""
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d,
                      nn.InstanceNorm3d, nn.LayerNorm)):
        return list(m.parameters())
    res = [p for c in m.children() for p in fastai_norm_bias_params(c)]
    if getattr(m, "bias", None) is not None:
        res.append(m.bias)
    return res


def test_groups_split_encoder_norm_head_and_decay_as_fastai():
    net = tiny_net()
    groups = param_groups(net, PAPER)
    names = named(net)
    members = {(g["part"], g["decay"]): [names[id(p)] for p in g["params"]] for g in groups}
    every = [n for ns in members.values() for n in ns]
    assert sorted(every) == sorted(n for n, _ in net.named_parameters())  # each parameter in exactly one group
    assert set(members) == {("encoder", True), ("encoder", False), ("norm", False), ("head", True), ("head", False)}
    assert members["norm", False] == ["encoder.norm.weight", "encoder.norm.bias"]
    assert members["head", True] == ["head.0.weight", "head.2.weight"]
    assert members["head", False] == ["head.0.bias", "head.2.bias"]
    # no decay on exactly fastai's wd_bn_bias=False set: norm layers and every module's bias
    no_decay = {n for (_, decay), ns in members.items() if not decay for n in ns}
    assert no_decay == {names[id(p)] for p in fastai_norm_bias_params(net)}
    assert {"encoder.blocks.0.norm1.weight", "encoder.blocks.1.attn.qkv.bias",
            "encoder.patch_embed.proj.bias"} <= no_decay
    # fastai does not list cls_token / pos_embed: the original decayed them, and so does this
    assert {"encoder.cls_token", "encoder.pos_embed"} <= set(members["encoder", True])
    assert {g["weight_decay"] for g in groups if g["decay"]} == {0.01}
    assert {g["weight_decay"] for g in groups if not g["decay"]} == {0.0}


@pytest.mark.parametrize("frozen_norms", ["all", "final"])
def test_frozen_phase_trains_exactly_the_head_and_the_norms_asked_then_everything(frozen_norms):
    net = tiny_net()
    cfg = PAPER.model_copy(update={"frozen_norms": frozen_norms})
    norms = {f"{m_name}.{p}" for m_name, m in net.named_modules() if isinstance(m, nn.LayerNorm)
             for p, _ in m.named_parameters(recurse=False)}
    heads = {n for n, _ in net.named_parameters() if n.startswith("head.")}
    assert "encoder.norm.weight" in norms and "encoder.blocks.1.norm2.bias" in norms
    if frozen_norms == "final":  # what the original's reentrant checkpointing left trainable
        norms = {n for n in norms if n.startswith("encoder.norm.")}

    opt = build_optimizer(net, cfg)
    sched = start_phase(net, opt, FROZEN, cfg, STEPS_PER_EPOCH)
    assert {n for n, p in net.named_parameters() if p.requires_grad} == norms | heads
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    train(net, opt, sched, 2)
    changed = {n for n, p in net.named_parameters() if not torch.equal(p, before[n])}
    assert changed == norms | heads  # the frozen encoder is neither updated nor decayed

    start_phase(net, opt, UNFROZEN, cfg, STEPS_PER_EPOCH)
    assert all(p.requires_grad for p in net.parameters())
    net(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_start_phase_clears_the_state_like_fastai_unfreeze():
    """fastai's Learner.freeze_to (so unfreeze) calls opt.clear_state(): moments, steps and Lookahead restart."""
    net = tiny_net()
    opt = build_optimizer(net, PAPER)
    groups_before = [list(g["params"]) for g in opt.param_groups]
    train(net, opt, start_phase(net, opt, FROZEN, PAPER, STEPS_PER_EPOCH), 8)
    assert opt.state_dict()["state"] and opt.param_groups[0]["lookahead_step"] == 8

    sched = start_phase(net, opt, UNFROZEN, PAPER, STEPS_PER_EPOCH)
    assert not opt.state_dict()["state"]
    assert all(g["lookahead_step"] == 0 for g in opt.param_groups)
    assert [list(g["params"]) for g in opt.param_groups] == groups_before  # the same optimiser and groups
    # ... so the run's optimiser continues exactly as a new one built at the phase start would
    fresh_net = copy.deepcopy(net)
    fresh_opt = build_optimizer(fresh_net, PAPER)
    fresh_sched = start_phase(fresh_net, fresh_opt, UNFROZEN, PAPER, STEPS_PER_EPOCH)
    train(net, opt, sched, 7, first=8)
    train(fresh_net, fresh_opt, fresh_sched, 7, first=8)
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), fresh_net.parameters()))


# ------------------------------------------------------------------ the one-cycle
def fastai_combined_cos(pct: float, start: float, middle: float, end: float, pos: float) -> float:
    """fastai.callback.schedule.combined_cos(pct, start, middle, end)(pos): SchedCos up, then SchedCos down."""
    def sched_cos(a, b, p):
        return a + (1 + math.cos(math.pi * (1 - p))) * (b - a) / 2
    return sched_cos(start, middle, pos / pct) if pos < pct else sched_cos(middle, end, (pos - pct) / (1 - pct))


def record(net, opt, sched, steps: int) -> tuple[list[list[float]], list[list[float]]]:
    """Each group's lr and beta1 as each optimiser step uses them, then once more after the phase's last step."""
    lrs, beta1s = [], []
    for _ in range(steps + 1):
        lrs.append([g["lr"] for g in opt.param_groups])
        beta1s.append([g["betas"][0] for g in opt.param_groups])
        if len(lrs) <= steps:
            opt.step()  # no gradients: nothing moves, but the scheduler sees a step
            sched.step()
    return lrs, beta1s


@pytest.mark.parametrize("steps_per_epoch", [1, 3, STEPS_PER_EPOCH])
def test_one_cycle_lr_and_beta1_follow_fastai_fit_one_cycle(steps_per_epoch):
    net = tiny_net()
    opt = build_optimizer(net, PAPER)
    t = PAPER
    for phase in (FROZEN, UNFROZEN):
        n = phase.epochs * steps_per_epoch
        lrs, beta1s = record(net, opt, start_phase(net, opt, phase, t, steps_per_epoch), n)
        for g, group in enumerate(opt.param_groups):
            top = lr_max(group["part"], phase, t)
            # fastai's ParamScheduler sets step i of n at position i / n
            for i in range(n):
                assert lrs[i][g] == pytest.approx(
                    fastai_combined_cos(t.warmup, top / t.div, top, top / t.div_final, i / n), rel=1e-12, abs=0)
                assert beta1s[i][g] == pytest.approx(
                    fastai_combined_cos(t.warmup, t.moms[0], t.moms[1], t.moms[0], i / n), rel=1e-12, abs=0)
            assert lrs[0][g] == pytest.approx(top / 25, rel=1e-12) and beta1s[0][g] == pytest.approx(0.95)
            assert lrs[n][g] == pytest.approx(top / 1e5, rel=1e-12) and beta1s[n][g] == pytest.approx(0.95)
            if steps_per_epoch == STEPS_PER_EPOCH:
                peak = n // 2
                assert lrs[peak][g] == pytest.approx(top, rel=1e-12) and beta1s[peak][g] == pytest.approx(0.85)
                # the last step, at position (n-1)/n, is just above the end value
                assert top / 1e5 < lrs[n - 1][g] < top / 1e5 + top * (math.pi / n) ** 2
                assert 0.95 - 0.1 * (math.pi / n) ** 2 < beta1s[n - 1][g] < 0.95


def test_one_cycle_group_peaks_are_the_originals():
    """fit_one_cycle(lr_max=3e-3) for every group, then lr_max=[lr/50, lr, lr] for (encoder, norm, head)."""
    net = tiny_net()
    opt = build_optimizer(net, PAPER)
    peaks = {}
    for phase in (FROZEN, UNFROZEN):
        start_phase(net, opt, phase, PAPER, STEPS_PER_EPOCH)
        peaks[phase.frozen] = {g["part"]: g["max_lr"] for g in opt.param_groups}
    assert peaks[True] == {"encoder": 3e-3, "norm": 3e-3, "head": 3e-3}
    assert peaks[False] == {"encoder": 1e-3 / 50, "norm": 1e-3, "head": 1e-3}


# ------------------------------------------------------------------ ranger
def test_decay_is_decoupled_and_skips_norms_and_biases():
    net = tiny_net()
    opt = build_optimizer(net, PAPER.model_copy(update={"lookahead_k": 100}))  # no sync within these steps
    lr, steps = 0.01, 8  # past RAdam's 5 unrectified steps
    for g in opt.param_groups:
        g["lr"] = lr
    before = {id(p): p.detach().clone() for p in net.parameters()}
    for _ in range(steps):
        for p in net.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
    for g in opt.param_groups:
        for p in g["params"]:
            # p *= 1 - lr * wd at each step and nothing else with a zero gradient (L2 would have put wd * p
            # into the gradient and moved p by about lr once rectified)
            expected = before[id(p)].clone()
            for _ in range(steps if g["decay"] else 0):
                expected.mul_(1 - lr * 0.01)
            assert torch.equal(p, expected)
    assert any(not torch.equal(p, before[id(p)]) for p in net.parameters())


def test_lookahead_first_sync_pulls_back_to_the_weights_before_the_first_step():
    """Constant gradient 1, lr 0.1: RAdam's first steps are bias-corrected momentum, each exactly -lr.

    After k=2 steps w = w0 - 0.2; fastai's sync: slow = w0 + 0.5 * (w - w0) = w0 - 0.1. timm's Lookahead
    creates its slow weights at that first sync and leaves w0 - 0.2.
    """
    t = PAPER.model_copy(update={"lookahead_k": 2})
    results = {}
    for name, make in (("ours", lambda groups: ranger(groups, t)),
                       ("timm", lambda groups: TimmLookahead(torch.optim.RAdam(groups, betas=(0.95, 0.99)), k=2))):
        w = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
        opt = make([{"params": [w], "lr": 0.1, "weight_decay": 0.0}])
        for _ in range(2):
            w.grad = torch.ones_like(w)
            opt.step()
        results[name] = w.detach().clone()
    torch.testing.assert_close(results["ours"], torch.tensor([0.9, -2.1], dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(results["timm"], torch.tensor([0.8, -2.2], dtype=torch.float64), rtol=0, atol=1e-12)


def test_lookahead_syncs_every_k_steps_over_radam():
    """ranger = RAdam plus, every 6 steps, slow += 0.5 * (fast - slow); fast = slow, slow starting at w0."""
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(7, generator=g)
    grads = [torch.randn(7, generator=g) for _ in range(18)]
    hyper = dict(lr=0.05, betas=(0.95, 0.99), eps=1e-6, weight_decay=0.01, decoupled_weight_decay=True)

    w = nn.Parameter(w0.clone())
    opt = ranger([{"params": [w], "lr": hyper["lr"], "weight_decay": hyper["weight_decay"]}], PAPER)
    ref = nn.Parameter(w0.clone())
    radam = torch.optim.RAdam([ref], **hyper)
    slow = w0.clone()
    synced = []
    for i, grad in enumerate(grads, start=1):
        w.grad, ref.grad = grad.clone(), grad.clone()
        opt.step()
        radam.step()
        with torch.no_grad():
            if i % 6 == 0:
                synced.append(not torch.equal(ref, slow))
                slow.add_(ref - slow, alpha=0.5)
                ref.copy_(slow)
        assert torch.equal(w, ref), f"step {i}"
    assert synced == [True, True, True]  # every sync moved the weights


# ------------------------------------------------------------------ resume
@pytest.mark.parametrize("t", [PAPER, CPU], ids=["ranger_one_cycle", "adamw_cosine"])
@pytest.mark.parametrize("stop", [(0, 4), (1, 5)], ids=["mid_frozen", "mid_unfrozen"])
def test_resume_mid_phase_is_bit_identical(t, stop):
    spe, phases = 3, (FROZEN, UNFROZEN)

    def run(net, opt, phase_from=0, step_from=0, until=None, resume=None):
        step = sum(p.epochs * spe for p in phases[:phase_from]) + step_from
        for index in range(phase_from, len(phases)):
            phase = phases[index]
            sched = start_phase(net, opt, phase, t, spe)
            first = step_from if index == phase_from else 0
            if resume is not None and index == phase_from:
                opt.load_state_dict(resume["optimizer"])
                sched.load_state_dict(resume["scheduler"])
            n = phase.epochs * spe - first
            if until is not None and index == until[0]:
                n = until[1] - first
            train(net, opt, sched, n, first=step)
            step += n
            if until is not None and index == until[0]:
                buf = io.BytesIO()
                torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(),
                            "scheduler": sched.state_dict()}, buf)
                return buf.getvalue()
        return None

    straight = tiny_net()
    run(straight, build_optimizer(straight, t))

    first = tiny_net()
    saved = run(first, build_optimizer(first, t), until=stop)
    state = torch.load(io.BytesIO(saved), weights_only=False)
    resumed = tiny_net(seed=1)  # other initial weights: everything must come from the checkpoint
    resumed.load_state_dict(state["model"])
    run(resumed, build_optimizer(resumed, t), phase_from=stop[0], step_from=stop[1], resume=state)
    for (name, a), b in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name


# ------------------------------------------------------------------ the timm path
def test_timm_path_keeps_the_groups_betas_and_warms_up_each_phase_to_its_own_peaks():
    t = CPU.model_copy(update={"epochs_frozen": 2, "encoder_lr_div": 50.0, "warmup": 0.5})
    net = tiny_net()
    opt = build_optimizer(net, t)
    assert type(opt).__name__ == "AdamW"
    assert [(g["part"], g["decay"]) for g in opt.param_groups] == [
        (g["part"], g["decay"]) for g in param_groups(net, t)]
    assert {(g["betas"], g["eps"]) for g in opt.param_groups} == {((0.9, 0.999), 1e-8)}
    for phase in (FROZEN, UNFROZEN):
        n = phase.epochs * STEPS_PER_EPOCH
        lrs, _ = record(net, opt, start_phase(net, opt, phase, t, STEPS_PER_EPOCH), n)
        tops = [lr_max(g["part"], phase, t) for g in opt.param_groups]
        assert lrs[0] == pytest.approx([min(tops) / t.div] * len(tops), rel=1e-12)  # one floor, as before
        assert lrs[n // 2] == pytest.approx(tops, rel=1e-12)  # the peak of this phase, not the previous one's
        assert all(lr < top for lr, top in zip(lrs[n], tops))


def test_unknown_optimiser_is_named():
    with pytest.raises(UserError, match="train.opt: unknown optimiser 'rangerr'"):
        build_optimizer(tiny_net(), PAPER.model_copy(update={"opt": "rangerr"}))


@pytest.mark.parametrize("dotted, value, expected", [
    ("train.sched", "plateau", "train.sched must be one of 'one_cycle', 'cosine'"),
    ("train.warmup", 0.0, "train.warmup must be > 0 with sched one_cycle"),
    ("train.moms", [0.95, 1.0], "train.moms.1 must be in [0, 1), got 1.0"),
    ("train.betas", [0.9], "train.betas List should have at least 2 items"),
    ("train.lookahead_k", 0, "train.lookahead_k must be >= 1, got 0"),
    ("train.div_final", 0.0, "train.div_final must be > 0, got 0.0"),
])
def test_bad_optimiser_params_are_named(tmp_path, dotted, value, expected):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(smoke_params(**{dotted: value})))
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert expected in str(err.value)


def test_timm_schedule_allows_no_warmup():
    t = load_params(ROOT / "params-cpu.yaml").train.model_copy(update={"warmup": 0.0})
    assert TrainSection.model_validate(t.model_dump()).warmup == 0.0
