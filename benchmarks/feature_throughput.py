"""Feature-extraction throughput: samcache's pipeline against SamPredictor, side by side.

    python benchmarks/feature_throughput.py --encoder vit_b --device cpu --images 4 --baseline-images 2
    python benchmarks/feature_throughput.py --encoder vit_h --device cuda --images 256 \
        --baseline-images 32 --batch-size 16 --compute-dtype bfloat16

Both contenders run in this process, on the same device, on the same images (random RGB, 768 x
1024 like a dermoscope's, resized by SAM to 768 x 1024 -> 1024 x 1024 padded), with the same
weights (random unless --checkpoint: speed does not depend on their values):

* **baseline**: the naive loop, one image at a time through ``SamPredictor.set_image`` in
  float32, features copied to host memory (nothing stored);
* **samcache**: ``run_pipeline`` as ``samcache features`` runs it: batches under
  ``torch.inference_mode`` and autocast, the attention path the exactness check picks, loading
  and Zarr writing (Blosc-zstd) overlapped with compute, taps stored on disk.

Reported: images/s of each, their ratio (the headline), achieved TFLOP/s with FLOPs counted by
``torch.utils.flop_counter`` on the path actually run, model-FLOP utilisation against the dense
matmul rate measured here (and against the data-sheet peak when known or given), and the
seconds each pipeline stage was busy (their sum over the wall time shows the overlap). Results
go to a JSON file under benchmarks/out/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from segment_anything import SamPredictor
from torch.utils.flop_counter import FlopCounterMode

from samcache.data.store import write_dataset_store
from samcache.device import resolve_device
from samcache.features.attention import use_sdpa
from samcache.features.cost import encoder_flops, matmul_tflops
from samcache.features.encoders import build_encoder, sam_around
from samcache.features.extract import no_tf32_for_float32, open_or_create_cache
from samcache.features.pipeline import autocast_factory, choose_attention, run_pipeline
from samcache.features.preprocess import SamPreprocess
from samcache.features.specs import encoder_spec, feature_set_from_config
from samcache.features.taps import TapRecorder
from samcache.zarrio import ItemLedger

#: Dense tensor-core peaks from the vendors' data sheets (TFLOP/s, no sparsity).
DATASHEET_TFLOPS = {
    ("H100", "bfloat16"): 989.0,  # SXM; the PCIe card is 756
    ("H100", "float16"): 989.0,
    ("H100", "float32"): 67.0,
    ("H200", "bfloat16"): 989.0,
    ("H200", "float16"): 989.0,
    ("H200", "float32"): 67.0,
    ("A100", "bfloat16"): 312.0,
    ("A100", "float16"): 312.0,
    ("A100", "float32"): 19.5,
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def counted_flops(name: str, taps: list[str]) -> int:
    """FLOPs of one image through the tapped part of the encoder (meta tensors: no compute)."""
    spec = encoder_spec(name)
    fset = feature_set_from_config({"encoder": name, "weights": "random", "taps": taps}, "x")
    with torch.device("meta"):
        recorder = TapRecorder(build_encoder(name), fset.taps)
        with FlopCounterMode(display=False) as counter:
            recorder(torch.zeros(1, 3, spec.img_size, spec.img_size))
    return counter.get_total_flops()


class Baseline:
    """SamPredictor.set_image, one image at a time, float32, features copied to the host."""

    def __init__(self, encoder: torch.nn.Module, name: str, device: torch.device) -> None:
        self.predictor = SamPredictor(sam_around(encoder, name).to(device))
        self.device = device

    def seconds(self, images: np.ndarray) -> float:
        synchronize(self.device)
        start = time.perf_counter()
        encoder = self.predictor.model.image_encoder  # shared with the pipeline: its own path
        with no_tf32_for_float32(self.device, "float32"), use_sdpa(encoder, False):
            for img in images:
                self.predictor.set_image(img)
                self.predictor.features.cpu().numpy()
        synchronize(self.device)
        return time.perf_counter() - start


class Pipeline:
    """samcache's extraction loop into a real cache, batch by batch."""

    def __init__(self, args, encoder, store, device: torch.device, workdir: Path) -> None:
        cfg = {
            "encoder": args.encoder,
            "weights": "random",
            "taps": args.taps,
            "compute_dtype": args.compute_dtype,
        }
        self.fset = feature_set_from_config(cfg, "benchmark")
        self.g = open_or_create_cache(workdir / "features.zarr", self.fset, store, args.batch_size)
        self.ledger = ItemLedger(self.g, store.n_items, int(self.g.attrs["items_per_shard"]))
        self.store, self.encoder, self.device = store, encoder, device
        self.busy: dict[str, float] = {}
        self.attention, self.check_s = args.attention, 0.0
        if self.attention == "auto":  # timed apart: a one-off cost per cache
            pre = SamPreprocess(self.fset.spec)
            x = pre.to_input(torch.from_numpy(pre.resize(np.asarray(store.images[:1]))), device)
            autocast = autocast_factory(device, args.compute_dtype)
            t0 = time.perf_counter()
            with no_tf32_for_float32(device, args.compute_dtype):
                self.attention = choose_attention(TapRecorder(encoder, self.fset.taps), x, autocast)
            self.check_s = time.perf_counter() - t0

    def seconds(self, batches: list[tuple[int, int]], count: bool = True) -> float:
        busy: dict[str, float] = {}
        synchronize(self.device)
        start = time.perf_counter()
        with no_tf32_for_float32(self.device, self.fset.compute_dtype):
            run_pipeline(
                self.store,
                self.g,
                self.ledger,
                self.fset,
                self.encoder,
                batches,
                self.device,
                attention=self.attention,
                progress=False,
                busy=busy,
            )
        synchronize(self.device)
        if count:
            for k, v in busy.items():
                self.busy[k] = self.busy.get(k, 0.0) + v
        return time.perf_counter() - start


