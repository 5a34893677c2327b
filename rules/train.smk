# Training: one job per adapter, under `accelerate launch` (CPU, one GPU, DDP or DeepSpeed).
# Checkpoints (work dir) survive a failed job, so a rerun resumes; TensorBoard events go to logs/.


rule train:
    input:
        data="results/{recipe}/data/{adapter}",
        base=lambda wc: plan.base_dir(R(wc)),
        code=lambda wc: plan.code_inputs("train", R(wc), wc.adapter),
    output:
        directory("results/{recipe}/adapters/{adapter}"),
    params:
        spec=lambda wc: plan.dumps(plan.train_spec(R(wc), wc.adapter)),
        launch=lambda wc: plan.accelerate_args(R(wc), wc.adapter, CFG["accelerate_config"]),
        work="work/{recipe}/checkpoints/{adapter}",
        tensorboard="logs/{recipe}/tensorboard/{adapter}",
        offline=offline_env,
    threads: THREADS
    resources:
        gpu=lambda wc: plan.resources_for("train", R(wc), wc.adapter)["gpu"],
        mem_mb=lambda wc: plan.resources_for("train", R(wc), wc.adapter)["mem_mb"],
        runtime=lambda wc: plan.resources_for("train", R(wc), wc.adapter)["runtime"],
    container:
        container_for("train"),
    log:
        "logs/{recipe}/train/{adapter}.log",
    shell:
        "{params.offline}"
        "accelerate launch {params.launch} -m reprotune.train --spec {params.spec:q} "
        "--data {input.data} --base {input.base} --out {output} --work {params.work} "
        "--tensorboard {params.tensorboard} > {log} 2>&1"
