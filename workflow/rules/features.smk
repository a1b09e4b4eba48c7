rule sam_checkpoint:
    """An official SAM checkpoint, downloaded once from its official URL, SHA-256 verified.

    A checkpoint placed by hand at checkpoints/<file name> (an offline machine) already is this
    rule's output, so nothing is downloaded; the features job verifies it before loading it.
    Runs on the submitting host, where a cluster has network access.
    """
    output:
        "checkpoints/{checkpoint}",
    log:
        "logs/checkpoint/{checkpoint}.log",
    localrule: True
    conda:
        "../../envs/features.yaml"
    params:
        encoder=lambda w: checkpoint_encoder(w.checkpoint),
    shell:
        "python -m samcache checkpoint --encoder {params.encoder} --dir checkpoints "
        "--no-progress > {log} 2>&1"


rule features:
    """Frozen SAM encoder features for every image of a dataset, computed once and resumable.

    The output is a small manifest; the Zarr store beside it is left in place when a job fails or
    is interrupted, so the next attempt resumes instead of starting over. The rerun trigger is
    the cache key (in the path) and the value-changing settings (params.spec); batch size and
    device only change speed, so they are passed as a derived parameter, which Snakemake does not
    compare: tuning them never reruns the cache or the runs that read it.
    """
    input:
        store=lambda w: dataset_store(w.dataset),
        checkpoint=lambda w: feature_checkpoint(w.fset),
    output:
        manifest="cache/features/{dataset}/{fset}-{key}/manifest.json",
    log:
        "logs/features/{dataset}/{fset}-{key}.log",
    benchmark:
        "logs/features/{dataset}/{fset}-{key}.bench.tsv"
    # a cache unblocks every run that reads it: start it before work that can wait, and the
    # feature cache (most heads read it) before the other caches. Snakemake starts the set of
    # jobs with the largest sum of priorities, and this job takes several cores: its priority
    # must beat any few jobs that would fit in them together (a prior map job and a batch)
    priority: 10 * CACHE_PRIORITY
    conda:
        "../../envs/features.yaml"
    threads: 4
    resources:
        gpu=1,
        gpu_slot=lambda w: gpu_slots(),
    params:
        store=lambda w, output: str(Path(output.manifest).parent / "features.zarr"),
        spec=lambda w: json.dumps(feature_cache_settings(w.fset), sort_keys=True),
        execution=lambda w, threads: feature_execution_args(w.fset),
        dataset_id=lambda w: dataset_id(w.dataset),
    shell:
        "python -m samcache features --dataset {input.store} --dataset-id {params.dataset_id:q} "
        "--spec {params.spec:q} --out {params.store} --expect-key {wildcards.key} "
        "{params.execution} --threads {threads} --manifest {output.manifest} > {log} 2>&1"
