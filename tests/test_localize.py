import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage.filters import threshold_mean as sk_mean
from skimage.filters import threshold_otsu as sk_otsu
from skimage.measure import label, regionprops
from skimage.morphology import closing as sk_closing
from torchvision.ops import nms

from vitfgvc.localize import (
    binary_closing,
    compose_boxes,
    crop_resize,
    nms_top_k,
    object_boxes,
    part_boxes,
    random_boxes,
    threshold_mean_std,
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
def test_mean_std_threshold_is_mean_plus_k_population_stds():
    maps = torch.rand(3, 7, 9, generator=torch.Generator().manual_seed(0))
    for k in (0.0, 0.5, 2.0):
        expected = [m.mean() + k * m.std() for m in maps.numpy()]  # numpy's std: the population's
        torch.testing.assert_close(threshold_mean_std(maps, k), torch.tensor(expected, dtype=torch.float32))


def test_mean_std_keeps_the_peak_where_the_mean_keeps_its_shoulder():
    # a peak (1.0) on a broad shoulder (0.3) in a zero map: the mean keeps the shoulder, mean + 1 std the peak
    m = blobs(spots=[(4, 20, 4, 20, 0.3), (10, 13, 10, 13, 1.0)])
    loose = object_boxes(m[None], threshold="mean", closing=0)
    tight = object_boxes(m[None], threshold="mean_std", threshold_k=1.0, closing=0)
    torch.testing.assert_close(loose[0], cell_box(4, 4, 19, 19))
    torch.testing.assert_close(tight[0], cell_box(10, 10, 12, 12))
    # a threshold above the map's maximum leaves nothing: the whole map
    torch.testing.assert_close(object_boxes(m[None], threshold="mean_std", threshold_k=50.0)[0], FULL)


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


def test_random_fallback_comes_from_each_maps_uniforms():
    maps = torch.zeros(6, 24, 24)
    u = torch.rand(6, 4, generator=torch.Generator().manual_seed(1))
    a = object_boxes(maps, fallback="random", u_fallback=u)
    assert torch.equal(a, random_boxes(u))
    assert not torch.equal(a[0], FULL) and not torch.equal(a[0], a[1])
    assert (a >= 0).all() and (a <= 1).all() and (a[:, 2:] > a[:, :2]).all()
    # a map's box depends on its own uniforms only, not on the batch around it
    assert torch.equal(object_boxes(maps[3:5], fallback="random", u_fallback=u[3:5]), a[3:5])
    normal = blobs(spots=[(2, 5, 2, 5, 1.0)])
    torch.testing.assert_close(object_boxes(normal[None], fallback="random")[0], cell_box(2, 2, 4, 4))
    with pytest.raises(ValueError, match="u_fallback must be"):
        object_boxes(maps, fallback="random", u_fallback=u[:3])


def test_random_boxes_map_uniforms_like_random_resized_crop():
    u = torch.tensor([[0.0, 0.5, 0.0, 0.0], [1.0, 0.5, 1.0, 1.0], [0.5, 0.0, 0.5, 0.25], [0.5, 1.0, 0.5, 0.75]])
    boxes = random_boxes(u, scale=(0.25, 0.75), ratio=(0.5, 2.0)).double()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    torch.testing.assert_close(w * h, torch.tensor([0.25, 0.75, 0.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(w / h, torch.tensor([1.0, 1.0, 0.5, 2.0], dtype=torch.float64))  # log-uniform
    torch.testing.assert_close(boxes[:, 0], (1 - w) * u[:, 2].double())  # the left edge places the box
    torch.testing.assert_close(boxes[:, 1], (1 - h) * u[:, 3].double())
    assert torch.equal(boxes[1, 2:], torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\[n, 4\]"):
        random_boxes(torch.rand(3))


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
                    for rule, footprint in (("fallback", "square"), ("skip", "cross" if closing % 2 else "square")):
                        boxes = object_boxes(maps, threshold, closing, min_area=0.01, fallback=fallback,
                                             closing_footprint=footprint, small_components=rule,
                                             u_fallback=torch.rand(4, 4, generator=g))
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
    for kwargs in ({}, {"threshold": "otsu", "closing": 0}, {"min_area": 0.05},
                   {"min_area": 0.05, "small_components": "skip", "closing_footprint": "cross"}):
        batch = object_boxes(maps, **kwargs)
        single = torch.cat([object_boxes(m[None], **kwargs) for m in maps])
        assert torch.equal(batch, single)
    assert torch.equal(batch[1], FULL) and torch.equal(batch[2], FULL)


def original_box(m, min_area_px):
    """The original's ``generate_attention_coordinates(m, 'mean', min_area=min_area_px, num_bboxes=1)``.

    skimage's mean threshold, ``closing`` with its default footprint, ``label`` (8-connected),
    the regions of at least ``min_area_px`` pixels ranked by the map's max over their
    bounding box (a stable sort: ties keep label order); None where none survives (the
    original then draws a random square).
    """
    m = m.numpy()
    coordinates = []
    for region in regionprops(label(sk_closing(m > sk_mean(m)))):
        if region.area >= min_area_px:
            minr, minc, maxr, maxc = region.bbox
            coordinates.append((m[minr:maxr, minc:maxc].max(), [minr, minc, maxr, maxc]))
    if not coordinates:
        return None
    minr, minc, maxr, maxc = sorted(coordinates, key=lambda o: o[0], reverse=True)[0][1]
    h, w = m.shape
    return torch.tensor([minc / w, minr / h, maxc / w, maxr / h])


@pytest.mark.parametrize("min_area_px", [0, 8, 40, 150, 300])
def test_skip_rule_matches_the_original_code(min_area_px):
    g = torch.Generator().manual_seed(min_area_px)
    maps = F.avg_pool2d(torch.rand(24, 1, 36, 36, generator=g), 5, stride=1).squeeze(1) ** 3  # 32 x 32
    kwargs = {"closing": 3, "closing_footprint": "cross", "min_area": min_area_px / (32 * 32)}
    got = object_boxes(maps, small_components="skip", **kwargs)
    want = [original_box(m, min_area_px) for m in maps]
    for box, w in zip(got, want):
        torch.testing.assert_close(box, FULL if w is None else w)
    # the cases that tell the rules apart occur: the peak's component dropped, another boxed ...
    at_peak = object_boxes(maps, small_components="fallback", **kwargs)
    assert (min_area_px >= 40) == bool((got != at_peak).any())
    # ... and, with the largest minimum, maps where nothing survives
    assert (min_area_px == 300) == any(w is None for w in want)


def test_skip_rule_boxes_the_next_component_where_fallback_gives_up():
    # the peak sits in a 9-cell blob; a 100-cell blob holds the next highest value
    m = blobs(spots=[(2, 5, 2, 5, 1.0), (10, 20, 10, 20, 0.5), (21, 23, 2, 4, 0.4)])
    m[15, 15] = 0.6
    skip = object_boxes(m[None], min_area=10 / 576, small_components="skip")[0]
    torch.testing.assert_close(skip, cell_box(10, 10, 19, 19))
    assert torch.equal(object_boxes(m[None], min_area=10 / 576, small_components="fallback")[0], FULL)
    # nothing left of min_area: the fallback box, as the fallback rule
    assert torch.equal(object_boxes(m[None], min_area=101 / 576, small_components="skip")[0], FULL)


def test_skip_rule_ranks_by_the_max_over_the_bounding_box():
    # a ring (large, value 0.5) around a small bright blob (dropped for its size): the ring's bounding box
    # holds the blob's 1.0, so the ring beats a solid 0.8 block, as the original ranks it
    m = blobs(spots=[(2, 12, 2, 12, 0.5), (4, 10, 4, 10, 0.0), (6, 8, 6, 8, 1.0), (15, 22, 15, 22, 0.8)])
    got = object_boxes(m[None], threshold="mean", closing=0, min_area=10 / 576, small_components="skip")[0]
    torch.testing.assert_close(got, cell_box(2, 2, 11, 11))
    torch.testing.assert_close(got, original_box_no_closing(m, 10))


def original_box_no_closing(m, min_area_px):
    m = m.numpy()
    best = None
    for region in regionprops(label(m > sk_mean(m))):
        if region.area >= min_area_px:
            minr, minc, maxr, maxc = region.bbox
            conf = m[minr:maxr, minc:maxc].max()
            if best is None or conf > best[0]:
                best = (conf, (minc / 24, minr / 24, maxc / 24, maxr / 24))
    return torch.tensor(best[1], dtype=torch.float32)


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


def cross(size):
    f = np.zeros((size, size), bool)
    f[size // 2] = f[:, size // 2] = True
    return f


def test_the_originals_closing_is_the_3x3_cross():
    """The original called ``closing(mask)``: skimage's default footprint, the cross of connectivity 1.

    skimage 0.18 (the original's era) closed with ``ndi.grey_dilation`` then
    ``ndi.grey_erosion`` (scipy's default ``mode="reflect"``); today's ``closing`` keeps
    ``mode="reflect"`` as default. For a 3x3 footprint reflecting the border equals
    ignoring it (``mode="ignore"``, ours): the mirrored cells are inside the footprint.
    """
    g = torch.Generator().manual_seed(7)
    masks = torch.rand(16, 19, 23, generator=g) > 0.6
    got = binary_closing(masks, 3, "cross").numpy()
    for mask, out in zip(masks.numpy(), got):
        np.testing.assert_array_equal(out, sk_closing(mask))  # footprint=None
        np.testing.assert_array_equal(out, sk_closing(mask, cross(3), mode="ignore"))
        skimage_018 = ndimage.grey_erosion(ndimage.grey_dilation(mask, footprint=cross(3)), footprint=cross(3))
        np.testing.assert_array_equal(out, skimage_018)
        # and for the square: reflect = ignore too
        np.testing.assert_array_equal(sk_closing(mask, np.ones((3, 3), bool)),
                                      sk_closing(mask, np.ones((3, 3), bool), mode="ignore"))
    assert not np.array_equal(got, binary_closing(masks, 3, "square").numpy())  # the footprint matters here


@pytest.mark.parametrize("size", [5, 7])
def test_larger_crosses_match_skimage(size):
    masks = torch.rand(8, 20, 17, generator=torch.Generator().manual_seed(size)) > 0.7
    got = binary_closing(masks, size, "cross").numpy()
    for mask, out in zip(masks.numpy(), got):
        np.testing.assert_array_equal(out, sk_closing(mask, cross(size), mode="ignore"))
        np.testing.assert_array_equal(out, sk_closing(mask, cross(size)))  # reflect: the same for a cross
    with pytest.raises(ValueError, match="odd size"):
        binary_closing(masks, 4, "cross")
    with pytest.raises(ValueError, match="footprint must be one of"):
        binary_closing(masks, 3, "disk")


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


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("per_image", [None, 2])
def test_a_300_image_bf16_batch_crops_every_image_from_itself(per_image, autocast):
    """bf16 holds integers exactly only up to 256: ROI batch indices in bf16 would mix images up.

    (Before the ROIs were float32 this crashed under CPU autocast: index 299 rounds to 300.)
    """
    n = 300
    idx = torch.arange(n)
    # each image is flat, its index coded in two channels of small integers (exact in bf16)
    images = torch.stack([idx // 20, idx % 20, torch.zeros(n, dtype=torch.long)], 1).view(n, 3, 1, 1)
    images = images.expand(n, 3, 24, 24).to(torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    lo = torch.rand(n, *(() if per_image is None else (per_image,)), 2, generator=g) * 0.5
    boxes = torch.cat([lo, lo + 0.5], -1)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        crops = crop_resize(images, boxes, 8)
    assert crops.dtype == torch.bfloat16
    crops = crops if per_image is None else crops.flatten(0, 1)
    owner = idx if per_image is None else idx.repeat_interleave(per_image)
    code = crops[:, 0].float() * 20 + crops[:, 1].float()  # [N, 8, 8]
    assert torch.equal(code, owner.float().view(-1, 1, 1).expand_as(code))


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
