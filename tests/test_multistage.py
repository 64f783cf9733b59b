"""The multistage forward's wiring: map -> object box -> crops, erasing, parts, draws, precision, and the loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vitfgvc.attention_augment import attention_erase
from vitfgvc.config import Params
from vitfgvc.data.loader import NUM_DRAWS, Draw
from vitfgvc.localize import compose_boxes, crop_resize, object_boxes, part_boxes, random_boxes
from vitfgvc.multistage import MultiStage, StageOutput, build, joint_loss

from .conftest import smoke_params

CLASSES = 5


def config(**dotted):
    return Params.model_validate(smoke_params(**dotted)).run_config("digits", "multistage")


def model(seed=0, **dotted) -> MultiStage:
    torch.manual_seed(seed)
    return build(config(**dotted), CLASSES)


def images(b=4, size=64, seed=0):
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def draws(b=4, fill=None, seed=1):
    if fill is not None:
        return torch.full((b, NUM_DRAWS), float(fill))
    return torch.rand(b, NUM_DRAWS, generator=torch.Generator().manual_seed(seed))


def resized(x, size):
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def expected_boxes(m: MultiStage, maps):
    """Object and part boxes as the forward should derive them from its map."""
    ms = m.ms
    fine = F.interpolate(maps.unsqueeze(1), size=(ms.map_size, ms.map_size), mode="bilinear",
                         align_corners=False).squeeze(1)
    obj = object_boxes(fine, ms.threshold, ms.closing, ms.min_area, ms.fallback, closing_footprint=ms.closing_footprint,
                       small_components=ms.small_components)
    obj_map = crop_resize(maps.unsqueeze(1), obj, ms.part_grid).squeeze(1)
    rel = part_boxes(obj_map, window=ms.part_window, k=ms.num_parts, iou=ms.part_iou, pool=ms.part_pool)
    return obj, obj_map, rel


# ---------------------------------------------------------------------- wiring
def test_object_and_parts_at_a_smaller_size_are_the_encoders_logits_at_that_size():
    m = model(**{"multistage.object_size": 16, "multistage.part_size": 24}).eval()  # img_size 32, 8 px patches
    assert m.net.encoder.dynamic_img_size  # timm resamples the position embedding to each grid
    x = images()
    out = m(x, draws(), keep_views=True)
    assert out.views["a"].shape[-1] == 32 and out.views["b"].shape[-1] == 16 and out.views["c"].shape[-1] == 24
    torch.testing.assert_close(out.views["b"], crop_resize(x, out.object_boxes, 16))
    torch.testing.assert_close(out.views["c"], crop_resize(x, out.part_boxes, 24))
    torch.testing.assert_close(out.logits["b"], m.net(out.views["b"]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.logits["c"], m.net(out.views["c"].flatten(0, 1)).view(4, 2, -1), rtol=1e-5,
                               atol=1e-5)
    torch.testing.assert_close(out.logits["a"], m.net(out.views["a"]), rtol=1e-5, atol=1e-5)


def test_crop_sizes_equal_to_the_input_change_nothing():
    same = model(**{"multistage.object_size": 32, "multistage.part_size": 32}).eval()
    default = model().eval()
    assert not same.net.encoder.dynamic_img_size  # one pass for every stage, as without the keys
    x, u = images(), draws()
    a, b = same(x, u), default(x, u)
    for k in a.logits:
        torch.testing.assert_close(a.logits[k], b.logits[k], rtol=0, atol=0)


def test_a_crop_size_off_the_patch_grid_is_refused():
    with pytest.raises(ValueError, match=r"multistage.part_size = 20 is not a multiple of the encoder's patch"):
        model(**{"multistage.part_size": 20})


def test_stage_inputs_are_cut_at_the_returned_boxes():
    m = model().eval()
    x = images()
    with torch.no_grad():
        out = m(x, keep_views=True)
    size = m.cfg.backbone.img_size
    obj, _, rel = expected_boxes(m, out.maps)
    assert torch.equal(out.object_boxes, obj)
    assert not torch.equal(obj, torch.tensor([0.0, 0.0, 1.0, 1.0]).expand(4, 4))  # real boxes, not the fallback
    torch.testing.assert_close(out.part_boxes, compose_boxes(obj, rel))
    torch.testing.assert_close(out.views["a"], resized(x, size))
    # stage b: the object box cut from the high-resolution image; stage c: the part boxes, likewise
    torch.testing.assert_close(out.views["b"], crop_resize(x, out.object_boxes, size))
    torch.testing.assert_close(out.views["c"], crop_resize(x, out.part_boxes, size))
    with torch.no_grad():  # and the logits are the network's on exactly these inputs
        torch.testing.assert_close(out.logits["b"], m.net(out.views["b"]), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.logits["c"], m.net(out.views["c"].flatten(0, 1)).view(4, 2, CLASSES),
                                   atol=1e-5, rtol=1e-5)


def test_erasing_happens_only_in_training_and_where_the_draws_say():
    m = model(**{"aug.erase_p": 0.5})
    x = images()
    size, thr = m.cfg.backbone.img_size, m.aug.erase_threshold
    u = draws(fill=0.9)  # above erase_p: no image erased
    u[0, Draw.ERASE_A] = u[1, Draw.ERASE_B] = 0.1  # image 0's stage a, image 1's stage b
    with torch.no_grad():
        train = m.train()(x, u, keep_views=True)
        test = m.eval()(x, u, keep_views=True)
    for out in (train, test):
        assert torch.equal(out.object_boxes, expected_boxes(m, out.maps)[0])
    # evaluation never erases
    torch.testing.assert_close(test.views["a"], resized(x, size))
    torch.testing.assert_close(test.views["b"], crop_resize(x, test.object_boxes, size))
    # training erases image 0's full image and image 1's object crop, each where its own map exceeds the threshold
    want_a = resized(x, size)
    want_a[0] = attention_erase(want_a[:1], train.maps[:1], 1.0, thr)[0]
    torch.testing.assert_close(train.views["a"], want_a)
    obj_map = expected_boxes(m, train.maps)[1]
    want_b = crop_resize(x, train.object_boxes, size)
    want_b[1] = attention_erase(want_b[1:2], obj_map[1:2], 1.0, thr)[0]
    torch.testing.assert_close(train.views["b"], want_b)
    assert not torch.equal(want_a[0], resized(x, size)[0]) and not torch.equal(want_b[1], crop_resize(
        x, train.object_boxes, size)[1])  # something was erased


@pytest.mark.parametrize("from_erased", [False, True])
def test_parts_come_from_the_unerased_object_unless_asked(from_erased):
    m = model(**{"aug.erase_p": 1.0, "multistage.parts_from_erased": from_erased}).train()
    x = images()
    with torch.no_grad():
        out = m(x, draws(fill=0.0), keep_views=True)  # every image erased in stages a and b
    size = m.cfg.backbone.img_size
    obj, _, rel = expected_boxes(m, out.maps)
    torch.testing.assert_close(out.part_boxes, compose_boxes(obj, rel))
    clean = crop_resize(x, out.part_boxes, size)  # parts of the un-erased high-resolution image
    erased = crop_resize(out.views["b"], rel, size)  # parts of the erased object crop (the original)
    assert not torch.allclose(clean, erased)
    torch.testing.assert_close(out.views["c"], erased if from_erased else clean)


def peaked(m: MultiStage, scale: float = 4.0) -> MultiStage:
    """Sharper attention than a random initialisation gives: maps with structure, as a trained model's."""
    with torch.no_grad():
        for blk in m.net.encoder.blocks:
            blk.attn.qkv.weight.mul_(scale)
    return m


