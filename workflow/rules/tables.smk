rule table:
    """A paper-shaped table (Markdown, CSV, per-run provenance) and its plot from run records."""
    input:
        lambda w: table_records(w.table),
    output:
        md=report(
            "results/tables/{table}.md",
            caption="../report/table.rst",
            category="Tables",
        ),
        csv="results/tables/{table}.csv",
        runs="results/tables/{table}.runs.csv",
        plot=report(
            "results/tables/{table}.png",
            caption="../report/table_plot.rst",
            category="Plots",
        ),
    log:
        "logs/table/{table}.log",
    localrule: True
    conda:
        "../../envs/train.yaml"
    params:
        spec=lambda w: json.dumps(
            {"name": w.table, **table_cfg(w.table)}, sort_keys=True
        ),
    shell:
        "python -m samcache table --spec {params.spec:q} --md {output.md} --csv {output.csv} "
        "--runs-csv {output.runs} --plot {output.plot} {input} > {log} 2>&1"
