"""Wall time of seed 000's demo tables (Gu et al. Tables I-IV) built from nothing.

Runs ``snakemake --cores N`` on the demo overlay for the four ``demo_gu_table*`` targets in a
fresh working directory (dataset, feature cache, SAM prior cache, every run, every table), then
prints the total wall time, the machine's load average, and the wall and CPU seconds of the jobs
by kind (from Snakemake's per-job benchmark files). The CPU total does not depend on what else
the machine runs; the wall time does. Figures go to benchmarks/out/demo_tables_000.json.

    python benchmarks/demo_tables_000.py [--cores 2] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TABLES = [f"results/tables/demo_gu_table{i}.md" for i in (1, 2, 3, 4)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None)
    a = ap.parse_args()
    work = a.workdir or Path(tempfile.mkdtemp(prefix="demo000-"))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(work),
        "--configfile",
        str(REPO / "workflow/config/demo.yaml"),
        "--cores",
        str(a.cores),
        *TABLES,
    ]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        print(res.stderr[-4000:], file=sys.stderr)
        return res.returncode
    wall_by_kind: dict[str, float] = defaultdict(float)
    cpu_by_kind: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for bench in (work / "logs").rglob("*.bench.tsv"):
        row = next(csv.DictReader(bench.open(), delimiter="\t"))
        rule = bench.relative_to(work / "logs").parts[0]
        kind = rule
        if rule == "train":  # by head: the run's method names it
            method = bench.relative_to(work / "logs").parts[3]
            kind = f"train:{method}"
        wall_by_kind[kind] += float(row["s"])
        cpu_by_kind[kind] += float(row["cpu_time"])
        counts[kind] += 1
    figures = {
        "cores": a.cores,
        "wall_s": round(wall, 1),
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "cpu_s_total": round(sum(cpu_by_kind.values()), 1),
        "job_wall_s": {k: round(v, 1) for k, v in sorted(wall_by_kind.items())},
        "job_cpu_s": {k: round(v, 1) for k, v in sorted(cpu_by_kind.items())},
        "job_counts": dict(sorted(counts.items())),
        "workdir": str(work),
    }
    print(json.dumps(figures, indent=1))
    out = REPO / "benchmarks/out/demo_tables_000.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
