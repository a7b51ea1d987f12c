# Meta Neural Kernel regression on the assembled base kernel.


rule train_encoder:
    input:
        tasks="results/tasks/{exp}/tasks.npz",
        images="results/tasks/{exp}/images.npz",
        lib=package_sources("encoder"),
    output:
        "results/encoder/{exp}/encoder.pt",
    log:
        "logs/train_encoder/{exp}.log",
    benchmark:
        "results/benchmarks/train_encoder/{exp}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        gpu=gpu_when(config["device"]),
    params:
        encoder=canonical(config["encoder"]),
        seed=lambda wildcards: experiment(wildcards)["seed"],
        device=config["device"],
    script:
        "../../scripts/train_encoder.py"


rule solve_mnk:
    input:
        kernel="results/kernels/{exp}/kernel.npz",
        tasks="results/tasks/{exp}/tasks.npz",
        images="results/tasks/{exp}/images.npz",
        encoder=encoder_input,
        lib=package_sources("meta", "metrics", "encoder", "targets", "study"),
    output:
        metrics="results/mnk/{exp}/metrics.json",
        predictions="results/mnk/{exp}/predictions.npz",
        heatmap="results/mnk/{exp}/heatmap.npz",
    log:
        "logs/solve_mnk/{exp}.log",
    benchmark:
        "results/benchmarks/solve_mnk/{exp}.tsv"
    retries: 1
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        gpu=gpu_when(config["device"]),
        mem_mb=experiment_mem_mb,
    params:
        mnk=canonical(config["mnk"]),
        kernel=kernel_params,
        experiment=experiment,
        device=config["device"],
    script:
        "../../scripts/solve_mnk.py"


rule solve_baseline:
    input:
        unpack(baseline_inputs),
        tasks="results/tasks/{exp}/tasks.npz",
        lib=package_sources("meta", "metrics", "encoder", "targets", "study"),
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
        "../../envs/torch.yaml"
    threads: 1
    resources:
        gpu=gpu_when(config["device"]),
        mem_mb=experiment_mem_mb,
    params:
        mnk=canonical(config["mnk"]),
        encoder=canonical(config["encoder"]),
        kernel=kernel_params,
        experiment=experiment,
        device=config["device"],
    script:
        "../../scripts/solve_baseline.py"
