rule features:
    """Frozen SAM encoder features for every image of a dataset, computed once and resumable.

    The output is a small manifest; the Zarr store beside it is left in place when a job fails or
    is interrupted, so the next attempt resumes instead of starting over.
    """
    input:
        store=lambda w: dataset_store(w.dataset),
    output:
        manifest="cache/features/{dataset}/{fset}-{key}/manifest.json",
    log:
        "logs/features/{dataset}/{fset}-{key}.log",
    benchmark:
        "logs/features/{dataset}/{fset}-{key}.bench.tsv"
    conda:
        "../../envs/features.yaml"
    threads: 4
    resources:
        gpu=1,
    params:
        store=lambda w, output: str(Path(output.manifest).parent / "features.zarr"),
        spec=lambda w: json.dumps(config["feature_sets"][w.fset], sort_keys=True),
        dataset_id=lambda w: dataset_id(w.dataset),
    shell:
        "python -m samcache features --dataset {input.store} --dataset-id {params.dataset_id:q} "
        "--spec {params.spec:q} --out {params.store} --expect-key {wildcards.key} "
        "--threads {threads} --manifest {output.manifest} > {log} 2>&1"
