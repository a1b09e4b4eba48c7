"""A registry of SAM image encoders, built from segment-anything's own ``ImageEncoderViT``.

``vit_h``, ``vit_l`` and ``vit_b`` use the official configurations of ``segment_anything.build_sam``
and the official checkpoints (URL, size and SHA-256 below). ``vit_tiny`` is the embedded demo's
encoder: the same class at a small size with random weights drawn from a fixed seed, so that the
whole pipeline runs on a laptop CPU. Its features are not SAM features; they only exercise the
plumbing.

Only the image encoder is built: the prompt encoder and mask decoder are never needed for
feature extraction, so their weights are dropped when a full SAM checkpoint is loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
from functools import partial
from pathlib import Path

import torch
from segment_anything.modeling import ImageEncoderViT

from samcache.features.specs import ENCODERS, EncoderSpec, encoder_spec

__all__ = ["ENCODERS", "EncoderSpec", "build_encoder", "encoder_spec", "sha256_file"]

ENCODER_PREFIX = "image_encoder."


def build_encoder(
    name: str, weights: str | Path | None = None, *, seed: int = 0, img_size: int | None = None
) -> ImageEncoderViT:
    """The encoder in eval mode with frozen parameters.

    ``weights``: a SAM checkpoint (full model or encoder-only state dict), loaded with
    ``torch.load(weights_only=True)``; ``None`` gives random weights drawn from ``seed``.
    ``img_size`` builds it for another input side than SAM's (benchmarks at a small input).
    """
    spec = encoder_spec(name)
    # With a checkpoint every parameter is overwritten, so the module is built on the meta
    # device (no memory, no random initialisation: seconds saved for ViT-H) and the loaded
    # tensors are assigned to it.
    build_on = torch.device("meta") if weights is not None else contextlib.nullcontext()
    with torch.random.fork_rng(devices=[]), build_on:
        torch.manual_seed(seed)
        encoder = ImageEncoderViT(
            img_size=img_size or spec.img_size,
            patch_size=spec.patch_size,
            embed_dim=spec.embed_dim,
            depth=spec.depth,
            num_heads=spec.num_heads,
            mlp_ratio=4,
            out_chans=spec.out_chans,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=spec.window_size,
            global_attn_indexes=spec.global_attn_indexes,
        )
    if weights is not None:
        state = torch.load(Path(weights), map_location="cpu", weights_only=True)
        if any(k.startswith(ENCODER_PREFIX) for k in state):
            state = {
                k[len(ENCODER_PREFIX) :]: v
                for k, v in state.items()
                if k.startswith(ENCODER_PREFIX)
            }
        try:
            encoder.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as err:
            raise ValueError(
                f"{weights}: not a checkpoint of SAM's {name} image encoder ({err}). Check that "
                "the file and the feature set's 'encoder' belong together."
            ) from None
    encoder.eval()
    encoder.requires_grad_(False)
    return encoder


def sam_around(encoder: torch.nn.Module, name: str):
    """A full SAM (prompt encoder and mask decoder around ``encoder``), for SamPredictor and
    SamAutomaticMaskGenerator. The sizes are ``segment_anything.build_sam``'s, scaled by the
    encoder's output width (256 for the official encoders, where they equal build_sam's), so an
    official checkpoint loads into it. New modules draw from torch's global generator."""
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    spec = encoder_spec(name)
    dim = spec.out_chans
    return Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(spec.grid, spec.grid),
            input_image_size=(spec.img_size, spec.img_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=8 * dim, num_heads=8),
            transformer_dim=dim,
            iou_head_depth=3,
            iou_head_hidden_dim=dim,
        ),
        pixel_mean=list(spec.pixel_mean),
        pixel_std=list(spec.pixel_std),
    ).eval()


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
