"""Blocks of the dense (segmentation) heads, shared by seeds 002-004.

* ``ConvBlock``: conv3-BN-ReLU-conv3-BN-ReLU; with ``residual`` a 1x1 conv + BN shortcut is added
  to it (AER-Net's residual decoder block, Fig. 4; the authors' ``double_conv_layer``).
* ``AttentionGate``: Oktay et al.'s additive attention gate on a skip connection, as AER-Net's
  code builds it (``attention_block``): the skip x is sub-sampled by a 2x2 stride-2 convolution
  (θ), the gating signal (1x1 conv + BN + ReLU of the coarser decoder map) by a 1x1 convolution
  (φ); ``ψ(ReLU(θx + φg))`` is a 1x1 convolution to one channel followed by the ψ activation,
  resampled to x's grid, and multiplies x; a 1x1 conv + BN (W) follows. ψ's activation is
  ``sigmoid`` in Oktay's paper (the default) and ``relu`` in the AER-Net code (``psi``). The
  code resamples g with a 3x3 transposed convolution of stride 1 where the grids already match;
  here φg is resized bilinearly only if they differ, and ψ is upsampled bilinearly (Oktay).
* ``SpatialAttention``: CBAM's spatial branch (Woo et al. 2018), timm's ``SpatialAttn``:
  channel-wise mean and max -> k x k conv + BN -> sigmoid -> x · map (Thwin & Park's module).
* ``Decoder``: the U-Net decoder every dense head ends in: from a bridge, one step per skip
  (coarse to fine: nearest upsampling to the skip's grid, optional gate on the skip,
  concatenation, conv block, optional spatial attention), then skip-less upsampling blocks up to
  the output size (AER-Net's two last blocks), then a 1x1 convolution to the logits.
* ``fit_grid``: a map brought onto another grid: exact average pooling where the grid divides
  the map's (the same windows as a cached ``<tap>@<grid>``), bilinear resampling otherwise.

Hand-written because no library has them in this form: MONAI's ``AttentionBlock`` has no
sub-sampled θ, no ψ option and a BN inside ψ; smp's U-Net has no gates or residual blocks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

PSI = ("sigmoid", "relu")


def fit_grid(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``x`` (B, C, h, w) on a ``size`` grid: average pooling in whole windows where ``size``
    divides (h, w), bilinear resampling otherwise; unchanged when it already fits."""
    size = tuple(int(s) for s in size)
    h, w = x.shape[-2:]
    if (h, w) == size:
        return x
    if h % size[0] == 0 and w % size[1] == 0:
        return F.avg_pool2d(x, (h // size[0], w // size[1]))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ConvBlock(nn.Module):
    """conv3-BN-ReLU-conv3-BN-ReLU, plus a 1x1-BN shortcut when ``residual``."""

    def __init__(self, in_channels: int, out_channels: int, *, residual: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        self.shortcut = (
            nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.BatchNorm2d(out_channels))
            if residual
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return y + self.shortcut(x) if self.shortcut is not None else y


class AttentionGate(nn.Module):
    """``(x, g) -> (W(ψ · x), ψ)``: Oktay's gate on skip ``x`` guided by the coarser ``g``."""

    def __init__(
        self, x_channels: int, g_channels: int, inter_channels: int, *, psi: str = "sigmoid"
    ) -> None:
        super().__init__()
        if psi not in PSI:
            raise ValueError(f"head_args.psi must be one of {PSI}, not '{psi}'")
        self.gating = nn.Sequential(
            nn.Conv2d(g_channels, inter_channels, 1),
            nn.BatchNorm2d(inter_channels),
            nn.ReLU(inplace=True),
        )
        self.theta = nn.Conv2d(x_channels, inter_channels, 2, stride=2)
        self.phi = nn.Conv2d(inter_channels, inter_channels, 1)
        self.psi = nn.Conv2d(inter_channels, 1, 1)
        self.activation = torch.sigmoid if psi == "sigmoid" else F.relu
        self.out = nn.Sequential(nn.Conv2d(x_channels, x_channels, 1), nn.BatchNorm2d(x_channels))

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = x.shape[-2:]
        # Keras' 'same' padding of a stride-2 convolution: pad the bottom/right of odd sides
        theta = self.theta(F.pad(x, (0, w % 2, 0, h % 2)))
        phi = self.phi(self.gating(g))
        if phi.shape[-2:] != theta.shape[-2:]:
            phi = F.interpolate(phi, size=theta.shape[-2:], mode="bilinear", align_corners=False)
        a = self.activation(self.psi(F.relu(theta + phi)))
        a = F.interpolate(a, size=(h, w), mode="bilinear", align_corners=False)
        return self.out(a * x), a


class SpatialAttention(nn.Module):
    """CBAM's spatial attention (timm's ``SpatialAttn``): ``x · σ(BN(conv_k([mean_c x, max_c x])))``."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        from timm.layers.cbam import SpatialAttn

        self.attn = SpatialAttn(kernel_size=kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x)


class Stage(nn.Module):
    """A conv block, optionally followed by spatial attention."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        residual: bool = False,
        spatial_attention: bool = False,
        sa_kernel: int = 7,
    ) -> None:
        super().__init__()
        self.block = ConvBlock(in_channels, out_channels, residual=residual)
        self.attention = SpatialAttention(sa_kernel) if spatial_attention else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return self.attention(y) if self.attention is not None else y


def free_steps(finest: int, out: int) -> int:
    """How many skip-less x2 upsampling blocks take the finest skip's grid towards ``out``."""
    if finest >= out:
        return 0
    return max(0, round(math.log2(out / finest)))


class Decoder(nn.Module):
    """U-Net decoder from a bridge map and skips (coarse to fine) to logits at ``out_size``.

    ``widths``: one per skip, coarse to fine; ``n_free`` skip-less upsampling blocks of the last
    width follow (AER-Net: two, from stride 4 to the image); a final bilinear resize reaches
    ``out_size`` where the grids are not a power of two apart.
    """

    def __init__(
        self,
        bridge_channels: int,
        skip_channels: Sequence[int],
        widths: Sequence[int],
        out_channels: int,
        out_size: tuple[int, int],
        *,
        n_free: int,
        gates: bool = False,
        psi: str = "sigmoid",
        residual: bool = False,
        spatial_attention: bool = False,
        sa_kernel: int = 7,
    ) -> None:
        super().__init__()
        if len(widths) != len(skip_channels):
            raise ValueError(
                f"head_args.decoder_channels: {len(widths)} widths for {len(skip_channels)} "
                "skip connections; give one per skip, coarse to fine"
            )
        self.out_size = tuple(out_size)
        stage = {
            "residual": residual,
            "spatial_attention": spatial_attention,
            "sa_kernel": sa_kernel,
        }
        self.gates = nn.ModuleList() if gates else None
        self.steps = nn.ModuleList()
        below = bridge_channels
        for skip, width in zip(skip_channels, widths, strict=True):
            if self.gates is not None:
                self.gates.append(AttentionGate(skip, below, width, psi=psi))
            self.steps.append(Stage(below + skip, width, **stage))
            below = width
        self.free = nn.ModuleList(Stage(below, below, **stage) for _ in range(n_free))
        self.head = nn.Conv2d(below, out_channels, 1)

    def forward(self, bridge: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        logits = self.head(self.features(bridge, skips))
        if logits.shape[-2:] != self.out_size:
            logits = F.interpolate(logits, size=self.out_size, mode="bilinear", align_corners=False)
        return logits

    def features(self, bridge: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        """The last block's map (the last width, on the finest grid), before the 1x1 head."""
        x = bridge
        for k, (skip, step) in enumerate(zip(skips, self.steps, strict=True)):
            up = (
                F.interpolate(x, size=skip.shape[-2:], mode="nearest")
                if x.shape[-2:] != skip.shape[-2:]
                else x
            )
            if self.gates is not None:
                skip, _ = self.gates[k](skip, x)
            x = step(torch.cat([up, skip], dim=1))
        for step in self.free:
            x = step(F.interpolate(x, scale_factor=2, mode="nearest"))
        return x
