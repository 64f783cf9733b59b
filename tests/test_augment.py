import numpy as np
import pytest
import torch
from skimage.transform import resize

from vitfgvc.augment import attention_crop, attention_crop_boxes, attention_erase
from vitfgvc.localize import crop_resize


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(6, 3, 48, 40, generator=g)
    # one blob per map at a random place, on weak noise
    ys, xs = torch.meshgrid(torch.arange(6.0), torch.arange(5.0), indexing="ij")
    cy, cx = 6 * torch.rand(6, 1, 1, generator=g), 5 * torch.rand(6, 1, 1, generator=g)
    maps = torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / 2) + 0.1 * torch.rand(6, 6, 5, generator=g)
    maps = maps / maps.flatten(1).amax(1).view(6, 1, 1)
    return images, maps


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


# -------------------------------------------------------------------- erasing
def test_erase_p1_zeroes_exactly_the_pixels_above_threshold(batch):
    images, maps = batch
    before = images.clone()
    out = attention_erase(images, maps, p=1.0, threshold=0.7, generator=seeded())
    # bilinear, align_corners=False == skimage's order-1 resize with edge mode
    up = np.stack([resize(m.double().numpy(), (48, 40), order=1, mode="edge", anti_aliasing=False) for m in maps])
    up = torch.from_numpy(up)
    hot = (up > 0.7).unsqueeze(1).expand_as(images)
    assert hot.any() and (~hot).any()
    assert (out[hot] == 0).all()
    assert torch.equal(out[~hot], images[~hot])
    assert torch.equal(images, before)  # the input is untouched


def test_erase_p0_and_high_threshold_change_nothing(batch):
    images, maps = batch
    assert torch.equal(attention_erase(images, maps, p=0.0, threshold=0.7), images)
    assert torch.equal(attention_erase(images, maps, p=1.0, threshold=1.0), images)


def test_erase_is_seeded_per_image(batch):
    images, maps = batch
    a = attention_erase(images, maps, p=0.5, threshold=0.5, generator=seeded(1))
    b = attention_erase(images, maps, p=0.5, threshold=0.5, generator=seeded(1))
    assert torch.equal(a, b)
    erased = torch.tensor([not torch.equal(a[i], images[i]) for i in range(6)])
    assert erased.any() and not erased.all()
    assert torch.equal(erased, torch.rand(6, generator=seeded(1)) < 0.5)  # one draw per image
    runs = {tuple(not torch.equal(x[i], images[i]) for i in range(6))
            for x in (attention_erase(images, maps, 0.5, 0.5, generator=seeded(s)) for s in range(8))}
    assert len(runs) > 1


def test_erase_apply_overrides_the_draw(batch):
    images, maps = batch
    apply = torch.tensor([True, False, True, False, False, False])
    out = attention_erase(images, maps, p=0.0, threshold=0.5, apply=apply)
    assert torch.equal(out[~apply], images[~apply])
    assert not torch.equal(out[0], images[0]) and not torch.equal(out[2], images[2])
    with pytest.raises(ValueError, match="apply"):
        attention_erase(images, maps, p=0.0, threshold=0.5, apply=apply[:3])


# ------------------------------------------------------------------- cropping
def test_crop_p0_is_an_identity_resize(batch):
    images, maps = batch
    torch.testing.assert_close(attention_crop(images, maps, p=0.0), images, atol=1e-6, rtol=0)
    assert torch.equal(attention_crop_boxes(maps, p=0.0), torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(6, 4))
    assert attention_crop(images, maps, p=0.0, size=24).shape == (6, 3, 24, 24)


def test_crop_box_contains_the_thresholded_region(batch):
    _, maps = batch
    h, w = maps.shape[1:]
    tight = attention_crop_boxes(maps, p=1.0, threshold_range=(0.5, 0.5), pad=0.0)
    padded = attention_crop_boxes(maps, p=1.0, threshold_range=(0.5, 0.5), pad=0.1)
    for m, box, pbox in zip(maps, tight, padded):
        ys, xs = torch.nonzero(m > 0.5, as_tuple=True)
        want = torch.tensor([xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h])
        torch.testing.assert_close(box, want)  # the tight box of the region
        side = torch.cat([want[2:] - want[:2]] * 2)
        torch.testing.assert_close(pbox, (want + 0.1 * side * torch.tensor([-1, -1, 1, 1])).clamp(0, 1))


def test_crop_uses_a_random_threshold_in_range():
    # a ramp: the region above t * max starts where the ramp crosses t
    ramp = torch.linspace(0.0, 1.0, 101)[:100].expand(8, 1, 100)
    boxes = attention_crop_boxes(ramp, p=1.0, threshold_range=(0.4, 0.6), pad=0.0, generator=seeded(1))
    assert (boxes[:, 0] >= 0.4).all() and (boxes[:, 0] <= 0.61).all()
    assert len(set(boxes[:, 0].tolist())) > 1


def test_crop_is_seeded_and_crops_the_boxes(batch):
    images, maps = batch
    boxes_a = attention_crop_boxes(maps, p=0.5, generator=seeded(5))
    boxes_b = attention_crop_boxes(maps, p=0.5, generator=seeded(5))
    assert torch.equal(boxes_a, boxes_b)
    out = attention_crop(images, maps, p=0.5, generator=seeded(5))
    torch.testing.assert_close(out, crop_resize(images, boxes_a, (48, 40)))
    apply = torch.tensor([True, True, False, False, True, False])
    forced = attention_crop_boxes(maps, p=0.0, generator=seeded(5), apply=apply)
    assert torch.equal(forced[~apply], torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(3, 4))
    assert (forced[apply] != torch.tensor([0.0, 0.0, 1.0, 1.0])).any(1).all()


def test_crop_of_an_all_zero_map_is_the_full_image():
    boxes = attention_crop_boxes(torch.zeros(2, 4, 4), p=1.0)
    assert torch.equal(boxes, torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(2, 4))
