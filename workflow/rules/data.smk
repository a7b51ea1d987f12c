# Data: Omniglot (download from the official URL or a mirror, preprocess) or an image
# folder (preprocess); then each experiment's tasks.


localrules:
    download_omniglot,


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
        source=STUDY.data.source,
        mirror=STUDY.data.mirror,
    script:
        "../../scripts/download_omniglot.py"


rule preprocess_omniglot:
    input:
        archives=expand("results/data/raw/{archive}.zip", archive=ARCHIVES),
    output:
        data="results/data/omniglot.npz",
        originals="results/data/omniglot_originals.npz",
    log:
        "logs/preprocess_omniglot.log",
    benchmark:
        "results/benchmarks/preprocess_omniglot.tsv"
    conda:
        "../../envs/data.yaml"
    params:
        code=code_hash("preprocess_omniglot.py"),
        image_size=STUDY.data.image_size,
        resample=STUDY.data.resample,
    script:
        "../../scripts/preprocess_omniglot.py"


rule preprocess_folder:
    output:
        "results/data/dataset.npz",
    log:
        "logs/preprocess_folder.log",
    benchmark:
        "results/benchmarks/preprocess_folder.tsv"
    conda:
        "../../envs/data.yaml"
    params:
        code=code_hash("preprocess_folder.py"),
        data=image_params(),
        images_per_class=max(STUDY.tasks.shot) + STUDY.tasks.query,
        fingerprint=folder_fingerprint(),
    script:
        "../../scripts/preprocess_folder.py"


rule make_tasks:
    input:
        data=dataset_npz(),
        test_tasks=test_tasks_input(),
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
        data=image_params(),
        test_tasks=test_tasks_params(),
    script:
        "../../scripts/make_tasks.py"
