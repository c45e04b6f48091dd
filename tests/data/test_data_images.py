"""Decode -> RGB -> resize on the host; CLIP normalisation on the device."""
import io

import numpy as np
import pytest
from PIL import Image

from data_helpers import photo_jpeg
from otter_jax.data import images


@pytest.mark.parametrize("resampler", images.RESAMPLERS)
@pytest.mark.parametrize("mode,fmt", [("RGB", "JPEG"), ("L", "JPEG"), ("CMYK", "JPEG"), ("RGBA", "PNG"),
                                      ("P", "PNG"), ("LA", "PNG"), ("I;16", "PNG")])
def test_every_mode_becomes_rgb_uint8(mode, fmt, resampler):
    out = images.decode_resize(photo_jpeg(mode=mode, fmt=fmt), 28, resampler=resampler)
    assert out.shape == (3, 28, 28) and out.dtype == np.uint8
    assert out.std() > 5  # a real picture, not a constant fill


@pytest.mark.parametrize("mode", images.RESIZE_MODES)
def test_opencv_path_matches_pil_path(mode):
    """OpenCV's reduced JPEG decode is PIL's draft decode bit for bit, in RGB order; only the resize kernel differs."""
    import cv2

    data = photo_jpeg("astronaut.png", size=512)
    im = Image.open(io.BytesIO(data))
    im.draft("RGB", (100, 100))  # 512 -> 256 (reduction 2), then resized to 100
    im.load()
    bgr = images._opencv_jpeg(data, images._jpeg_reduction(512, 512, (100, 100)))
    np.testing.assert_array_equal(bgr[:, :, ::-1], np.asarray(im))
    fast = images.decode_resize(data, 100, mode, "opencv").astype(int)
    exact = images.decode_resize(data, 100, mode, "pil").astype(int)
    assert np.abs(fast - exact).mean() < 3  # same picture, same orientation and channel order
    want = cv2.resize(np.asarray(im), (100, 100), interpolation=cv2.INTER_CUBIC).transpose(2, 0, 1)
    if mode == "squash":
        np.testing.assert_array_equal(fast, want)


def test_alpha_is_composited_on_white():
    im = Image.new("RGBA", (40, 30), (0, 0, 0, 0))  # fully transparent black
    buf = io.BytesIO()
    im.save(buf, "PNG")
    assert (images.decode_resize(buf.getvalue(), 16) == 255).all()


def test_squash_vs_crop_geometry():
    im = Image.new("RGB", (300, 100), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 100, 100))  # red left third
    buf = io.BytesIO()
    im.save(buf, "PNG")
    squash = images.decode_resize(buf.getvalue(), 30, "squash")
    crop = images.decode_resize(buf.getvalue(), 30, "crop")
    assert squash[0, :, :5].mean() > 200  # red survives at the left edge when squashing
    assert crop[0].mean() < 20 and crop[2].mean() > 200  # centre crop keeps only the blue middle


@pytest.mark.parametrize("resampler", images.RESAMPLERS)
def test_truncated_and_garbage_bytes_raise(resampler):
    data = photo_jpeg(size=128)
    with pytest.raises(OSError):
        images.decode_resize(data[: len(data) // 2], 28, resampler=resampler)
    with pytest.raises(OSError):
        images.decode_resize(b"not an image at all", 28, resampler=resampler)


def test_normalize_on_device_matches_host():
    x = np.random.default_rng(0).integers(0, 256, (2, 3, 1, 3, 8, 8), dtype=np.uint8)
    dev = np.asarray(images.normalize_on_device(x))
    np.testing.assert_allclose(dev, images.normalize_host(x), rtol=1e-5, atol=1e-5)
    assert np.isclose(dev[..., 0, :, :].max(), (1 - images.CLIP_MEAN[0]) / images.CLIP_STD[0], atol=0.1)
