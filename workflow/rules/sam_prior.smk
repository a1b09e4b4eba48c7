rule sam_prior:
    """SAMAug-C's segmentation prior maps (SAM's automatic masks) for every image, resumable.

    Like the feature cache, the output is a small manifest and the Zarr store beside it survives
    a failed or interrupted job, so the next attempt resumes.
    """
    input:
        store=lambda w: dataset_store(w.dataset),
    output:
        manifest="cache/sam_priors/{dataset}/{pset}-{key}/manifest.json",
    log:
        "logs/sam_prior/{dataset}/{pset}-{key}.log",
    benchmark:
        "logs/sam_prior/{dataset}/{pset}-{key}.bench.tsv"
    # a cache unblocks every run that reads it: start it before work that can wait
    priority: CACHE_PRIORITY
    conda:
        "../../envs/features.yaml"
    threads: lambda w: sam_prior_cfg(w.pset)["threads"]
    resources:
        gpu=1,
        gpu_slot=lambda w: gpu_slots(),
    params:
        store=lambda w, output: str(Path(output.manifest).parent / "sam_prior.zarr"),
        spec=lambda w: json.dumps(sam_prior_cfg(w.pset), sort_keys=True),
        dataset_id=lambda w: dataset_id(w.dataset),
    shell:
        "python -m samcache sam-prior --dataset {input.store} --dataset-id {params.dataset_id:q} "
        "--spec {params.spec:q} --out {params.store} --expect-key {wildcards.key} "
        "--threads {threads} --manifest {output.manifest} > {log} 2>&1"
