rule train:
    """One run: a head trained on cached features (or images) at one fraction and seed -> a record.

    The record's rerun trigger is the method's resolved settings and the package version
    (params), not the mtime of files under src/, deliberately: editing code does not silently
    invalidate finished runs; bumping the version does.
    """
    input:
        unpack(lambda w: method_caches(w.dataset, w.method)),
        store=lambda w: dataset_store(w.dataset),
    output:
        record="results/runs/{dataset}/{task}/{method}/f{fraction}_s{seed}.json",
    log:
        "logs/train/{dataset}/{task}/{method}/f{fraction}_s{seed}.log",
    benchmark:
        "logs/train/{dataset}/{task}/{method}/f{fraction}_s{seed}.bench.tsv"
    group:
        "train"
    conda:
        "../../envs/train.yaml"
    threads: lambda w: method_spec(w.method, w.dataset)["train"]["threads"]
    resources:
        gpu=lambda w: train_gpus(w.method, w.dataset),
    params:
        spec=lambda w: json.dumps(method_spec(w.method, w.dataset), sort_keys=True),
        caches=lambda w, input: cache_args(input),
        version=SAMCACHE_VERSION,
    shell:
        "python -m samcache train --dataset {input.store} {params.caches} "
        "--task {wildcards.task} --method-name {wildcards.method} --spec {params.spec:q} "
        "--fraction {wildcards.fraction} --seed {wildcards.seed} "
        "--out {output.record} > {log} 2>&1"
