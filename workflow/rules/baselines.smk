# MAML and iMAML, trained and tested on exactly the tasks MNK uses.


rule train_meta_learner:
    input:
        tasks="results/tasks/{exp}/tasks.npz",
        images="results/tasks/{exp}/images.npz",
    output:
        metrics="results/{method}/{exp}/metrics.json",
        checkpoint="results/{method}/{exp}/checkpoint.pt",
    log:
        "logs/train_{method}/{exp}.log",
    benchmark:
        "results/benchmarks/train_{method}/{exp}.tsv"
    wildcard_constraints:
        method="maml|imaml",
    retries: 1
    conda:
        conda_env("torch", gpu=on_job_device())
    threads: TORCH_THREADS["train_meta_learner"]
    resources:
        gpu=gpu_when(STUDY.device),
        runtime=meta_learner_runtime,
    params:
        code=code_hash("train_meta_learner.py"),
        threads=TORCH_THREADS["train_meta_learner"],
        options=learner_params,
        experiment=experiment,
        device=run_setting(STUDY.device),
    script:
        "../../scripts/train_meta_learner.py"