def test_per_sample_draws_make_the_result_independent_of_the_batch_split():
    """What DDP relies on: an image's erasing, attention crop and fallback box come from its own draws."""
    m = peaked(model(**{"model.img_size": 64, "datasets.digits.high_res": 96, "aug.erase_p": 0.5, "aug.crop_p": 0.5,
                        "aug.crop_threshold": [0.5, 0.9], "multistage.fallback": "random",
                        "multistage.min_area": 1.0}), scale=10.0).train()  # min_area 1: every object box random
    x, u = images(6, 96), draws(6)
    u[:, Draw.CROP_A] = torch.tensor([0.1, 0.9, 0.2, 0.8, 0.3, 0.7])  # both decisions in both halves
    u[:, Draw.ERASE_A] = 0.9  # stage a only cropped, so that the crops show below; stage b erased at random
    with torch.no_grad():
        whole = m(x, u, keep_views=True)
        halves = [m(x[i:i + 3], u[i:i + 3], keep_views=True) for i in (0, 3)]
        other = u.clone()
        other[:, Draw.CROP_THRESHOLD] = 1 - u[:, Draw.CROP_THRESHOLD]
        other_threshold = m(x, other, keep_views=True)
    for key in ("a", "b", "c"):
        torch.testing.assert_close(torch.cat([h.views[key] for h in halves]), whole.views[key], atol=1e-5, rtol=1e-5)
    assert torch.equal(torch.cat([h.object_boxes for h in halves]), whole.object_boxes)
    assert torch.equal(whole.object_boxes, random_boxes(u[:, Draw.FALLBACK_BOX:Draw.FALLBACK_BOX + 4]))
    # the draws do steer stage a: the crop decision, and the threshold of the images cropped
    plain = crop_resize(x, torch.tensor([0.0, 0.0, 1.0, 1.0]).expand(6, 4), m.cfg.backbone.img_size)
    cropped = [not torch.allclose(whole.views["a"][i], plain[i]) for i in range(6)]
    assert any(cropped[0::2]) and not any(cropped[1::2])  # (a map can be above the threshold everywhere)
    moved = [not torch.allclose(whole.views["a"][i], other_threshold.views["a"][i]) for i in range(6)]
    assert any(moved[0::2]) and not any(moved[1::2])


