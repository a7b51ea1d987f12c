# Omniglot: download (official URL or mirror), preprocess, sample tasks.


# No `retries:` here: download_archive retries transient network errors itself and fails at
# once, pointing at the mirror options, when the machine is offline.
rule download_omniglot:
    output:
        "results/data/raw/{archive}.zip",
    log:
        "logs/download_omniglot/{archive}.log",
    conda:
        "../../envs/data.yaml"
    params:
        source=config["data"]["source"],
        mirror=config["data"].get("mirror", ""),
    script:
        "../../scripts/download_omniglot.py"


rule preprocess_omniglot:
    input:
        archives=expand("results/data/raw/{archive}.zip", archive=ARCHIVES),
    output:
        "results/data/omniglot.npz",
    log:
        "logs/preprocess_omniglot.log",
    benchmark:
        "results/benchmarks/preprocess_omniglot.tsv"
    conda:
        "../../envs/data.yaml"
    params:
        code=code_hash("preprocess_omniglot.py"),
        image_size=config["data"]["image_size"],
        resample=config["data"]["resample"],
    script:
        "../../scripts/preprocess_omniglot.py"


rule make_tasks:
    input:
        data="results/data/omniglot.npz",
    output:
        tasks="results/tasks/{exp}/tasks.npz",
        images="results/tasks/{exp}/images.npz",
    log:
        "logs/make_tasks/{exp}.log",
    conda:
        "../../envs/data.yaml"
    params:
        code=code_hash("make_tasks.py"),
        spec=task_spec,
    script:
        "../../scripts/make_tasks.py"
