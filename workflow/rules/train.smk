rule train:
    """One run: a head trained on cached features at one fraction and seed -> a JSON record.

    The record's rerun trigger is the method's resolved settings and the package version
    (params), not the mtime of files under src/, deliberately: editing code does not silently
    invalidate finished runs; bumping the version does.
    """
    input:
        store=lambda w: dataset_store(w.dataset),
        features=lambda w: f"{feature_dir(w.dataset, method_cfg(w.method)['features'])}/manifest.json",
    output:
        record="results/runs/{dataset}/{task}/{method}/f{fraction}_s{seed}.json",
    log:
        "logs/train/{dataset}/{task}/{method}/f{fraction}_s{seed}.log",
    group:
        "train"
    conda:
        "../../envs/train.yaml"
    threads: lambda w: method_spec(w.method)["train"]["threads"]
    params:
        spec=lambda w: json.dumps(method_spec(w.method), sort_keys=True),
        features=lambda w, input: str(Path(input.features).parent / "features.zarr"),
        key=lambda w, input: Path(input.features).parent.name.rsplit("-", 1)[1],
        version=SAMCACHE_VERSION,
    shell:
        "python -m samcache train --dataset {input.store} --features {params.features} "
        "--task {wildcards.task} --method-name {wildcards.method} --spec {params.spec:q} "
        "--fraction {wildcards.fraction} --seed {wildcards.seed} --expect-key {params.key} "
        "--out {output.record} > {log} 2>&1"
