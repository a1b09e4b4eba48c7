rule train_batch:
    """Many runs in one process, on one resident copy of the inputs they share (samcache.sweep).

    Trains the runs of one planned batch in turn and stages each record beside its final path;
    each run's `train` job then puts it in place. A run whose record is current is not trained
    again, and a rerun after a failure or a kill trains only the runs not staged yet. The
    report is temporary: it exists only until every run of the batch has its record.
    A batch that trains on CUDA is a job of rule train_batch_cuda instead (below).
    """
    input:
        unpack(lambda w: batch_inputs(w.batch, cuda=False)),
    output:
        report=temp("results/batches/{batch}.json"),
    log:
        "logs/train_batch/{batch}.log",
    benchmark:
        "logs/train_batch/{batch}.bench.tsv"
    # the longest batches first, so that the last to finish is a short one
    priority: lambda w: batch_cost(w.batch)
    conda:
        "../../envs/train.yaml"
    threads: lambda w: run_execution(batch_runs(w.batch)[0])[1]
    resources:
        gpu=lambda w: training_gpus(batch_on_cuda(w.batch), "gpu"),
        gpu_slot=lambda w: training_gpus(batch_on_cuda(w.batch), "gpu_slot"),
        mem_mb=training_mem_mb(),
    params:
        plan=lambda w: json.dumps(batch_plan_json(w.batch), sort_keys=True),
        execution=lambda w, threads: batch_execution_args(),
        version=SAMCACHE_VERSION,
    shell:
        "python -m samcache train-batch --plan {params.plan:q} --report {output.report} "
        "{params.execution} > {log} 2>&1"


# The same job for a batch that trains on CUDA: a rule of its own, so that a cluster profile
# sends it to a GPU partition (profiles/slurm) while CPU batches stay on a CPU partition.
use rule train_batch as train_batch_cuda with:
    input:
        unpack(lambda w: batch_inputs(w.batch, cuda=True)),
    output:
        report=temp("results/batches/{batch}.cuda.json"),


rule train:
    """One run: a head trained on cached features (or images) at one fraction and seed -> a record.

    With batching (sweep.runs_per_job > 1) the run was trained by its batch, and this job moves
    the staged record into place in a fraction of a second; on a cluster it runs on the
    submitting host. It trains the run itself only when no matching record was staged, and for
    a run that no table of the configuration needs (a record named as a target).
    The record's rerun trigger is the method's resolved settings and the package version
    (params), not the mtime of files under src/, deliberately: editing code does not silently
    invalidate finished runs; bumping the version does.
    Heads with attention maps (or predicted masks) also leave a prediction store beside the
    record, <record>.zarr (samcache.predictions). It is not a declared output, since only some
    heads write one; the record names it and holds its digest, and is written after it.
    """
    input:
        unpack(lambda w: {**method_caches(w.dataset, w.method), **batch_report(w)}),
        store=lambda w: dataset_store(w.dataset),
    output:
        record="results/runs/{dataset}/{task}/{method}/f{fraction}_s{seed}.json",
    log:
        "logs/train/{dataset}/{task}/{method}/f{fraction}_s{seed}.log",
    benchmark:
        "logs/train/{dataset}/{task}/{method}/f{fraction}_s{seed}.bench.tsv"
    localrule: config["sweep"]["runs_per_job"] > 1
    conda:
        "../../envs/train.yaml"
    threads: lambda w: method_spec(w.method, w.dataset)["train"]["threads"]
    resources:
        gpu=lambda w: training_gpus(trains_here_on_cuda(w), "gpu"),
        gpu_slot=lambda w: training_gpus(trains_here_on_cuda(w), "gpu_slot"),
        mem_mb=training_mem_mb(),
    params:
        spec=lambda w: json.dumps(method_spec(w.method, w.dataset), sort_keys=True),
        caches=lambda w, input: cache_args(input),
        staged=lambda w: "--staged" if batch_report(w) else "",
        version=SAMCACHE_VERSION,
    shell:
        "python -m samcache train --dataset {input.store} {params.caches} "
        "--task {wildcards.task} --method-name {wildcards.method} --spec {params.spec:q} "
        "--fraction {wildcards.fraction} --seed {wildcards.seed} "
        "--out {output.record} {params.staged} > {log} 2>&1"
