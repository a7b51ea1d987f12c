# Base kernel (CNTK or NTK): one kernel per image pool (way x shot x seed), in blocks keyed
# by image ids (mnk.study.plan), gathered into each experiment's sub-kernel.


rule make_pool:
    input:
        data=dataset_npz(),
        test_tasks=test_tasks_input(),
        originals=originals_input(),
    output:
        pool="results/tasks/{pool}/pool.npz",
        images="results/tasks/{pool}/images.npz",
    log:
        "logs/make_pool/{pool}.log",
    conda:
        "../../envs/data.yaml"
    params:
        code=code_hash("make_pool.py"),
        spec=pool_spec,
        data=image_params(),
        test_tasks=test_tasks_params(),
    script:
        "../../scripts/make_pool.py"


rule kernel_block:
    input:
        pool="results/tasks/{pool}/pool.npz",
        images="results/tasks/{pool}/images.npz",
    output:
        "results/kernels/{pool}/blocks/{block}.npz",
    log:
        "logs/kernel_block/{pool}/{block}.log",
    benchmark:
        "results/benchmarks/kernel_block/{pool}/{block}.tsv"
    retries: 1
    conda:
        conda_env("kernels", gpu=kernel_on_gpu())
    threads: kernel_threads()
    resources:
        gpu=int(kernel_on_gpu()),
        runtime=kernel_block_runtime,
        mem_mb=kernel_block_mem_mb,
    params:
        pool=pool_params,
        block=block_params,
        identity=KERNEL_IDENTITY,
        code=code_hash("kernel_block.py"),
        backend=run_setting(STUDY.kernel.backend),
    script:
        "../../scripts/kernel_block.py"


rule assemble_kernel:
    input:
        blocks=experiment_block_files,
        pool=pool_file("pool.npz"),
        tasks="results/tasks/{exp}/tasks.npz",
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
        identity=KERNEL_IDENTITY,
        code=code_hash("assemble_kernel.py"),
    script:
        "../../scripts/assemble_kernel.py"
