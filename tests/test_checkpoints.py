"""Checkpoints: download from a (loopback) URL, verify, load, and match SamPredictor at 1024 px."""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor, sam_model_registry

from samcache.cli import main
from samcache.data.store import write_dataset_store
from samcache.download import ChecksumError
from samcache.features.checkpoints import checkpoint_path, fetch_checkpoint, official_checkpoint
from samcache.features.extract import extract_features
from samcache.features.specs import feature_set_from_config
from samcache.features.store import FeatureStore

from loopback import Loopback


class _Stop(Exception):
    pass


@pytest.fixture(scope="module")
def served_vit_b(tmp_path_factory):
    """A random-weight SAM ViT-B saved exactly as the official checkpoints are (a state dict)."""
    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"]().eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # trained relative-position tables are not zero; make these not zero
        for name, p in sam.named_parameters():
            if "rel_pos" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    root = tmp_path_factory.mktemp("srv")
    ckpt = root / "sam_vit_b_test.pth"
    torch.save(sam.state_dict(), ckpt)
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    with Loopback(root) as server:
        yield sam, server, ckpt.name, sha, ckpt.stat().st_size


def test_downloaded_checkpoint_gives_sam_predictor_features_at_1024px(tmp_path, served_vit_b):
    sam, server, name, sha, size = served_vit_b
    folder = tmp_path / "checkpoints"
    url = server.url(name)
    path = fetch_checkpoint("vit_b", folder, url=url, sha256=sha, size=size, progress=False)
    assert path == folder / name
    n_requests = len(server.requests)
    assert fetch_checkpoint("vit_b", folder, url=url, sha256=sha, progress=False) == path
    assert len(server.requests) == n_requests  # already there and verified: no download

    # One non-square image: resized to 614 x 1024 by ResizeLongestSide, then padded.
    image = np.random.default_rng(0).integers(0, 256, (120, 200, 3), dtype=np.uint8)
    store = write_dataset_store(
        tmp_path / "one.zarr",
        name="one",
        source="test",
        images=image[None],
        split=np.zeros(1),
        labels={"t": np.zeros(1, dtype=np.int64)},
        tasks={"t": {"type": "binary", "classes": ["a", "b"]}},
    )
    taps = ["patch_embed", "block:1"]  # the forward pass stops after block 1: cheap on a CPU
    fset = feature_set_from_config(
        {"encoder": "vit_b", "weights": str(path), "taps": taps, "dtype": "float32"}, "one:1"
    )
    fs = extract_features(
        store.path,
        tmp_path / "f.zarr",
        fset,
        checkpoint=path,
        batch_size=1,
        device="cpu",
        attention="sdpa",  # the fused path at full size; test_attention compares the two paths
        progress=False,
    )

    # Reference: SamPredictor.set_image itself, stopped by a hook once block 1 has run.
    recorded = {}

    def record(name, stop):
        def hook(_module, _inputs, output):
            recorded[name] = output.permute(0, 3, 1, 2)[0].numpy()
            if stop:
                raise _Stop

        return hook

    enc = sam.image_encoder
    enc.patch_embed.register_forward_hook(record("patch_embed", False))
    enc.blocks[0].register_forward_hook(record("block:1", True))
    with pytest.raises(_Stop):
        SamPredictor(sam).set_image(image)
    for tap in taps:
        got = fs.read(tap, np.array([0]))[0]
        np.testing.assert_allclose(got, recorded[tap], rtol=1e-4, atol=1e-4, err_msg=tap)


def test_checkpoint_command_downloads_and_says_where_it_came_from(tmp_path, caplog):
    root = tmp_path / "srv"
    root.mkdir()
    (root / "ckpt.pth").write_bytes(b"weights" * 1000)
    sha = hashlib.sha256((root / "ckpt.pth").read_bytes()).hexdigest()
    with Loopback(root) as server, caplog.at_level(logging.WARNING):
        args = ["checkpoint", "--encoder", "vit_b", "--dir", str(tmp_path / "c"), "--no-progress"]
        assert main([*args, "--url", server.url("ckpt.pth"), "--sha256", sha]) == 0
        assert main([*args, "--url", server.url("ckpt.pth")]) == 1  # no checksum: refused
    assert (tmp_path / "c" / "ckpt.pth").read_bytes() == b"weights" * 1000
    assert any("instead of the official source" in r.getMessage() for r in caplog.records)
    assert any("needs its sha256" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("encoder", ["vit_b", "vit_l", "vit_h"])
def test_official_checkpoints_are_the_published_files(encoder):
    remote = official_checkpoint(encoder)
    assert remote.url.startswith("https://dl.fbaipublicfiles.com/segment_anything/sam_vit_")
    assert remote.filename in remote.url and len(remote.sha256) == 64 and remote.size > 3e8
    assert checkpoint_path(encoder).as_posix() == f"checkpoints/{remote.filename}"


def test_a_wrong_file_placed_by_hand_is_reported_not_loaded(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / official_checkpoint("vit_b").filename).write_bytes(b"not a checkpoint")
    with pytest.raises(Exception, match="delete it"):
        fetch_checkpoint("vit_b", folder, progress=False)


def test_extraction_loads_only_the_weights_its_cache_key_names(tmp_path, small_store):
    official = feature_set_from_config({"encoder": "vit_b", "taps": ["neck"]}, "small")
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    wrong = folder / official_checkpoint("vit_b").filename
    wrong.write_bytes(b"not the published file")
    out = tmp_path / "f.zarr"
    with pytest.raises(ChecksumError):
        extract_features(small_store.path, out, official, checkpoint_dir=folder, progress=False)
    with pytest.raises(ChecksumError):
        extract_features(small_store.path, out, official, checkpoint=wrong, progress=False)
    assert not FeatureStore(out, allow_incomplete=True).group["complete"][:].any()
    random = feature_set_from_config(
        {"encoder": "vit_b", "weights": "random", "taps": ["neck"]}, "s"
    )
    with pytest.raises(ValueError, match="random"):
        extract_features(small_store.path, tmp_path / "r.zarr", random, checkpoint=wrong)
    with pytest.raises(ValueError, match="seed"):
        extract_features(small_store.path, tmp_path / "r.zarr", random, seed=3)
    assert not (tmp_path / "r.zarr").exists()  # refused before anything was written
