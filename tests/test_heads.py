"""Every registered head against the interface, and seed 000's modules against their formulas."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from samcache.heads import HEADS, build_head
from samcache.heads.attnmel import VGGHead
from samcache.heads.backbones import StagedBackbone, build_backbone
from samcache.heads.base import head_arguments
from samcache.heads.samaug import samaug_c_image
from samcache.heads.slca import SLCA, Projector, StageFusion, slap
from samcache.inputs import IMAGENET_MEAN, IMAGENET_STD

from conftest import shapes_of

pytestmark = pytest.mark.usefixtures("one_thread")

B, SIDE, N_OUT = 4, 32, 3
TAP_SHAPES = {
    "patch_embed": (16, 8, 8),
    "block:1": (16, 8, 8),
    "block:2": (16, 8, 8),
    "block:4": (16, 8, 8),
    "neck": (8, 8, 8),
}


class NotWeights:
    """Something a checkpoint must not be able to make torch.load construct."""


CACHED = ("pooled", "taps", "sam_prior", "superpixels", "lesion_mask", "attributes")


def fake_batch(requires: frozenset[str], gen: torch.Generator, dense: bool = False) -> dict:
    """A batch holding every input a head may require, at tiny sizes (and, for a dense head,
    the masks of a segmentation task with N_OUT channels as ``target``)."""
    batch = {
        "label": torch.arange(B) % N_OUT,
        "pooled": torch.randn(B, 10, generator=gen),
        "taps": {t: torch.randn(B, *s, generator=gen) for t, s in TAP_SHAPES.items()},
        "image": torch.randn(B, 3, SIDE, SIDE, generator=gen),
        "sam_prior": torch.rand(B, 1, SIDE, SIDE, generator=gen),
        "lesion_mask": (torch.rand(B, 1, SIDE, SIDE, generator=gen) > 0.5).float(),
        "attributes": (torch.rand(B, 5, SIDE, SIDE, generator=gen) > 0.5).float(),
        "superpixels": torch.randint(0, 16, (B, SIDE, SIDE), generator=gen),
    }
    batch["target"] = (torch.rand(B, N_OUT, SIDE, SIDE, generator=gen) > 0.6).float()
    keep = requires | {"label"} | ({"target"} if dense else set())
    return {k: v for k, v in batch.items() if k in keep}


def tiny_args(cls) -> dict:
    """Small settings for heads that build a backbone: timm's test ResNet, 1/16 of VGG-16; an
    eighth of the dense heads' widths; AER-Net + SAM's four skip levels."""
    if issubclass(cls, VGGHead):
        return {"width": 1 / 16}
    params = inspect.signature(cls.from_shapes).parameters
    name = next(n for n, c in HEADS.items() if c is cls)
    accepted = head_arguments(name) | set(params)
    args = {"backbone": "test_resnet"} if "backbone" in accepted else {}
    if cls.dense and "width" in accepted:
        args["width"] = 1 / 8
    if name == "aernet_sam":
        args["levels"] = ["block:1", "block:2", "block:4", "neck"]
    return args


@pytest.fixture
def encoder_forbidden(monkeypatch):
    """Any attempt to build or run a SAM encoder fails the test."""
    from segment_anything.modeling import ImageEncoderViT

    import samcache.features.encoders as encoders

    def boom(*a, **k):
        raise AssertionError("a head ran the SAM encoder")

    monkeypatch.setattr(ImageEncoderViT, "forward", boom)
    monkeypatch.setattr(encoders, "build_encoder", boom)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_every_head_trains_on_cached_inputs_without_the_encoder(name, encoder_forbidden):
    torch.manual_seed(0)
    cls = HEADS[name]
    gen = torch.Generator().manual_seed(0)
    batch = fake_batch(cls.requires, gen, dense=cls.dense)
    head = build_head(name, n_outputs=N_OUT, input_shapes=shapes_of(batch), **tiny_args(cls))
    head.train()
    out = head(batch)
    # a dense head predicts every pixel of the task's masks, at full resolution
    assert out["logits"].shape == ((B, N_OUT, SIDE, SIDE) if cls.dense else (B, N_OUT))
    assert torch.isfinite(out["logits"]).all()
    loss = head.loss(out, batch, "segmentation" if cls.dense else "multiclass")
    loss.backward()
    for pname, p in head.named_parameters():
        assert p.grad is not None, f"{name}: no gradient reaches {pname}"
    backbones = [
        m
        for m in head.modules()
        if isinstance(m, StagedBackbone) or getattr(m, "is_backbone", False)
    ]
    for bb in backbones:  # the trainable backbone learns, every one of them
        assert any(p.grad.abs().sum() > 0 for p in bb.parameters()), name
    others = {id(p) for bb in backbones for p in bb.parameters()}
    assert any(p.grad.abs().sum() > 0 for p in head.parameters() if id(p) not in others), name
    for key in set(CACHED + ("target",)) & set(batch):  # the cache is data, never a parameter
        for x in batch[key].values() if key == "taps" else [batch[key]]:
            assert not x.requires_grad and x.grad is None, (name, key)
    for maps in (out.get("attention") or {}).values():  # seed 001's sigmoid attention maps
        assert maps.shape[:2] == (B, 1) and maps.min() >= 0 and maps.max() <= 1
    before = [p.detach().clone() for p in head.parameters()]
    torch.optim.AdamW(head.parameters(), lr=1e-3).step()
    assert any(not torch.equal(a, p) for a, p in zip(before, head.parameters(), strict=True))


def test_slca_equals_equation_1_on_a_hand_made_input():
    gen = torch.Generator().manual_seed(1)
    sam = torch.randn(2, 32, 8, 8, generator=gen)  # SAM tap: 32 channels on an 8 x 8 grid
    stage = torch.randn(2, 6, 4, 4, generator=gen)  # backbone stage: 6 channels, 4 x 4
    slca = SLCA(32, 6, reduction=4)
    with torch.no_grad():
        for p in slca.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    # SLAP: each stage position is the mean of the 2 x 2 SAM positions it covers.
    pooled = sam.reshape(2, 32, 4, 2, 4, 2).mean(dim=(3, 5))
    w1, b1 = slca.conv1.weight[:, :, 0, 0], slca.conv1.bias  # (8, 32): r = 4
    w2, b2 = slca.conv2.weight[:, :, 0, 0], slca.conv2.bias  # (6, 8)
    hidden = torch.clamp(torch.einsum("oc,bchw->bohw", w1, pooled) + b1.view(1, -1, 1, 1), min=0)
    z = torch.einsum("oc,bchw->bohw", w2, hidden) + b2.view(1, -1, 1, 1)
    expected = 1.0 / (1.0 + torch.exp(-z))
    torch.testing.assert_close(slca(sam, (4, 4)), expected, atol=1e-6, rtol=1e-5)
    assert w1.shape == (8, 32)

    fusion = StageFusion("slca", 32, 6, reduction=4, slap="grid", slap_kernel=3, residual="scale")
    fusion.attention.load_state_dict(slca.state_dict())
    torch.testing.assert_close(fusion(stage, sam), stage + stage * expected, atol=1e-6, rtol=1e-5)
    fusion.residual = "add"
    torch.testing.assert_close(fusion(stage, sam), stage + expected, atol=1e-6, rtol=1e-5)


def test_slca_on_a_stage_finer_than_the_sam_grid_upsamples_the_attention():
    sam = torch.randn(1, 16, 4, 4)
    slca = SLCA(16, 3, reduction=16)
    at_sam_grid = slca(sam, (4, 4))
    fine = slca(sam, (8, 8))
    assert fine.shape == (1, 3, 8, 8)
    torch.testing.assert_close(fine, F.interpolate(at_sam_grid, size=(8, 8), mode="bilinear"))


def test_window_slap_is_a_stride_1_local_mean():
    sam = torch.zeros(1, 16, 5, 5)
    sam[0, :, 2, 2] = 9.0
    slca = SLCA(16, 1, reduction=16, slap="window", slap_kernel=3)
    with torch.no_grad():
        slca.conv1.weight.fill_(1.0 / 16)
        slca.conv1.bias.zero_()
        slca.conv2.weight.fill_(1.0)
        slca.conv2.bias.zero_()
    a = slca(sam, (5, 5))[0, 0]
    # 3 x 3 mean around (2, 2) is 1 everywhere the window covers the spike, 0 elsewhere.
    expected = torch.zeros(5, 5)
    expected[1:4, 1:4] = 1.0
    torch.testing.assert_close(a, torch.sigmoid(expected))


def test_projector_meets_the_last_stage_grid_as_in_fig_1c():
    proj = Projector(4, 6, (7, 7))
    assert proj.size == (56, 56)
    assert proj(torch.randn(1, 4, 64, 64)).shape == (1, 6, 7, 7)
    small = Projector(8, 12, (2, 2))
    out = small(torch.randn(2, 8, 8, 8))
    assert out.shape == (2, 12, 2, 2)
    strides = [m.stride for m in small.modules() if isinstance(m, torch.nn.Conv2d)]
    assert strides == [(1, 1), (2, 2), (2, 2), (2, 2)]


def test_resnet_stages_are_the_stem_and_four_residual_stages():
    net = StagedBackbone(build_backbone("test_resnet"), 64)
    assert [s.module for s in net.stages] == ["act1", "layer1", "layer2", "layer3", "layer4"]
    assert [s.grid for s in net.stages] == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
    assert not any(s.channels_last for s in net.stages)


def test_swin_stages_start_at_the_patch_embedding_and_are_handed_over_channels_first():
    model = build_backbone(
        "swinv2_tiny_window8_256",
        img_size=32,
        embed_dim=8,
        depths=(1, 1, 1, 1),
        num_heads=(1, 1, 1, 1),
        window_size=2,
    )
    net = StagedBackbone(model, 32)
    assert [s.module for s in net.stages] == ["patch_embed", *(f"layers.{i}" for i in range(4))]
    assert all(s.channels_last for s in net.stages)
    seen = []

    def record(i, x):
        seen.append(tuple(x.shape))
        return x

    x = torch.randn(1, 3, 32, 32)
    plain = net(x)
    assert torch.equal(net(x, record), plain)  # an identity rewrite changes nothing
    assert seen == [(1, s.channels, *s.grid) for s in net.stages]
    zeroed = net(x, lambda i, t: t * 0 if i == 4 else t)
    assert not torch.allclose(zeroed, plain)  # the hook really replaces the stage output


def test_samaug_c_image_weights_pixels_by_the_prior():
    img = torch.rand(1, 3, 8, 8) * 255
    norm = (img / 255 - IMAGENET_MEAN) / IMAGENET_STD
    prior = torch.zeros(1, 1, 8, 8)
    prior[..., :4] = 1.0
    prior[..., 4:6] = 0.5

    def pixels(t):
        return (t * IMAGENET_STD + IMAGENET_MEAN) * 255

    out = pixels(samaug_c_image(norm, prior))
    torch.testing.assert_close(out[..., :4], img[..., :4], atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(out[..., 4:6], img[..., 4:6] * 0.5, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(out[..., 6:], torch.zeros_like(img[..., 6:]), atol=1e-3, rtol=0)
    floored = pixels(samaug_c_image(norm, prior, floor=0.2))
    torch.testing.assert_close(floored[..., 6:], 0.2 * img[..., 6:], atol=1e-3, rtol=1e-5)
    no_mask = samaug_c_image(norm, torch.zeros_like(prior))  # SAM found nothing: unchanged
    torch.testing.assert_close(no_mask, norm, atol=1e-5, rtol=1e-5)


def test_samaug_c_predicts_the_weighted_ensemble_of_its_branches():
    gen = torch.Generator().manual_seed(3)
    batch = fake_batch(frozenset({"image", "sam_prior"}), gen)
    head = build_head(
        "samaug_c",
        n_outputs=N_OUT,
        input_shapes=shapes_of(batch),
        backbone="test_resnet",
        weight_raw=0.3,
    ).eval()
    with torch.no_grad():
        p = torch.softmax(head(batch)["logits"], dim=1)
        p_raw = torch.softmax(head.raw({"image": batch["image"]})["logits"], dim=1)
        aug = samaug_c_image(batch["image"], batch["sam_prior"])
        p_aug = torch.softmax(head.augmented({"image": aug})["logits"], dim=1)
    torch.testing.assert_close(p, 0.3 * p_raw + 0.7 * p_aug, atol=1e-6, rtol=1e-5)


def test_a_stage_tap_list_of_the_wrong_length_names_the_setting():
    batch = fake_batch(frozenset({"image", "taps"}), torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="stage_taps.*5 stages"):
        build_head(
            "sam_slca",
            n_outputs=2,
            input_shapes=shapes_of(batch),
            backbone="test_resnet",
            stage_taps=["neck", "neck"],
        )


def test_backbone_checkpoints_load_with_weights_only(tmp_path, caplog):
    src = build_backbone("test_resnet")
    path = tmp_path / "test_resnet.pth"
    torch.save({"state_dict": src.state_dict()}, path)
    loaded = build_backbone("test_resnet", checkpoint=path)
    for (k, a), b in zip(src.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": src.state_dict(), "x": NotWeights()}, evil)
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|not an allowed"):
        build_backbone("test_resnet", checkpoint=evil)
    with pytest.raises(FileNotFoundError, match="head_args.checkpoint"):
        build_backbone("test_resnet", checkpoint=tmp_path / "missing.pth")
    other = tmp_path / "resnet18.pth"
    torch.save(build_backbone("resnet18").state_dict(), other)
    with pytest.raises(ValueError, match="does not fit"):
        build_backbone("test_resnet", checkpoint=other)


def test_unknown_backbone_is_named():
    with pytest.raises(ValueError, match="head_args.backbone: 'resnet_nope'"):
        build_backbone("resnet_nope")


def test_sam_fusion_run_is_deterministic_on_cpu(tmp_path, small_store, small_features):
    from samcache.train import train_run

    method = {
        "head": "sam_slca_projector",
        "init": "random",
        "image_size": 32,
        "head_args": {"backbone": "test_resnet"},
        "train": {"epochs": 2, "lr": 1e-3, "batch_size": 8, "threads": 1},
    }
    kw = dict(
        dataset=small_store.path,
        features=small_features.path,
        task="grade",
        method_name="fused",
        method=method,
        fraction=50,
    )
    a = train_run(**kw, seed=1, out=tmp_path / "a.json")
    b = train_run(**kw, seed=1, out=tmp_path / "b.json")
    assert a["metrics"] == b["metrics"] and a["history"] == b["history"]
    assert np.isfinite(a["metrics"]["test"]["acc"])
    assert a["taps"] == ["patch_embed", "block:1", "block:2", "block:4", "neck"]


@pytest.mark.parametrize("name", ["sam_slca_projector", "sam_sigmoid", "sam_add"])
def test_taps_stored_at_their_stage_grid_give_what_the_native_taps_give(name):
    """Pre-pooled storage (``<tap>@<grid>``) is exact for SAM fusion heads: their local pooling
    onto a stage's grid is the identity on a map stored at that grid (docs/feature-cache.md)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    batch = fake_batch(HEADS[name].requires, gen)
    native = build_head(
        name, n_outputs=N_OUT, input_shapes=shapes_of(batch), **tiny_args(HEADS[name])
    )
    order = list(TAP_SHAPES)
    grids = [s.grid[0] for s in native.backbone.stages]
    pooled_taps, refs = {}, []
    for tap, grid in zip(order, grids, strict=True):
        ref = tap if grid >= TAP_SHAPES[tap][-1] else f"{tap}@{grid}"
        pooled_taps[ref] = (
            batch["taps"][tap] if ref == tap else slap(batch["taps"][tap], (grid, grid))
        )
        refs.append(ref)
    assert any("@" in r for r in refs)
    if native.projector:  # the projector reads the native neck (bilinear, not a pool)
        pooled_taps["neck"] = batch["taps"]["neck"]
    pooled_batch = {**batch, "taps": pooled_taps}
    pooled = build_head(
        name,
        n_outputs=N_OUT,
        input_shapes=shapes_of(pooled_batch),
        stage_taps=refs,
        **({"projector_tap": "neck"} if native.projector else {}),
        **tiny_args(HEADS[name]),
    )
    pooled.load_state_dict(native.state_dict())
    native.eval(), pooled.eval()
    torch.testing.assert_close(pooled(pooled_batch)["logits"], native(batch)["logits"])


