import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage.filters import threshold_otsu as sk_otsu
from skimage.measure import label
from skimage.morphology import closing as sk_closing
from torchvision.ops import nms

from vitfgvc.localize import (
    binary_closing,
    compose_boxes,
    crop_resize,
    nms_top_k,
    object_boxes,
    part_boxes,
    threshold_otsu,
)

FULL = torch.tensor([0.0, 0.0, 1.0, 1.0])


def blobs(h=24, w=24, spots=()):
    """A map with rectangles ``(y0, y1, x0, x1, value)`` (exclusive ends) on zero."""
    m = torch.zeros(h, w)
    for y0, y1, x0, x1, v in spots:
        m[y0:y1, x0:x1] = v
    return m


def cell_box(x0, y0, x1, y1, w=24, h=24):
    """Box of cells x0..x1, y0..y1 (inclusive) in fractions."""
    return torch.tensor([x0 / w, y0 / h, (x1 + 1) / w, (y1 + 1) / h])


def reference_box(m, threshold, closing):
    """skimage: threshold, closing, 8-connected label, component at the argmax, its bbox."""
    m = m.numpy()
    mask = m > (m.mean() if threshold == "mean" else sk_otsu(m))
    if closing > 1:
        mask = sk_closing(mask, np.ones((closing, closing), bool), mode="ignore")
    labels = label(mask, connectivity=2)
    seed = labels.flat[np.argmax(m)]
    if seed == 0:
        return FULL
    ys, xs = np.nonzero(labels == seed)
    h, w = m.shape
    return torch.tensor([xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h], dtype=torch.float32)


# -------------------------------------------------------------------- objects
@pytest.mark.parametrize("closing", [0, 3])
def test_box_holds_the_maximum_not_the_largest_blob(closing):
    m = blobs(spots=[(2, 14, 2, 14, 0.6), (18, 21, 17, 20, 0.8)])
    m[19, 18] = 1.0
    got = object_boxes(m[None], closing=closing)
    torch.testing.assert_close(got[0], cell_box(17, 18, 19, 20))


def test_closing_bridges_a_one_cell_gap():
    # the piece with the maximum (x 3..5) and a larger piece (x 7..14), one empty column between
    m = blobs(spots=[(8, 12, 3, 6, 0.9), (6, 14, 7, 15, 0.5)])
    torch.testing.assert_close(object_boxes(m[None], closing=3)[0], cell_box(3, 6, 14, 13))
    torch.testing.assert_close(object_boxes(m[None], closing=0)[0], cell_box(3, 8, 5, 11))


def test_eight_connectivity_joins_diagonal_cells():
    m = blobs(spots=[(4, 6, 4, 6, 1.0), (6, 8, 6, 8, 0.8)])  # touching at a corner only
    torch.testing.assert_close(object_boxes(m[None], closing=0)[0], cell_box(4, 4, 7, 7))


@pytest.mark.parametrize("threshold", ["mean", "otsu"])
def test_flat_and_zero_maps_fall_back_to_full(threshold):
    maps = torch.stack([torch.zeros(24, 24), torch.full((24, 24), 0.7)])
    assert torch.equal(object_boxes(maps, threshold=threshold), FULL.expand(2, 4))


def test_min_area():
    m = blobs(spots=[(2, 5, 2, 5, 1.0), (10, 20, 10, 20, 0.5)])  # the max blob has 9 of 576 cells
    torch.testing.assert_close(object_boxes(m[None], min_area=9 / 576)[0], cell_box(2, 2, 4, 4))
    assert torch.equal(object_boxes(m[None], min_area=10 / 576)[0], FULL)


