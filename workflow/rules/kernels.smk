# Base kernel (CNTK or NTK): one kernel per image pool (way x shot x seed), in blocks keyed
# by image ids (mnk.plan), gathered into each experiment's sub-kernel.


rule make_pool:
    input:
        data="results/data/omniglot.npz",
        lib=package_sources("tasks"),
    output:
        pool="results/tasks/{pool}/pool.npz",
        images="results/tasks/{pool}/images.npz",
    log:
        "logs/make_pool/{pool}.log",
    conda:
        "../../envs/data.yaml"
    params:
        spec=pool_spec,
    script:
        "../../scripts/make_pool.py"


rule kernel_block:
    input:
        pool="results/tasks/{pool}/pool.npz",
        images="results/tasks/{pool}/images.npz",
        lib=package_sources("blocks", "plan", "tasks", "kernels"),
    output:
        "results/kernels/{pool}/blocks/{block}.npz",
    log:
        "logs/kernel_block/{pool}/{block}.log",
    benchmark:
        "results/benchmarks/kernel_block/{pool}/{block}.tsv"
    retries: 1
    conda:
        "../../envs/kernels.yaml"
    threads: 8
    resources:
        gpu=gpu_when(config["kernel"]["backend"]),
        runtime=kernel_block_runtime,
        mem_mb=kernel_block_mem_mb,
    params:
        pool=pool_params,
        block=block_params,
        identity=plan.kernel_identity(config),
    script:
        "../../scripts/kernel_block.py"


rule assemble_kernel:
    input:
        blocks=experiment_block_files,
        pool=pool_file("pool.npz"),
        tasks="results/tasks/{exp}/tasks.npz",
        lib=package_sources("blocks", "plan", "tasks"),
    output:
        "results/kernels/{exp}/kernel.npz",
    log:
        "logs/assemble_kernel/{exp}.log",
    retries: 1
    conda:
        "../../envs/kernels.yaml"
    resources:
        mem_mb=experiment_mem_mb,
    params:
        pool=pool_params,
        n_characters=lambda wildcards: experiment(wildcards)["n_characters"],
        identity=plan.kernel_identity(config),
    script:
        "../../scripts/assemble_kernel.py"
