rule table:
    """A paper-shaped table (Markdown, LaTeX, CSV, HTML, per-run provenance), the paired
    comparisons of rows with their baseline rows, and its plot; a dataset_statistics table
    is counted from its blocks' dataset stores instead of run records."""
    input:
        lambda w: table_inputs(w.table),
    output:
        md="results/tables/{table}.md",
        html=report(
            "results/tables/{table}.html",
            caption="../report/table.rst",
            category="Tables",
            labels=lambda w: {"table": w.table},
        ),
        tex="results/tables/{table}.tex",
        csv="results/tables/{table}.csv",
        runs="results/tables/{table}.runs.csv",
        compare="results/tables/{table}.compare.csv",
        plot=report(
            "results/tables/{table}.png",
            caption="../report/table_plot.rst",
            category="Plots",
            labels=lambda w: {"table": w.table},
        ),
    log:
        "logs/table/{table}.log",
    localrule: True
    conda:
        "../../envs/train.yaml"
    params:
        spec=lambda w: json.dumps(table_spec(w.table), sort_keys=True),
        stale=lambda w: table_plan_marker(w.table),
    shell:
        "python -m samcache table --spec {params.spec:q} --md {output.md} --tex {output.tex} "
        "--csv {output.csv} --runs-csv {output.runs} --compare-csv {output.compare} "
        "--html {output.html} --plot {output.plot} {input} > {log} 2>&1"


rule gallery:
    """Attention maps, predicted masks and SAMAug-C priors of a table's runs, as images (an
    empty folder for a table whose heads give none)."""
    input:
        records=lambda w: gallery_records(w.table),
        stores=lambda w: table_stores(w.table),
    output:
        report(
            directory("results/galleries/{table}"),
            patterns=["{name}.jpg"],
            caption="../report/gallery.rst",
            category="Galleries",
            labels=lambda w: {"table": w.table, "gallery": "{name}"},
        ),
    log:
        "logs/gallery/{table}.log",
    localrule: True
    conda:
        "../../envs/train.yaml"
    params:
        spec=lambda w: json.dumps(
            {"name": w.table, **table_cfg(w.table)}, sort_keys=True
        ),
    shell:
        "python -m samcache gallery --spec {params.spec:q} --out {output} "
        "{input.records} > {log} 2>&1"


rule all_tables:
    """Every table the configuration's `all_tables` names (all tables when it is empty)."""
    input:
        lambda w: expand("results/tables/{table}.md", table=all_table_names()),
    localrule: True


rule all_galleries:
    """The galleries of those tables (statistics tables have none): what `snakemake --report`
    shows beside them."""
    input:
        lambda w: expand(
            "results/galleries/{table}", table=run_table_names(all_table_names())
        ),
    localrule: True