def test_random_fallback_is_seeded_and_valid():
    maps = torch.zeros(6, 24, 24)
    a = object_boxes(maps, fallback="random", generator=torch.Generator().manual_seed(1))
    b = object_boxes(maps, fallback="random", generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert not torch.equal(a[0], FULL) and not torch.equal(a[0], a[1])
    assert (a >= 0).all() and (a <= 1).all() and (a[:, 2:] > a[:, :2]).all()
    normal = blobs(spots=[(2, 5, 2, 5, 1.0)])
    torch.testing.assert_close(object_boxes(normal[None], fallback="random")[0], cell_box(2, 2, 4, 4))


@pytest.mark.parametrize("threshold", ["mean", "otsu"])
@pytest.mark.parametrize("closing", [0, 2, 3, 5])
def test_matches_skimage_pipeline_on_random_maps(threshold, closing):
    g = torch.Generator().manual_seed(closing)
    # smoothed noise: several blobs per map, as attention maps have
    maps = F.avg_pool2d(torch.rand(12, 1, 28, 28, generator=g), 5, stride=1).squeeze(1) ** 2
    got = object_boxes(maps, threshold=threshold, closing=closing)
    want = torch.stack([reference_box(m, threshold, closing) for m in maps])
    torch.testing.assert_close(got, want)


def test_boxes_stay_in_unit_square():
    g = torch.Generator().manual_seed(0)
    for h, w in [(1, 1), (1, 7), (5, 3), (24, 24), (13, 40), (128, 128)]:
        maps = torch.rand(4, h, w, generator=g) ** torch.tensor([1.0, 4.0, 0.2, 8.0]).view(4, 1, 1)
        for threshold in ("mean", "otsu"):
            for closing in (0, 3, 4):
                for fallback in ("full", "random"):
                    boxes = object_boxes(maps, threshold, closing, fallback=fallback, generator=g)
                    assert boxes.shape == (4, 4)
                    assert (boxes >= 0).all() and (boxes <= 1).all(), (h, w)
                    assert (boxes[:, 2:] > boxes[:, :2]).all()


def test_mixed_batch_equals_single_calls():
    maps = torch.stack([
        blobs(spots=[(2, 14, 2, 14, 0.6), (18, 21, 17, 20, 1.0)]),
        torch.zeros(24, 24),
        torch.full((24, 24), 0.3),
        torch.rand(24, 24, generator=torch.Generator().manual_seed(0)),
    ])
    for kwargs in ({}, {"threshold": "otsu", "closing": 0}, {"min_area": 0.05}):
        batch = object_boxes(maps, **kwargs)
        single = torch.cat([object_boxes(m[None], **kwargs) for m in maps])
        assert torch.equal(batch, single)
    assert torch.equal(batch[1], FULL) and torch.equal(batch[2], FULL)


# ------------------------------------------------------------ building blocks
def test_otsu_matches_skimage():
    g = torch.Generator().manual_seed(0)
    for i, (h, w) in enumerate([(24, 24), (7, 13), (128, 128), (31, 5), (2, 2)]):
        maps = torch.rand(6, h, w, generator=g, dtype=torch.float64) ** (1 + i)
        maps[0] = maps[0].round(decimals=1)  # many ties
        want = torch.tensor([sk_otsu(m.numpy()) for m in maps], dtype=torch.float64)
        torch.testing.assert_close(threshold_otsu(maps), want, rtol=0, atol=0)
    flat = torch.full((1, 4, 4), 0.25, dtype=torch.float64)
    assert threshold_otsu(flat).item() == 0.25


@pytest.mark.parametrize("size", [2, 3, 4, 5])
def test_binary_closing_matches_skimage_and_scipy(size):
    g = torch.Generator().manual_seed(size)
    masks = torch.rand(8, 20, 17, generator=g) > 0.7
    got = binary_closing(masks, size)
    footprint = np.ones((size, size), bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for mask, out in zip(masks.numpy(), got.numpy()):
            np.testing.assert_array_equal(out, sk_closing(mask, footprint, mode="ignore"))
            if size % 2:  # away from the border scipy's closing is the same
                inner = np.zeros_like(mask)
                inner[size:-size, size:-size] = mask[size:-size, size:-size]
                np.testing.assert_array_equal(
                    binary_closing(torch.from_numpy(inner)[None], size)[0].numpy(),
                    ndimage.binary_closing(inner, footprint),
                )
    assert torch.equal(binary_closing(masks, 0), masks) and torch.equal(binary_closing(masks, 1), masks)


# ---------------------------------------------------------------------- parts
def gaussian_spots(h, w, spots, sigma=5.0):
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return sum(a * torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * sigma**2)) for cy, cx, a in spots)


