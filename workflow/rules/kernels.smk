# Base kernel (CNTK or NTK) between the image pairs an experiment needs, in blocks.


rule kernel_block:
    input:
        tasks="results/tasks/{exp}/tasks.npz",
        images="results/tasks/{exp}/images.npz",
        lib=package_sources("blocks", "data", "kernels"),
    output:
        "results/kernels/{exp}/blocks/{block}.npz",
    log:
        "logs/kernel_block/{exp}/{block}.log",
    benchmark:
        "results/benchmarks/kernel_block/{exp}/{block}.tsv"
    retries: 1
    conda:
        "../../envs/kernels.yaml"
    threads: 8
    resources:
        gpu=gpu_when(config["kernel"]["backend"]),
        runtime=kernel_block_runtime,
        mem_mb=kernel_block_mem_mb,
    params:
        kernel=kernel_params,
        block_size=config["kernel"]["block_size"],
    script:
        "../../scripts/kernel_block.py"


rule assemble_kernel:
    input:
        blocks=block_files,
        tasks="results/tasks/{exp}/tasks.npz",
        lib=package_sources("blocks"),
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
        kernel=kernel_params,
    script:
        "../../scripts/assemble_kernel.py"
