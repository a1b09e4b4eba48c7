rule dataset_synthetic:
    """The embedded demo's synthetic dermoscopy-like images, written as a dataset store."""
    output:
        store=directory("data/stores/{dataset}.zarr"),
    log:
        "logs/dataset/{dataset}.log",
    conda:
        "../../envs/train.yaml"
    params:
        spec=lambda w: json.dumps(dataset_cfg(w.dataset), sort_keys=True),
    shell:
        "python -m samcache dataset --name {wildcards.dataset} --spec {params.spec:q} "
        "--out {output.store} > {log} 2>&1"
