"""SAM's own preprocessing, batched.

``SamPredictor.set_image`` resizes the longest side to the encoder's input size with
``ResizeLongestSide.apply_image`` (PIL, on uint8), normalises with the pixel mean and std, and
zero-pads bottom and right to a square. Here the resize is the very same function, applied per
image on the CPU (in loader threads); normalisation and padding run batched on the device.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide

from samcache.features.specs import EncoderSpec


class SamPreprocess:
    def __init__(self, spec: EncoderSpec) -> None:
        self.img_size = spec.img_size
        self.resizer = ResizeLongestSide(spec.img_size)
        self.mean = torch.tensor(spec.pixel_mean).view(1, 3, 1, 1)
        self.std = torch.tensor(spec.pixel_std).view(1, 3, 1, 1)

    def resize(self, images: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 -> (B, h, w, 3) uint8 with max(h, w) == img_size."""
        return np.stack([self.resizer.apply_image(np.ascontiguousarray(im)) for im in images])

    def to_input(
        self, resized: np.ndarray | torch.Tensor, device: torch.device | str
    ) -> torch.Tensor:
        """(B, h, w, 3) uint8 -> (B, 3, S, S) float32: normalised, then padded with zeros."""
        x = torch.as_tensor(resized).to(device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float()
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        h, w = x.shape[-2:]
        return F.pad(x, (0, self.img_size - w, 0, self.img_size - h))
