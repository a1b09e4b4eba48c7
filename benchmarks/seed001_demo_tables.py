"""Time seed 001's demo tables, each built from scratch the way a user asks for it.

For every table target (default: demo_seed001_table1..3) a fresh working directory is made and
``snakemake --cores N results/tables/<table>.md --configfile workflow/config/demo.yaml`` runs in
it: dataset store, feature cache and every run the table needs. Printed and written to
``benchmarks/results/seed001_demo_tables.json``: wall time, CPU seconds of all jobs (user +
system), their ratio to N cores (the wall time the same work takes on an otherwise idle machine)
and the load average before and after, since other processes on a shared machine stretch the
wall time but not the CPU time.

    python benchmarks/seed001_demo_tables.py [--cores 2] [--tables demo_seed001_table2 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TABLES = ["demo_seed001_table1", "demo_seed001_table2", "demo_seed001_table3"]


def build(table: str, cores: int, workdir: Path) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{REPO / 'src'}{os.pathsep}{env.get('PYTHONPATH', '')}"
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(workdir),
        "--configfile",
        str(REPO / "workflow" / "config" / "demo.yaml"),
        "--cores",
        str(cores),
        f"results/tables/{table}.md",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        raise SystemExit(f"{table} failed:\n{res.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    n_runs = len(list((workdir / "results" / "runs").rglob("*.json")))
    return {
        "table": table,
        "runs": n_runs,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "idle_machine_estimate_s": round(cpu / cores, 1),
        "load_avg_before": round(load0, 2),
        "load_avg_after": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--tables", nargs="+", default=TABLES)
    p.add_argument(
        "--out", default=str(REPO / "benchmarks" / "results" / "seed001_demo_tables.json")
    )
    a = p.parse_args()
    results = []
    for table in a.tables:
        with tempfile.TemporaryDirectory(prefix="samcache-bench-") as tmp:
            r = build(table, a.cores, Path(tmp))
        results.append(r)
        print(
            f"{r['table']}: {r['runs']} runs, wall {r['wall_s'] / 60:.1f} min, CPU {r['cpu_s']:.0f} s "
            f"(= {r['idle_machine_estimate_s'] / 60:.1f} min on {a.cores} idle cores), "
            f"load average {r['load_avg_before']} -> {r['load_avg_after']}",
            flush=True,
        )
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "cores": a.cores,
                "cpu_count": os.cpu_count(),
                "platform": platform.platform(),
                "results": results,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
