from pathlib import Path

from snakemake.common.configfile import load_configfile

# samcache: frozen SAM features and SLIC superpixels computed once, many heads trained on top.
#
#   snakemake --cores all                                  # every table in `targets`
#   snakemake --cores all results/tables/<name>.md         # one table and only the runs it needs
#   snakemake -n results/tables/<name>.md                  # show the plan
#   snakemake --cores all all_tables                       # every table (config `all_tables`)
#   snakemake --cores all --configfile workflow/config/demo.yaml       # the embedded demo (standalone)


# config.yaml (the paper) is the base config, unless a --configfile says `standalone: true` (the
# demo's): a complete config that config.yaml must not be merged under. Unlike
# --replace-workflow-config, which Snakemake does not pass on to the jobs it submits to a
# cluster, this holds in every process.
if not any(
    (load_configfile(f) or {}).get("standalone") for f in workflow.overwrite_configfiles
):

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
        lambda w: get_final_output(),


rule caches:
    """Only the feature, SAM-prior and superpixel caches the target tables need (the GPU part)."""
    input:
        lambda w: get_cache_outputs(),
