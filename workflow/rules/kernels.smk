# Base kernel (CNTK or NTK) between the image pairs an experiment needs, in blocks.


rule kernel_block:
    input:
        tasks="results/tasks/{exp}/tasks.npz",
        images="results/tasks/{exp}/images.npz",
    output:
        "results/kernels/{exp}/blocks/{block}.npz",
    log:
        "logs/kernel_block/{exp}/{block}.log",
    benchmark:
        "results/benchmarks/kernel_block/{exp}/{block}.tsv"
    retries: 1
    conda:
        conda_env("kernels", gpu=kernel_on_gpu())
    threads: kernel_threads()
    resources:
        gpu=int(kernel_on_gpu()),
        runtime=kernel_block_runtime,
        mem_mb=kernel_block_mem_mb,
    params:
        code=code_hash("kernel_block.py"),
        kernel=kernel_params,
        backend=run_setting(config["kernel"]["backend"]),
        block_size=config["kernel"]["block_size"],
    script:
        "../../scripts/kernel_block.py"


rule assemble_kernel:
    input:
        blocks=block_files,
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
        code=code_hash("assemble_kernel.py"),
        kernel=kernel_params,
    script:
        "../../scripts/assemble_kernel.py"
