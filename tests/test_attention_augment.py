import numpy as np
import pytest
import torch
from skimage.transform import resize

from vitfgvc.attention_augment import attention_crop, attention_crop_boxes, attention_erase
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


def uniforms(n=6, seed=0):
    return torch.rand(n, generator=torch.Generator().manual_seed(seed))


# -------------------------------------------------------------------- erasing
def test_erase_p1_zeroes_exactly_the_pixels_above_threshold(batch):
    images, maps = batch
    before = images.clone()
    out = attention_erase(images, maps, p=1.0, threshold=0.7)
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


def test_erase_decides_per_image_from_its_uniform(batch):
    images, maps = batch
    u = uniforms(seed=1)
    a = attention_erase(images, maps, p=0.5, threshold=0.5, u_apply=u)
    erased = torch.tensor([not torch.equal(a[i], images[i]) for i in range(6)])
    assert erased.any() and not erased.all()
    assert torch.equal(erased, u < 0.5)  # image i is erased exactly when its uniform is below p
    # an image's result depends on its own uniform only, not on the batch around it
    assert torch.equal(attention_erase(images[2:4], maps[2:4], 0.5, 0.5, u_apply=u[2:4]), a[2:4])
    with pytest.raises(ValueError, match="u_apply must be"):
        attention_erase(images, maps, p=0.5, threshold=0.5, u_apply=u[:3])
    # standalone, without uniforms: fresh draws each call
    runs = {tuple(not torch.equal(x[i], images[i]) for i in range(6))
            for x in (attention_erase(images, maps, 0.5, 0.5) for _ in range(8))}
    assert len(runs) > 1


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
    u = torch.tensor([0.0, 0.25, 0.5, 0.75, 0.999, 0.1, 0.9, 0.6])
    boxes = attention_crop_boxes(ramp, p=1.0, threshold_range=(0.4, 0.6), pad=0.0, u_threshold=u)
    t = 0.4 + 0.2 * u  # the region: the cells above t * max (0.99), from the first one on
    first = (ramp[0, 0] > (t * 0.99).unsqueeze(1)).int().argmax(1)
    torch.testing.assert_close(boxes[:, 0], first / 100)
    assert len(set(first.tolist())) == 8 and (first >= 40).all() and (first <= 60).all()


def test_crop_decides_per_image_and_crops_the_boxes(batch):
    images, maps = batch
    u_apply, u_threshold = uniforms(seed=5), uniforms(seed=6)
    boxes = attention_crop_boxes(maps, p=0.5, u_apply=u_apply, u_threshold=u_threshold)
    cropped = (boxes != torch.tensor([0.0, 0.0, 1.0, 1.0])).any(1)
    assert torch.equal(cropped, u_apply < 0.5) and cropped.any() and not cropped.all()
    out = attention_crop(images, maps, p=0.5, u_apply=u_apply, u_threshold=u_threshold)
    torch.testing.assert_close(out, crop_resize(images, boxes, (48, 40)))
    part = attention_crop_boxes(maps[1:4], p=0.5, u_apply=u_apply[1:4], u_threshold=u_threshold[1:4])
    assert torch.equal(part, boxes[1:4])
    with pytest.raises(ValueError, match="u_threshold must be"):
        attention_crop_boxes(maps, p=0.5, u_threshold=u_threshold[:2])


def test_crop_of_an_all_zero_map_is_the_full_image():
    boxes = attention_crop_boxes(torch.zeros(2, 4, 4), p=1.0)
    assert torch.equal(boxes, torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(2, 4))
