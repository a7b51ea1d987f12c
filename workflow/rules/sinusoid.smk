# The sinusoid regression study (data.dataset: sinusoid, config/sinusoid.yaml): tasks, MNK and
# kernel regression (the FC ReLU NTK of the points is computed in the solve, seconds), MAML and
# iMAML (rule train_meta_learner, the same tasks), tables, figures.


SINUSOID_OUTPUTS = [
    "results/summary.csv",
    "results/per_task.csv",
    "results/paired.csv",
    "results/figures/mse.png",
    "results/figures/sinusoid_curves.png",
]


rule sinusoid_tasks:
    output:
        tasks="results/tasks/{exp}/tasks.npz",
        images="results/tasks/{exp}/images.npz",
    log:
        "logs/sinusoid_tasks/{exp}.log",
    conda:
        "../../envs/data.yaml"
    params:
        code=code_hash("sinusoid_tasks.py"),
        sinusoid=canonical(STUDY.sinusoid.params()),
        experiment=experiment,
    script:
        "../../scripts/sinusoid_tasks.py"


rule solve_sinusoid:
    input:
        tasks="results/tasks/{exp}/tasks.npz",
    output:
        mnk="results/mnk/{exp}/metrics.json",
        kernel_regression="results/kernel_regression/{exp}/metrics.json",
    log:
        "logs/solve_sinusoid/{exp}.log",
    benchmark:
        "results/benchmarks/solve_sinusoid/{exp}.tsv"
    conda:
        conda_env("torch", gpu=False)
    threads: TORCH_THREADS["solve_mnk"]
    params:
        code=code_hash("solve_sinusoid.py"),
        threads=TORCH_THREADS["solve_mnk"],
        mnk=canonical(STUDY.mnk.params()),
        sinusoid=canonical(STUDY.sinusoid.params()),
        experiment=experiment,
    script:
        "../../scripts/solve_sinusoid.py"


rule sinusoid_results:
    input:
        metrics=metrics_files(),
        tasks=expand("results/tasks/{exp}/tasks.npz", exp=experiment_ids()),
    output:
        summary=report(
            "results/summary.csv",
            caption="../report/sinusoid_summary.rst",
            category="Summary",
        ),
        per_task="results/per_task.csv",
        paired=report(
            "results/paired.csv",
            caption="../report/sinusoid_paired.rst",
            category="Summary",
        ),
        curves="results/sinusoid_curves.csv",
        mse=report(
            "results/figures/mse.png",
            caption="../report/sinusoid_mse.rst",
            category="Figures",
        ),
        mse_pdf="results/figures/mse.pdf",
        sinusoid_curves=report(
            "results/figures/sinusoid_curves.png",
            caption="../report/sinusoid_curves.rst",
            category="Figures",
        ),
        sinusoid_curves_pdf="results/figures/sinusoid_curves.pdf",
    log:
        "logs/sinusoid_results.log",
    conda:
        "../../envs/results.yaml"
    params:
        code=code_hash("sinusoid_results.py"),
        config_hash=CONFIG_HASH,
        experiments=experiment_ids(),
    script:
        "../../scripts/sinusoid_results.py"
