"""Image bytes -> RGB uint8 [3, S, S] on the host; CLIP normalisation on the device.

Why uint8 on the host: the float32 version of a batch is 4x larger to move between grain worker processes and onto
the accelerator, and normalising is one fused multiply-add there (bench/data_loader.py measures both paths).
JPEG decode uses PIL's draft mode (DCT-domain downscale to the smallest scale still >= the target), which is where
most of the host time goes on full-size photos. The resize after it has two resamplers:
- "pil": PIL's antialiased bicubic, the kernel of upstream training and of CLIPImageProcessor (evaluation and
  generation use it);
- "opencv": OpenCV's 4-tap bicubic, about 2x faster than PIL's on a 640x480 photo and the training loader's default.
  On bench/data_loader.py's photos it is 1.2 grey levels (of 255) from upstream's full-size PIL decode+resize on
  average, against 0.8 for draft+PIL.
"""
from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RESIZE_MODES = ("squash", "crop")  # squash: upstream training (224x224 bicubic); crop: CLIPImageProcessor style
RESAMPLERS = ("pil", "opencv")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: alpha is composited on white, CMYK/greyscale/palette/16-bit converted."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        im = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8), "L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, rgba)
    return im if im.mode == "RGB" else im.convert("RGB")


@functools.cache
def _opencv():
    import cv2

    cv2.setNumThreads(1)  # parallelism belongs to the loader's threads/workers, not to one resize
    return cv2


def _jpeg_reduction(w: int, h: int, request: tuple[int, int]) -> int:
    """The DCT-domain reduction (1, 2, 4 or 8) PIL's draft picks: the largest keeping both sides >= request."""
    most = min(w // request[0], h // request[1])
    return next(r for r in (8, 4, 2, 1) if r <= max(most, 1))


def _opencv_jpeg(data: bytes, reduction: int) -> np.ndarray:
    """Colour JPEG -> BGR uint8 [h, w, 3] through OpenCV's libjpeg-turbo, reduced in the DCT domain like draft.

    Straight into a NumPy array: no PIL image to copy out of. EXIF orientation is ignored, as PIL does."""
    cv2 = _opencv()
    flag = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}[reduction]
    out = cv2.imdecode(np.frombuffer(data, np.uint8), flag | cv2.IMREAD_IGNORE_ORIENTATION)
    if out is None:
        raise OSError("cannot decode JPEG data (truncated or corrupt)")
    return out


def _bicubic(pixels, width: int, height: int, resampler: str) -> np.ndarray:
    """PIL image ("pil") or uint8 [h, w, 3] array ("opencv") -> uint8 [height, width, 3]."""
    if resampler == "pil":
        return np.asarray(pixels.resize((width, height), Image.BICUBIC), dtype=np.uint8)
    cv2 = _opencv()
    return cv2.resize(pixels, (width, height), interpolation=cv2.INTER_CUBIC)


def decode_resize(data: bytes, size: int = 224, mode: str = "squash", resampler: str = "pil") -> np.ndarray:
    """Encoded image -> uint8 [3, size, size] (a channels-first view).

    Raises OSError/ValueError on undecodable or truncated data."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode {mode!r} not in {RESIZE_MODES}")
    if resampler not in RESAMPLERS:
        raise ValueError(f"resampler {resampler!r} not in {RESAMPLERS}")
    im = Image.open(io.BytesIO(data))
    pixels, bgr = None, False
    if im.format == "JPEG":
        w, h = im.size
        # draft keeps each side >= the request; for crop only the short side must stay >= size.
        scale = size / min(w, h) if mode == "crop" else max(size / w, size / h)
        request = (max(1, int(w * scale)), max(1, int(h * scale)))
        if resampler == "opencv" and im.mode == "RGB":  # plain colour JPEG; CMYK/grey go through PIL below
            pixels, bgr = _opencv_jpeg(data, _jpeg_reduction(w, h, request)), True
        else:
            im.draft("RGB", request)
    if pixels is None:
        im.load()  # full decode here so truncated files fail now, inside the caller's error handling
        im = to_rgb(im)
        pixels = im if resampler == "pil" else np.asarray(im, dtype=np.uint8)
    h, w = (pixels.height, pixels.width) if resampler == "pil" else pixels.shape[:2]
    if mode == "squash":
        out = _bicubic(pixels, size, size, resampler)
    else:
        s = size / min(w, h)
        nw, nh = max(size, round(w * s)), max(size, round(h * s))
        left, top = (nw - size) // 2, (nh - size) // 2
        out = _bicubic(pixels, nw, nh, resampler)[top:top + size, left:left + size]
    if bgr:
        out = out[:, :, ::-1]
    return out.transpose(2, 0, 1)  # a view: the caller's copy into its batch is the only one


def normalize_host(pixels_uint8: np.ndarray) -> np.ndarray:
    """NumPy CLIP normalisation over axis -3 (channels): for float32 host pipelines and for checks."""
    mean = np.asarray(CLIP_MEAN, np.float32).reshape(3, 1, 1)
    std = np.asarray(CLIP_STD, np.float32).reshape(3, 1, 1)
    return (pixels_uint8.astype(np.float32) / 255.0 - mean) / std


def normalize_on_device(vision_x_uint8, dtype=None):
    """CLIP normalisation of uint8 pixels [..., 3, H, W] in JAX (call inside the jitted step).

    Returns `dtype` (default float32); result equals `normalize_host` up to float rounding.
    """
    import jax.numpy as jnp

    dtype = dtype or jnp.float32
    scale = jnp.asarray([1.0 / (255.0 * s) for s in CLIP_STD], jnp.float32).reshape(3, 1, 1)
    shift = jnp.asarray([m / s for m, s in zip(CLIP_MEAN, CLIP_STD)], jnp.float32).reshape(3, 1, 1)
    return (vision_x_uint8.astype(jnp.float32) * scale - shift).astype(dtype)
