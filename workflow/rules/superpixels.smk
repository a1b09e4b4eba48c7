rule superpixels:
    """SLIC label maps for every image of a dataset, in parallel over images, resumable.

    threads (worker processes) only change speed: they are left out of params.spec, the rerun
    trigger, like the feature rule's batch size.
    """
    input:
        store=lambda w: dataset_store(w.dataset),
    output:
        manifest="cache/superpixels/{dataset}/{spset}-{key}/manifest.json",
    log:
        "logs/superpixels/{dataset}/{spset}-{key}.log",
    benchmark:
        "logs/superpixels/{dataset}/{spset}-{key}.bench.tsv"
    # a cache unblocks every run that reads it: start it before work that can wait
    priority: CACHE_PRIORITY
    conda:
        "../../envs/train.yaml"
    threads: lambda w: config["superpixels"][w.spset]["threads"]
    params:
        store=lambda w, output: str(Path(output.manifest).parent / "superpixels.zarr"),
        spec=lambda w: json.dumps(slic_settings(w.spset), sort_keys=True),
        dataset_id=lambda w: dataset_id(w.dataset),
    shell:
        "python -m samcache superpixels --dataset {input.store} --dataset-id {params.dataset_id:q} "
        "--spec {params.spec:q} --out {params.store} --expect-key {wildcards.key} "
        "--threads {threads} --manifest {output.manifest} > {log} 2>&1"
