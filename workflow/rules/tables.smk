rule table:
    """A paper-shaped table (Markdown, LaTeX, CSV, per-run provenance) and its plot."""
    input:
        lambda w: table_inputs(w.table),
    output:
        md=report(
            "results/tables/{table}.md",
            caption="../report/table.rst",
            category="Tables",
        ),
        tex="results/tables/{table}.tex",
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
        stale=lambda w: table_plan_marker(w.table),
    shell:
        "python -m samcache table --spec {params.spec:q} --md {output.md} --tex {output.tex} "
        "--csv {output.csv} --runs-csv {output.runs} --plot {output.plot} {input} > {log} 2>&1"


rule all_tables:
    """Every table the configuration's `all_tables` names (all tables when it is empty)."""
    input:
        lambda w: expand("results/tables/{table}.md", table=all_table_names()),
    localrule: True