def interleaved(baseline: Baseline, pipeline: Pipeline, args, images: np.ndarray) -> dict:
    """Alternate the two contenders in rounds, so that a change of load on a shared machine
    hits both alike; the ratio is taken over all rounds, and per round."""
    bs = args.batch_size
    batches = [
        (a, min(a + bs, pipeline.store.n_items)) for a in range(0, pipeline.store.n_items, bs)
    ]
    warm, timed = batches[: args.warmup_batches], batches[args.warmup_batches :]
    args.rounds = max(1, min(args.rounds, args.baseline_images, len(timed)))
    baseline.seconds(images[:1])
    pipeline.seconds(warm, count=False)
    base_groups = np.array_split(np.arange(1, args.baseline_images + 1), args.rounds)
    pipe_groups = np.array_split(np.arange(len(timed)), args.rounds)
    rounds = []
    for r in range(args.rounds):
        ours = [timed[i] for i in pipe_groups[r]]
        theirs = images[base_groups[r]]
        took = {}
        for contender in ("baseline", "samcache") if r % 2 == 0 else ("samcache", "baseline"):
            if contender == "baseline":
                took[contender] = baseline.seconds(theirs)
            else:
                took[contender] = pipeline.seconds(ours)
        n_ours = sum(b - a for a, b in ours)
        rounds.append(
            {
                "baseline_images": len(theirs),
                "baseline_s": took["baseline"],
                "samcache_images": n_ours,
                "samcache_s": took["samcache"],
                "speedup": (n_ours / took["samcache"]) / (len(theirs) / took["baseline"]),
            }
        )
    total = {k: sum(r[k] for r in rounds) for k in rounds[0] if k != "speedup"}
    wall = total["samcache_s"]
    return {
        "baseline_images_per_s": total["baseline_images"] / total["baseline_s"],
        "samcache": {
            "images_per_s": total["samcache_images"] / wall,
            "images": total["samcache_images"],
            "wall_s": wall,
            "attention": pipeline.attention,
            "attention_check_s": pipeline.check_s,
            "busy_s": pipeline.busy,
            "overlap": sum(pipeline.busy.values()) / wall,
            "stored_bytes_per_image": _disk_bytes(pipeline.g.store.root) / pipeline.store.n_items,
        },
        "rounds": rounds,
    }


