"""Wall and CPU time of the demo's tables, built from nothing the way a user asks for them.

Runs ``snakemake --cores N <targets>`` on the demo config (standalone: no config.yaml) in a
fresh working directory: dataset store, caches, every run the targets need, the tables. The
default target is ``all_tables`` (what ``make demo-tables`` builds). Prints and writes to
``benchmarks/out/demo_tables.json``: the wall time, the CPU seconds of all jobs (user + system,
from the kernel's accounting of child processes), that CPU total divided by N (the wall time of
the same work on an otherwise idle machine, since the jobs are independent apart from the
caches), the load average before and after, and the jobs' wall and CPU seconds by rule and, for
training runs, by method (from Snakemake's per-job benchmark files). Other processes on a shared
machine stretch the wall time but not the CPU time: quote both.

``--compare`` builds the same targets twice, each from an empty directory, in this one
invocation: once as configured (many runs per process, ``sweep.runs_per_job``) and once with one
process per run (``sweep.runs_per_job: 1``); it reports both, their ratio, and whether every
cell of every table is the same.

    python benchmarks/demo_tables.py [--cores 2] [--targets all_tables] [--workdir DIR]
    python benchmarks/demo_tables.py --compare [--cores 2]
    python benchmarks/demo_tables.py --summarise DIR   # job figures of a finished working dir
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def snakemake_cmd(
    workdir: Path, cores: int, targets: list[str], overlays: tuple[Path, ...] = ()
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(workdir),
        "--configfile",
        str(REPO / "workflow/config/demo.yaml"),
        *map(str, overlays),
        "--cores",
        str(cores),
        *targets,
    ]


def job_figures(workdir: Path) -> dict:
    """Wall and CPU seconds of the finished jobs, by rule (training runs: by method)."""
    wall: dict[str, float] = defaultdict(float)
    cpu: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    logs = workdir / "logs"
    for bench in logs.rglob("*.bench.tsv"):
        row = next(csv.DictReader(bench.open(), delimiter="\t"))
        parts = bench.relative_to(logs).parts
        kind = f"train:{parts[3]}" if parts[0] == "train" else parts[0]
        wall[kind] += float(row["s"])
        cpu[kind] += float(row["cpu_time"])
        count[kind] += 1
    return {
        "job_count": dict(sorted(count.items())),
        "job_wall_s": {k: round(v, 1) for k, v in sorted(wall.items())},
        "job_cpu_s": {k: round(v, 1) for k, v in sorted(cpu.items())},
        "runs": len(list((workdir / "results/runs").glob("*/*/*/f*_s*.json"))),
        "tables": sorted(p.stem for p in (workdir / "results/tables").glob("*.md")),
    }


def build(workdir: Path, cores: int, targets: list[str], overlays: tuple[Path, ...] = ()) -> dict:
    """Build ``targets`` in ``workdir`` and measure it (raises if Snakemake fails)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    load_before = os.getloadavg()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(
        snakemake_cmd(workdir, cores, targets, overlays), capture_output=True, text=True, env=env
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        print(res.stderr[-4000:], file=sys.stderr)
        raise SystemExit(res.returncode)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "targets": targets,
        "config_overlays": {str(p): p.read_text() for p in overlays},
        "cores": cores,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "idle_machine_estimate_s": round(cpu / cores, 1),
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "peak_rss_mb_of_one_job": round(after.ru_maxrss / 1024, 1),
        **job_figures(workdir),
        "workdir": str(workdir),
    }


def table_cells(workdir: Path) -> dict[str, list]:
    """Every table's CSV, cell by cell."""
    out = {}
    for path in sorted((workdir / "results/tables").glob("*.csv")):
        if not path.name.endswith(".runs.csv"):
            with path.open() as fh:
                out[path.stem] = list(csv.reader(fh))
    return out


def summary(f: dict) -> str:
    return (
        f"{f['runs']} runs, {len(f['tables'])} tables: wall {f['wall_s'] / 60:.1f} min, "
        f"CPU {f['cpu_s'] / 60:.1f} min (= {f['idle_machine_estimate_s'] / 60:.1f} min on "
        f"{f['cores']} idle cores)"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--targets", nargs="+", default=["all_tables"])
    ap.add_argument("--workdir", type=Path, help="working directory (default: a new temporary one)")
    ap.add_argument("--summarise", type=Path, help="only report the jobs of this working directory")
    ap.add_argument(
        "--compare",
        action="store_true",
        help="also build from scratch with one process per run, and compare",
    )
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/out/demo_tables.json")
    a = ap.parse_args()
    if a.summarise:
        print(json.dumps(job_figures(a.summarise), indent=1))
        return 0
    work = a.workdir or Path(tempfile.mkdtemp(prefix="samcache-demo-tables-"))
    batched = build(work / "batched" if a.compare else work, a.cores, a.targets)
    print(summary(batched))
    figures = batched
    if a.compare:
        overlay = work / "one_process_per_run.yaml"
        overlay.write_text("sweep:\n  runs_per_job: 1\n")
        single = build(work / "one_per_run", a.cores, a.targets, (overlay,))
        print("one process per run: " + summary(single))
        same = table_cells(work / "batched") == table_cells(work / "one_per_run")
        figures = {
            "batched": batched,
            "one_process_per_run": single,
            "speedup_wall": round(single["wall_s"] / batched["wall_s"], 2),
            "speedup_cpu": round(single["cpu_s"] / batched["cpu_s"], 2),
            "same_table_cells": same,
        }
        print(
            f"batched is {figures['speedup_wall']}x faster in wall time, "
            f"{figures['speedup_cpu']}x in CPU time; same table cells: {same}"
        )
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
