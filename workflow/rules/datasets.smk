rule download:
    """One file of a dataset source into data/raw/<source>/: an interrupted transfer resumes,
    transient failures are retried with backoff, the checksum is verified before the file
    appears; offline, the error names the URL and where to place the file by hand. Runs on the
    submitting host, where a cluster has network access (its nodes often have none)."""
    output:
        "data/raw/{folder}/{filename}",
    log:
        "logs/download/{folder}/{filename}.log",
    wildcard_constraints:
        folder="[a-z][a-z0-9_]*",
        filename=r"[A-Za-z0-9][A-Za-z0-9_.\-]*",
    localrule: True
    conda:
        "../../envs/train.yaml"
    params:
        spec=lambda w: json.dumps(raw_file_spec(w.folder, w.filename), sort_keys=True),
    shell:
        "python -m samcache download --spec {params.spec:q} --file {wildcards.filename:q} "
        "--raw-dir data/raw > {log} 2>&1"


rule dataset:
    """A dataset store from its source's raw files (none for the synthetic demo), which are
    verified again first: images resized as configured, labels, masks, splits, and each
    source file's URL and checksum in the store's attributes."""
    input:
        raw=lambda w: dataset_raw_files(w.dataset),
    output:
        store=directory("data/stores/{dataset}.zarr"),
    log:
        "logs/dataset/{dataset}.log",
    conda:
        "../../envs/train.yaml"
    threads: 4
    params:
        spec=lambda w: json.dumps(dataset_cfg(w.dataset), sort_keys=True),
    shell:
        "python -m samcache dataset --name {wildcards.dataset} --spec {params.spec:q} "
        "--raw-dir data/raw --threads {threads} --out {output.store} > {log} 2>&1"
