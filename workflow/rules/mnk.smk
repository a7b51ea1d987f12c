# Meta Neural Kernel regression on the assembled base kernel.


rule train_encoder:
    input:
        tasks="results/tasks/{exp}/tasks.npz",
        images="results/tasks/{exp}/images.npz",
    output:
        encoder="results/encoder/{exp}/encoder.pt",
        cost="results/encoder/{exp}/cost.json",
    log:
        "logs/train_encoder/{exp}.log",
    benchmark:
        "results/benchmarks/train_encoder/{exp}.tsv"
    conda:
        conda_env("torch", gpu=on_job_device())
    threads: TORCH_THREADS["train_encoder"]
    resources:
        gpu=gpu_when(STUDY.device),
    params:
        code=code_hash("train_encoder.py"),
        threads=TORCH_THREADS["train_encoder"],
        encoder=canonical(STUDY.encoder.params()),
        seed=lambda wildcards: experiment(wildcards)["seed"],
        device=run_setting(STUDY.device),
    script:
        "../../scripts/train_encoder.py"


rule solve_mnk:
    input:
        unpack(encoder_inputs),
        kernel="results/kernels/{exp}/kernel.npz",
        tasks="results/tasks/{exp}/tasks.npz",
        images="results/tasks/{exp}/images.npz",
    output:
        metrics="results/mnk/{exp}/metrics.json",
        predictions="results/mnk/{exp}/predictions.npz",
        spectrum="results/mnk/{exp}/spectrum.npz",
    log:
        "logs/solve_mnk/{exp}.log",
    benchmark:
        "results/benchmarks/solve_mnk/{exp}.tsv"
    retries: 1
    conda:
        conda_env("torch", gpu=on_job_device())
    threads: TORCH_THREADS["solve_mnk"]
    resources:
        gpu=gpu_when(STUDY.device),
        mem_mb=experiment_mem_mb,
    params:
        code=code_hash("solve_mnk.py"),
        threads=TORCH_THREADS["solve_mnk"],
        mnk=canonical(STUDY.mnk.params()),
        kernel=kernel_params,
        experiment=experiment,
        device=run_setting(STUDY.device),
    script:
        "../../scripts/solve_mnk.py"


rule solve_baseline:
    input:
        unpack(baseline_inputs),
        tasks="results/tasks/{exp}/tasks.npz",
    output:
        metrics="results/{method}/{exp}/metrics.json",
        predictions="results/{method}/{exp}/predictions.npz",
    log:
        "logs/solve_{method}/{exp}.log",
    benchmark:
        "results/benchmarks/solve_{method}/{exp}.tsv"
    wildcard_constraints:
        method="|".join(BASELINES),
    conda:
        conda_env("torch", gpu=on_job_device())
    threads: TORCH_THREADS["solve_baseline"]
    resources:
        gpu=gpu_when(STUDY.device),
        mem_mb=experiment_mem_mb,
    params:
        code=code_hash("solve_baseline.py"),
        threads=TORCH_THREADS["solve_baseline"],
        mnk=canonical(STUDY.mnk.params()),
        encoder=canonical(STUDY.encoder.params()),
        kernel=kernel_params,
        experiment=experiment,
        device=run_setting(STUDY.device),
    script:
        "../../scripts/solve_baseline.py"