def test_random_fallback_boxes_come_from_the_draws_and_evaluation_is_deterministic():
    m = model(**{"multistage.fallback": "random", "multistage.min_area": 1.0})  # no component is that large
    x, u = images(), draws()
    with torch.no_grad():
        train = m.train()(x, u)
        first, second = m.eval()(x), m.eval()(x)
    assert torch.equal(train.object_boxes, random_boxes(u[:, Draw.FALLBACK_BOX:Draw.FALLBACK_BOX + 4]))
    assert torch.equal(first.object_boxes, second.object_boxes)  # no draws: a fixed seed
    assert not torch.equal(first.object_boxes[0], first.object_boxes[1])  # still one random box per image


def test_draws_must_cover_every_column():
    m = model().train()
    with pytest.raises(ValueError, match=rf"draws must be \[4, {NUM_DRAWS}\]"):
        m(images(), torch.rand(4, 3))


# ------------------------------------------------------------------- precision
def test_bf16_autocast_gives_the_float32_maps_and_boxes():
    """Under CPU bf16 autocast the maps stay float32 and close to a float32 run's; the boxes agree.

    Asserted: maps within 5e-3 (before the probabilities and the rollout were float32 they were bf16
    and ~1e-2 off; what remains is the bf16 rounding of the encoder's linear layers, ~1.5e-3 here);
    every object box within one cell of the 64-cell map, but for at most one image of 16: a cell within
    that rounding of the threshold may flip, moving a box edge by a cell, or rarely join two components.
    """
    m = peaked(model(**{"model.img_size": 64, "datasets.digits.high_res": 96})).eval()
    with torch.no_grad():
        x = images(16, 96)
        want = m(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = m(x)
    assert got.logits["a"].dtype == torch.bfloat16  # autocast is on
    assert got.maps.dtype == torch.float32 and got.object_boxes.dtype == torch.float32
    # two code paths on the same weights and images (bf16 against float32), not learning; measured with 1, 2 and
    # 4 threads, oneDNN off, and AVX2 / SSE4 instruction sets: maps 1.20e-3 apart, 16 of 16 boxes within a cell
    torch.testing.assert_close(got.maps, want.maps, rtol=0, atol=5e-3)
    cells = (got.object_boxes - want.object_boxes).abs().amax(1) * m.ms.map_size
    assert (cells <= 1).sum() >= 15, cells


# ------------------------------------------------------------------------ loss
def smoothed_ce(logits, label, eps):
    """Label-smoothed cross-entropy of one row, by hand: (1 - eps) * NLL + eps * mean over classes of -log p."""
    log_z = math.log(sum(math.exp(v) for v in logits))
    nll = [log_z - v for v in logits]
    return (1 - eps) * nll[label] + eps * sum(nll) / len(nll)


@pytest.mark.parametrize("part_loss", ["sum", "mean"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_joint_loss_against_a_hand_computation(part_loss, eps):
    g = torch.Generator().manual_seed(3)
    b, k = 3, 2
    logits = {"a": torch.randn(b, CLASSES, generator=g), "b": torch.randn(b, CLASSES, generator=g),
              "c": torch.randn(b, k, CLASSES, generator=g)}
    labels = torch.tensor([0, 4, 2])
    total, parts = joint_loss(StageOutput(logits), labels, label_smoothing=eps, part_loss=part_loss)
    rows = {s: [smoothed_ce(logits[s][i].tolist(), int(labels[i]), eps) for i in range(b)] for s in ("a", "b")}
    per_part = [sum(smoothed_ce(logits["c"][i, j].tolist(), int(labels[i]), eps) for i in range(b)) / b
                for j in range(k)]
    want = {"a": sum(rows["a"]) / b, "b": sum(rows["b"]) / b,
            "c": sum(per_part) if part_loss == "sum" else sum(per_part) / k}
    for s in want:
        assert parts[s].item() == pytest.approx(want[s], rel=1e-5), s
    assert total.item() == pytest.approx(sum(want.values()), rel=1e-5)
    assert set(parts) == {"a", "b", "c"}