def centres_in_cells(boxes, h, w):
    return torch.stack([(boxes[..., 1] + boxes[..., 3]) / 2 * h, (boxes[..., 0] + boxes[..., 2]) / 2 * w], -1)


@pytest.mark.parametrize("pool", ["avg", "gem"])  # max: any window holding the peak ties
def test_parts_centre_on_the_two_hottest_spots(pool):
    m = gaussian_spots(128, 128, [(30.5, 30.5, 0.9), (95.5, 40.5, 1.0), (64.5, 100.5, 0.6)], sigma=8)
    boxes = part_boxes(m[None], window=1 / 3, k=2, iou=0.1, pool=pool)
    assert boxes.shape == (1, 2, 4)
    torch.testing.assert_close(boxes[0, :, 2] - boxes[0, :, 0], torch.full((2,), 43 / 128))
    centres = centres_in_cells(boxes[0], 128, 128)
    torch.testing.assert_close(centres, torch.tensor([[95.5, 40.5], [30.5, 30.5]]), atol=1.0, rtol=0)


def iou_matrix(boxes):
    lt = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    rb = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = (boxes[:, 2:] - boxes[:, :2]).prod(-1)
    return inter / (area[:, None] + area[None] - inter)


def test_overlapping_windows_are_suppressed():
    m = gaussian_spots(64, 64, [(32, 32, 1.0)], sigma=8)  # one spot: raw top windows would be neighbours
    boxes = part_boxes(m[None], window=1 / 4, k=3, iou=0.1)[0]
    iou = iou_matrix(boxes)
    assert (iou[~torch.eye(3, dtype=torch.bool)] <= 0.1).all()
    assert centres_in_cells(boxes[:1], 64, 64).sub(32).abs().max() <= 0.5
    looser = part_boxes(m[None], window=1 / 4, k=3, iou=0.9)[0]
    assert iou_matrix(looser)[0, 1] > 0.1


def test_part_boxes_agree_with_torchvision_nms():
    g = torch.Generator().manual_seed(0)
    maps = F.avg_pool2d(torch.rand(3, 1, 40, 36, generator=g), 3, stride=1).squeeze(1)  # 38 x 34
    kh, kw = round(38 / 3), round(34 / 3)
    scores = F.avg_pool2d(maps[:, None], (kh, kw), stride=1).squeeze(1)
    ys, xs = torch.meshgrid(torch.arange(scores.shape[1]), torch.arange(scores.shape[2]), indexing="ij")
    windows = torch.stack([xs, ys, xs + kw, ys + kh], -1).reshape(-1, 4).float()
    for iou in (0.0, 0.1, 0.3):
        got = part_boxes(maps, window=1 / 3, k=4, iou=iou)
        for b in range(3):
            keep = nms(windows, scores[b].flatten(), iou)[:4]
            assert len(keep) == 4
            torch.testing.assert_close(got[b], windows[keep] / torch.tensor([34, 38, 34, 38]))


def test_nms_top_k_agrees_with_torchvision_on_random_boxes():
    g = torch.Generator().manual_seed(1)
    boxes = torch.rand(4, 200, 4, generator=g)
    boxes[..., 2:] += boxes[..., :2]
    scores = torch.rand(4, 200, generator=g)
    for iou in (0.05, 0.3, 0.7):
        picks = nms_top_k(boxes, scores, iou, 8)
        for b in range(4):
            keep = nms(boxes[b], scores[b], iou)[:8]
            assert torch.equal(picks[b, : len(keep)], keep)