@pytest.mark.parametrize(
    "name, args",
    [
        ("sam_slca", {"projector_tap": "neck"}),
        ("sam_add", {"projector_tap": "neck"}),
        ("sam_sigmoid", {"projector_tap": "neck"}),
        ("sam_add", {"reduction": 8}),
        ("sam_add", {"residual": "add"}),
        ("sam_sigmoid", {"reduction": 8}),
        ("sam_slca_projector", {"slap_kernel": 5}),  # only read with slap: window
        ("attnmel_cnn", {"roi_weights": [0.1, 0.1]}),
        ("attnmel_cnn", {"roi_attributes": [0]}),
        ("attnmel_cnn_lesion", {"roi_attributes": [0]}),
        ("attnmel_cnn_bkg", {"roi_attributes": [0]}),
        ("sam_attnmel", {"roi_weights": [0.1, 0.1, 0.1, 0.1]}),
        ("sam_attnmel_lesion", {"roi_attributes": [0]}),
        ("sam_mel", {"attn_channels": 8}),
    ],
)
def test_a_head_refuses_an_argument_it_does_not_use_by_name(name, args):
    cls = HEADS[name]
    batch = fake_batch(cls.requires, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError) as err:
        build_head(name, n_outputs=2, input_shapes=shapes_of(batch), **tiny_args(cls), **args)
    (arg,) = args
    assert arg in str(err.value)
    assert name in str(err.value) or HEADS[name].__name__ in str(err.value)


@pytest.mark.parametrize(
    "name, args",
    [
        ("sam_slca_projector", {"projector_tap": "neck", "reduction": 8, "residual": "add"}),
        ("sam_slca_projector", {"slap": "window", "slap_kernel": 5}),
        ("sam_slca", {"reduction": 8, "residual": "add"}),
        ("sam_sigmoid", {"residual": "add"}),
        ("attnmel_cnn_dermo", {"roi_attributes": [0, 1], "roi_weights": [0.1, 0.1]}),
        ("attnmel_cnn_lesion", {"roi_weights": [0.1, 0.1]}),
    ],
)
def test_arguments_a_head_uses_are_accepted(name, args):
    cls = HEADS[name]
    batch = fake_batch(cls.requires, torch.Generator().manual_seed(0))
    build_head(name, n_outputs=2, input_shapes=shapes_of(batch), **tiny_args(cls), **args)
