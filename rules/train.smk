# Training: one job per adapter, under `accelerate launch` (CPU, one GPU, DDP or DeepSpeed).
# Checkpoints (work dir) survive a failed job, so a rerun resumes; TensorBoard events go to logs/.
# The shell execs `reprotune.launch`, which forwards SIGTERM/SIGUSR1 (SLURM's warning before a
# time limit or preemption) to the training processes: they checkpoint and exit 75, and the
# retried job resumes (profiles/slurm).


rule train:
    input:
        data="results/{recipe}/tokens/{adapter}",
        base=base_model_dir,
        code=train_code,
    output:
        directory("results/{recipe}/adapters/{adapter}"),
    params:
        spec=train_spec,
        launch=launch_args,
        work="work/{recipe}/checkpoints/{adapter}",
        tensorboard="logs/{recipe}/tensorboard/{adapter}",
        offline=offline_env,
    threads: THREADS
    resources:
        gpu=stage_resource("train", "gpu"),
        mem_mb=stage_resource("train", "mem_mb"),
        runtime=stage_resource("train", "runtime"),
    container:
        container_for("train"),
    log:
        "logs/{recipe}/train/{adapter}.log",
    shell:
        "{params.offline}"
        "exec python -m reprotune.launch -- accelerate launch {params.launch} -m reprotune.train --spec {params.spec:q} "
        "--data {input.data} --base {input.base} --out {output} --work {params.work} "
        "--tensorboard {params.tensorboard} > {log} 2>&1"
