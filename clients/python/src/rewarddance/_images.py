"""Turning what trainers hold (paths, bytes, PIL images, numpy arrays, torch tensors) into
`rewarddance.v1.Image` messages.

Rules:
- file paths and bytes are already encoded (PNG/JPEG/WebP): they are sent as they are, the server
  sniffs the format;
- pixels in memory (PIL, numpy, torch) are sent as raw RGB8 (no encode cost on the trainer's
  side) unless that would exceed `raw_max_bytes`, in which case they are PNG-encoded with Pillow
  (lossless, so the server sees the same pixels) when Pillow is installed;
- float pixels become uint8 as round(clip(x, 0, 1) * 255); torch tensors are CHW, in [0, 1] or,
  when their minimum is below 0, in [-1, 1] (override with `value_range`);
- alpha is composited on white and PIL images get their EXIF orientation applied (what the server
  does with encoded images), so a PIL image and its file give the server the same pixels.
"""
from __future__ import annotations

import io
import os
from typing import Any, Optional, Tuple

import numpy as np

from .v1 import reward_pb2 as pb

#: Raw RGB8 above this many bytes per image is PNG-encoded instead (when Pillow is available).
DEFAULT_RAW_MAX_BYTES = 4 * 1024 * 1024

ValueRange = Optional[Tuple[float, float]]


class ImageConversionError(ValueError):
    """An input could not be turned into an image (reported as that item's error)."""


def is_torch_tensor(x: Any) -> bool:
    # No torch import: a trainer that has a tensor has torch already loaded.
    t = type(x)
    return t.__module__.split(".", 1)[0] == "torch" and hasattr(x, "detach") and hasattr(x, "dim")


def is_pil_image(x: Any) -> bool:
    t = type(x)
    for k in t.__mro__:
        if k.__module__ == "PIL.Image" and k.__name__ == "Image":
            return True
    return False


def is_batch_array(x: Any) -> bool:
    """A 4-D numpy array (N, H, W, C) or torch tensor (N, C, H, W): a batch of images."""
    if isinstance(x, np.ndarray):
        return x.ndim == 4
    if is_torch_tensor(x):
        return x.dim() == 4
    return False


def _to_uint8(arr: np.ndarray, value_range: ValueRange) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ImageConversionError(f"integer pixels must be in [0, 255], got [{arr.min()}, {arr.max()}]")
        return arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ImageConversionError(f"unsupported pixel dtype {arr.dtype}")
    a = arr.astype(np.float32, copy=False)
    if not np.isfinite(a).all():
        raise ImageConversionError("float pixels contain NaN or infinity")
    lo, hi = value_range if value_range is not None else (0.0, 1.0)
    if (lo, hi) != (0.0, 1.0):
        a = (a - lo) / (hi - lo)
    return np.rint(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)


def _hwc_to_rgb(a: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 -> contiguous (H, W, 3) uint8."""
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3:
        raise ImageConversionError(f"expected an HWC image, got shape {tuple(a.shape)}")
    c = a.shape[2]
    if c == 1:
        a = np.repeat(a, 3, axis=2)
    elif c == 4:
        rgb = a[:, :, :3].astype(np.uint16)
        alpha = a[:, :, 3:4].astype(np.uint16)
        # Composite on white: c * a + 255 * (255 - a), rounded, / 255.
        a = ((rgb * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
    elif c != 3:
        raise ImageConversionError(f"expected 1, 3 or 4 channels, got shape {tuple(a.shape)}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageConversionError(f"empty image, shape {tuple(a.shape)}")
    return np.ascontiguousarray(a)


def numpy_to_rgb8(arr: np.ndarray, value_range: ValueRange = None) -> np.ndarray:
    """An HWC numpy image (uint8, or float in [0, 1]) as contiguous (H, W, 3) uint8."""
    return _hwc_to_rgb(_to_uint8(np.asarray(arr), value_range))


def torch_to_rgb8(t: Any, value_range: ValueRange = None) -> np.ndarray:
    """A CHW torch tensor (float in [0, 1] or [-1, 1], or uint8) as (H, W, 3) uint8."""
    t = t.detach()
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3:
        raise ImageConversionError(f"expected a CHW tensor, got shape {tuple(t.shape)}")
    if t.is_floating_point():
        t = t.float()
        if value_range is None:
            value_range = (-1.0, 1.0) if t.numel() and float(t.min()) < 0.0 else (0.0, 1.0)
        lo, hi = value_range
        t = ((t - lo) / (hi - lo)).clamp(0.0, 1.0).mul(255.0).round().to(dtype=_torch_uint8(t))
    arr = t.cpu().permute(1, 2, 0).numpy()
    return _hwc_to_rgb(_to_uint8(arr, None))


def _torch_uint8(t: Any) -> Any:
    import torch  # already imported by whoever made `t`

    return torch.uint8


def pil_to_rgb8(img: Any) -> np.ndarray:
    """A PIL image as (H, W, 3) uint8, the way the server treats the same image sent as a file:
    EXIF orientation applied, alpha (RGBA, LA, PA, palette with transparency) on white."""
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - unreadable EXIF means no transform, as in Pillow
        orientation = 1
    if orientation not in (0, 1):
        from PIL import ImageOps

        img = ImageOps.exif_transpose(img)
    if img.mode != "RGB":
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            img = img.convert("RGBA")
            return _hwc_to_rgb(np.asarray(img))
        img = img.convert("RGB")
    return _hwc_to_rgb(np.asarray(img))


def _png_bytes(rgb: np.ndarray) -> Optional[bytes]:
    try:
        from PIL import Image as PILImage
    except ImportError:
        return None
    buf = io.BytesIO()
    PILImage.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def rgb8_message(rgb: np.ndarray, raw_max_bytes: int = DEFAULT_RAW_MAX_BYTES) -> pb.Image:
    h, w, _ = rgb.shape
    if rgb.nbytes > raw_max_bytes:
        png = _png_bytes(rgb)
        if png is not None and len(png) < rgb.nbytes:
            return pb.Image(encoded=png)
    return pb.Image(rgb8=pb.RawImage(width=w, height=h, data=rgb.tobytes()))


def to_image_message(
    x: Any,
    *,
    raw_max_bytes: int = DEFAULT_RAW_MAX_BYTES,
    value_range: ValueRange = None,
) -> pb.Image:
    """One input as an `Image` message. Raises TypeError for an unsupported type and
    ImageConversionError (a ValueError) for a supported type with bad contents."""
    if isinstance(x, pb.Image):
        return x
    if isinstance(x, (bytes, bytearray, memoryview)):
        data = bytes(x)
        if not data:
            raise ImageConversionError("empty image bytes")
        return pb.Image(encoded=data)
    if isinstance(x, (str, os.PathLike)):
        try:
            with open(x, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ImageConversionError(f"cannot read {os.fspath(x)!r}: {e.strerror or e}") from e
        if not data:
            raise ImageConversionError(f"{os.fspath(x)!r} is empty")
        return pb.Image(encoded=data)
    if isinstance(x, np.ndarray):
        return rgb8_message(numpy_to_rgb8(x, value_range), raw_max_bytes)
    if is_torch_tensor(x):
        return rgb8_message(torch_to_rgb8(x, value_range), raw_max_bytes)
    if is_pil_image(x):
        return rgb8_message(pil_to_rgb8(x), raw_max_bytes)
    raise TypeError(
        f"unsupported image type {type(x).__module__}.{type(x).__qualname__}: expected a file path, "
        "bytes, a PIL image, a numpy HWC array or a torch CHW tensor"
    )