def _disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def datasheet_peak(device: torch.device, dtype: str, given: float | None) -> float | None:
    if given:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next(
        (v for (gpu, dt), v in DATASHEET_TFLOPS.items() if gpu in name and dt == dtype), None
    )


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoder", default="vit_b")
    p.add_argument("--device", default="auto")
    p.add_argument("--images", type=int, default=8, help="images timed in the samcache pipeline")
    p.add_argument("--baseline-images", type=int, default=2, help="images timed in the baseline")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--warmup-batches", type=int, default=1, help="untimed batches first")
    p.add_argument("--rounds", type=int, default=2, help="alternations of the two contenders")
    p.add_argument("--compute-dtype", help="default: bfloat16 on CUDA, float32 elsewhere")
    p.add_argument("--attention", default="auto", choices=["auto", "sdpa", "original"])
    p.add_argument("--taps", nargs="+", default=["neck"], help="taps stored by the pipeline")
    p.add_argument("--image-size", type=int, nargs=2, default=[768, 1024], metavar=("H", "W"))
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--peak-tflops", type=float, help="data-sheet peak for the MFU column")
    p.add_argument("--out", help="results JSON (default benchmarks/out/feature_throughput-*.json)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    args.compute_dtype = args.compute_dtype or ("bfloat16" if device.type == "cuda" else "float32")
    name = args.encoder
    spec = encoder_spec(name)
    load_before = os.getloadavg()

    n_store = args.images + args.warmup_batches * args.batch_size
    rng = np.random.default_rng(0)
    images = rng.integers(
        0, 256, (max(n_store, args.baseline_images + 1), *args.image_size, 3), dtype=np.uint8
    )
    encoder = build_encoder(name, seed=0).to(device)
    with tempfile.TemporaryDirectory(prefix="samcache-bench-") as tmp:
        store = write_dataset_store(
            Path(tmp) / "images.zarr",
            name="benchmark",
            source="random",
            images=images[:n_store],
            split=np.zeros(n_store),
            labels={"none": np.zeros(n_store, dtype=np.int64)},
            tasks={"none": {"type": "binary", "classes": ["a", "b"]}},
        )
        pipeline = Pipeline(args, encoder, store, device, Path(tmp))
        measured = interleaved(Baseline(encoder, name, device), pipeline, args, images)
    ours, baseline = measured["samcache"], measured["baseline_images_per_s"]

    flops_ours = counted_flops(name, args.taps)
    flops_baseline = counted_flops(name, ["neck"])
    assert flops_baseline == encoder_flops(spec)
    measured_peak = matmul_tflops(device, getattr(torch, args.compute_dtype))
    sheet = datasheet_peak(device, args.compute_dtype, args.peak_tflops)
    achieved = flops_ours * ours["images_per_s"] / 1e12
    achieved_baseline = flops_baseline * baseline / 1e12
    result = {
        "encoder": name,
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "device_type": device.type,
        "torch_threads": torch.get_num_threads(),
        "load_average_before_after": [load_before[0], os.getloadavg()[0]],
        "compute_dtype": args.compute_dtype,
        "batch_size": args.batch_size,
        "taps": args.taps,
        "image_size": args.image_size,
        "gflop_per_image": flops_ours / 1e9,
        "baseline_images_per_s": baseline,
        "baseline_tflops": achieved_baseline,
        "samcache": ours,
        "samcache_tflops": achieved,
        "speedup": ours["images_per_s"] / baseline,
        "speedup_per_round": [r["speedup"] for r in measured["rounds"]],
        "rounds": measured["rounds"],
        "measured_matmul_tflops": measured_peak,
        "mfu_vs_measured_matmul": achieved / measured_peak,
        "datasheet_tflops": sheet,
        "mfu_vs_datasheet": achieved / sheet if sheet else None,
        "torch": torch.__version__,
    }
    _print(result)
    out = Path(args.out or f"benchmarks/out/feature_throughput-{name}-{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"results: {out}")
    return result


def _print(r: dict) -> None:
    s = r["samcache"]
    rows = [
        ("encoder / device", f"{r['encoder']} on {r['device']} ({r['torch_threads']} threads)"),
        ("FLOPs per image", f"{r['gflop_per_image']:.1f} GFLOP"),
        (
            "baseline (SamPredictor, fp32, 1 image)",
            f"{r['baseline_images_per_s']:.3f} img/s, {r['baseline_tflops']:.3f} TFLOP/s",
        ),
        (
            f"samcache ({r['compute_dtype']}, batch {r['batch_size']}, {s['attention']})",
            f"{s['images_per_s']:.3f} img/s, {r['samcache_tflops']:.3f} TFLOP/s",
        ),
        (
            "speed-up",
            f"{r['speedup']:.2f}x (per round: "
            + ", ".join(f"{x:.2f}" for x in r["speedup_per_round"])
            + ")",
        ),
        (
            "MFU vs measured matmul",
            f"{r['mfu_vs_measured_matmul']:.1%} of {r['measured_matmul_tflops']:.3f} TFLOP/s",
        ),
        (
            "MFU vs data sheet",
            f"{r['mfu_vs_datasheet']:.1%}" if r["mfu_vs_datasheet"] else "n/a (give --peak-tflops)",
        ),
        (
            "stage busy s (load/encode/write)",
            "/".join(f"{s['busy_s'][k]:.1f}" for k in ("load", "encode", "write"))
            + f" over {s['wall_s']:.1f} s wall: overlap {s['overlap']:.2f}",
        ),
        ("stored bytes per image", f"{s['stored_bytes_per_image'] / 2**20:.2f} MiB"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