def test_parts_fill_up_when_too_few_windows_survive():
    m = torch.rand(2, 10, 10, generator=torch.Generator().manual_seed(2))
    boxes = part_boxes(m, window=0.9, k=3, iou=0.1)  # 4 windows of 9x9 cells, all overlapping
    assert boxes.shape == (2, 3, 4)
    for b in range(2):
        assert len({tuple(x.tolist()) for x in boxes[b]}) == 3  # distinct: the best suppressed ones
        scores = F.avg_pool2d(m[b][None, None], 9, stride=1).flatten()
        order = scores.argsort(descending=True)[:3]
        origin = torch.stack([order % 2, order // 2], -1) / 10
        torch.testing.assert_close(boxes[b, :, :2], origin.float())
    assert part_boxes(m, window=1.0, k=2).shape == (2, 2, 4)  # one window only: repeated


@pytest.mark.parametrize("pool", ["max", "gem"])
def test_max_and_gem_pools_give_valid_boxes(pool):
    maps = torch.rand(3, 48, 32, generator=torch.Generator().manual_seed(3)) ** 4
    boxes = part_boxes(maps, window=0.3, k=2, pool=pool)
    assert boxes.shape == (3, 2, 4) and (boxes >= 0).all() and (boxes <= 1).all()
    torch.testing.assert_close(boxes[..., 2] - boxes[..., 0], torch.full((3, 2), 10 / 32))
    torch.testing.assert_close(boxes[..., 3] - boxes[..., 1], torch.full((3, 2), 14 / 48))


def test_gem_with_p_one_is_avg():
    maps = torch.rand(2, 30, 30, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(part_boxes(maps, pool="gem", gem_p=1.0), part_boxes(maps, pool="avg"))


# ------------------------------------------------------------------- cropping
def test_crop_full_box_reproduces_the_image():
    images = torch.rand(2, 3, 40, 56)
    out = crop_resize(images, FULL.expand(2, 4), (40, 56))
    torch.testing.assert_close(out, images, atol=1e-6, rtol=0)


def test_crop_sub_region_matches_slice_and_gradients_flow():
    images = torch.rand(2, 3, 32, 48, requires_grad=True)
    box = torch.tensor([12 / 48, 8 / 32, 28 / 48, 24 / 32]).expand(2, 4)
    out = crop_resize(images, box, 16)
    assert out.shape == (2, 3, 16, 16)
    torch.testing.assert_close(out, images[:, :, 8:24, 12:28], atol=1e-6, rtol=0)
    out.sum().backward()
    want = torch.zeros(2, 3, 32, 48)
    want[:, :, 8:24, 12:28] = 1
    torch.testing.assert_close(images.grad, want, atol=1e-6, rtol=0)


def test_crop_k_boxes_per_image():
    images = torch.rand(2, 3, 32, 32)
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.25, 0.5, 1.0, 1.0]], [[0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]])
    out = crop_resize(images, boxes, 12)
    assert out.shape == (2, 2, 3, 12, 12)
    for j in range(2):
        torch.testing.assert_close(out[:, j], crop_resize(images, boxes[:, j], 12))
    with pytest.raises(ValueError, match="boxes"):
        crop_resize(images, boxes[:1], 12)


def test_compose_boxes():
    parent = torch.tensor([[0.2, 0.4, 0.6, 0.8]])
    child = torch.tensor([[0.5, 0.0, 1.0, 0.5]])
    torch.testing.assert_close(compose_boxes(parent, child), torch.tensor([[0.4, 0.4, 0.6, 0.6]]))
    torch.testing.assert_close(compose_boxes(parent, FULL[None, None].expand(1, 3, 4)), parent[:, None].expand(1, 3, 4))
    # cutting a part out of the cut object is cutting the composed box out of the image
    images = torch.rand(1, 3, 64, 64)
    obj = torch.tensor([[16 / 64, 8 / 64, 48 / 64, 40 / 64]])
    part = torch.tensor([[[0.25, 0.5, 0.75, 1.0]]])
    twice = crop_resize(crop_resize(images, obj, 32), part[:, 0], 16)
    once = crop_resize(images, compose_boxes(obj, part), 16)[:, 0]
    torch.testing.assert_close(once, twice, atol=1e-6, rtol=0)
