"""Images and masks brought to a store's square size, identically for an image and its masks.

* ``center_crop``: ``None`` resizes the whole image to ``size`` x ``size`` (seed 000: "we resize
  all the images ... to 224x224", which distorts non-square dermoscopy images a little);
  a number ``c`` in (0, 1] first crops the centred square of side ``c`` times the short side
  (seed 001: ``c = 0.8`` and 256 px).
* Images are resized with Pillow's antialiased bilinear filter. A JPEG is decoded at the
  smallest of its built-in reduced scales (1/2, 1/4, 1/8) that still holds at least twice the
  pixels the crop needs: decoding a 6,000-pixel image at full size would take seconds and change
  nothing visible at 224 pixels.
* A mask is resampled the same way as a fraction of foreground per pixel and thresholded at
  one half, so a thin structure is neither dropped nor thickened by nearest-neighbour aliasing.
* What the sources do not document is refused, naming the file: an image that is not 8-bit
  (a 16-bit one would be clipped), a mask with values other than 0 and 255, a file that is not
  an image or is truncated.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

Box = tuple[int, int, int, int]


def crop_box(width: int, height: int, center_crop: float | None) -> Box:
    if center_crop is None:
        return (0, 0, width, height)
    if not 0 < center_crop <= 1:
        raise ValueError(f"config key center_crop: {center_crop} is not in (0, 1]")
    side = max(1, round(center_crop * min(width, height)))
    left, top = (width - side) // 2, (height - side) // 2
    return (left, top, left + side, top + side)


def _resize(im: Image.Image, box: tuple[float, float, float, float], size: int) -> Image.Image:
    # Crop first: resize(box=...) would let the filter reach pixels outside the crop.
    if tuple(box) != (0, 0, *im.size):
        im = im.crop(tuple(round(v) for v in box))  # type: ignore[arg-type]
    return im.resize((size, size), Image.Resampling.BILINEAR)


#: Pillow modes of 8-bit images that become RGB without losing anything (a 16-bit or float
#: image would be clipped, an alpha channel dropped: those are refused).
EIGHT_BIT_MODES = ("RGB", "L", "P")


class ImageError(ValueError):
    """An image or mask file that is not what its source documents."""


@contextlib.contextmanager
def opened(path: Path) -> Iterator[Image.Image]:
    """``Image.open``, with unreadable files (not an image, truncated) as one clear error."""
    try:
        with Image.open(path) as im:
            yield im
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ImageError(f"{path.name}: not a readable image ({err})") from None


def load_image(path: Path, size: int, center_crop: float | None = None) -> np.ndarray:
    """(size, size, 3) uint8 RGB, from an 8-bit image (16-bit and float images are refused)."""
    with opened(path) as im:
        if im.mode not in EIGHT_BIT_MODES:
            raise ImageError(
                f"{path.name}: image mode {im.mode!r}, not an 8-bit RGB or grey image; "
                "converting it would clip or drop values"
            )
        full = im.size
        if im.format == "JPEG":
            short = min(full) * (center_crop or 1.0)
            need = math.ceil(2 * size * min(full) / max(short, 1))
            im.draft("RGB", (need, need))
        sx, sy = im.size[0] / full[0], im.size[1] / full[1]
        left, top, right, bottom = crop_box(*full, center_crop)
        box = (left * sx, top * sy, right * sx, bottom * sy)  # the same region, decoded scale
        return np.asarray(_resize(im.convert("RGB"), box, size))  # type: ignore[arg-type]


def image_size_of(path: Path) -> tuple[int, int]:
    with opened(path) as im:
        return im.size


def resize_mask(mask: np.ndarray, size: int, center_crop: float | None = None) -> np.ndarray:
    """A full-resolution boolean mask (H, W) as (size, size) uint8 in {0, 1}."""
    h, w = mask.shape
    im = Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255)
    out = np.asarray(_resize(im, crop_box(w, h, center_crop), size))
    return (out >= 128).astype(np.uint8)


def read_mask(path: Path, expect: tuple[int, int] | None = None) -> np.ndarray:
    """A binary PNG mask as a boolean (H, W) array, checked against the image size.

    ISIC documents its masks as 0 (background) and 255 (foreground); any other value (a mask
    saved as 0/1, a greyscale or anti-aliased one) is refused rather than thresholded.
    """
    with opened(path) as im:
        if expect is not None and im.size != expect:
            raise ImageError(
                f"{path.name}: mask is {im.size[0]}x{im.size[1]}, its image {expect[0]}x{expect[1]}"
            )
        if im.mode not in ("1", "L", "P"):
            raise ImageError(f"{path.name}: mask mode {im.mode!r}, not a single-channel mask")
        values = np.asarray(im.convert("L"))
    other = sorted(set(np.unique(values).tolist()) - {0, 255})
    if other:
        shown = ", ".join(str(v) for v in other[:5]) + (", ..." if len(other) > 5 else "")
        raise ImageError(
            f"{path.name}: mask values {shown} besides 0 and 255; the source documents binary "
            "masks of 0 (background) and 255 (foreground)"
        )
    return values == 255


def load_mask(
    path: Path, size: int, center_crop: float | None = None, expect: tuple[int, int] | None = None
) -> np.ndarray:
    return resize_mask(read_mask(path, expect), size, center_crop)
