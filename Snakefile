from pathlib import Path

# samcache: frozen SAM features and SLIC superpixels computed once, many heads trained on top.
#
#   snakemake --cores all                                  # every table in `targets`
#   snakemake --cores all results/tables/<name>.md         # one table and only the runs it needs
#   snakemake -n results/tables/<name>.md                  # show the plan
#   snakemake --cores all all_tables                       # every table (config `all_tables`)
#   snakemake --cores all --configfile workflow/config/demo.yaml --replace-workflow-config   # the embedded demo


def standalone_config_given():
    """Whether a --configfile says `standalone: true`: a complete config (the demo's) that
    config.yaml must not be merged under. Unlike --replace-workflow-config, which Snakemake does
    not pass on to the jobs it submits to a cluster, this holds in every process."""
    from snakemake.common.configfile import load_configfile

    return any(
        (load_configfile(f) or {}).get("standalone")
        for f in workflow.overwrite_configfiles
    )


if not standalone_config_given():

    configfile: Path(workflow.basedir) / "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/datasets.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/superpixels.smk"
include: "workflow/rules/sam_prior.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/tables.smk"


onsuccess:
    tidy_staged("results/runs")


rule all:
    default_target: True
    input:
        get_final_output(),


rule caches:
    """Only the feature, SAM-prior and superpixel caches the target tables need (the GPU part)."""
    input:
        get_cache_outputs(),
