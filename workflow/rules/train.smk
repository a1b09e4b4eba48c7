rule train:
    """One run: a head trained on cached features (or images) at one fraction and seed -> a record.

    The record's rerun trigger is the method's resolved settings and the package version
    (params), not the mtime of files under src/, deliberately: editing code does not silently
    invalidate finished runs; bumping the version does.
    """
    input:
        store=lambda w: dataset_store(w.dataset),
        features=lambda w: method_feature_manifest(w.dataset, w.method),
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
        features=lambda w, input: feature_args(input.features),
        version=SAMCACHE_VERSION,
    shell:
        "python -m samcache train --dataset {input.store} {params.features} "
        "--task {wildcards.task} --method-name {wildcards.method} --spec {params.spec:q} "
        "--fraction {wildcards.fraction} --seed {wildcards.seed} "
        "--out {output.record} > {log} 2>&1"
