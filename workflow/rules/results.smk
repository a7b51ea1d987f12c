# Summary table, figures and the Snakemake report.


rule aggregate:
    input:
        metrics=metrics_files(),
    output:
        report(
            "results/summary.csv",
            caption="../report/summary.rst",
            category="Summary",
        ),
    log:
        "logs/aggregate.log",
    conda:
        "../../envs/results.yaml"
    params:
        code=code_hash("aggregate.py"),
        config_hash=config_hash(config),
    script:
        "../../scripts/aggregate.py"


rule figures:
    input:
        summary="results/summary.csv",
        kernel=f"results/kernels/{experiment_ids()[-1]}/kernel.npz",
        tasks=f"results/tasks/{experiment_ids()[-1]}/tasks.npz",
    output:
        accuracy=report(
            "results/figures/accuracy.png",
            caption="../report/accuracy.rst",
            category="Figures",
        ),
        accuracy_pdf="results/figures/accuracy.pdf",
        cost=report(
            "results/figures/cost.png",
            caption="../report/cost.rst",
            category="Figures",
        ),
        cost_pdf="results/figures/cost.pdf",
        heatmap=report(
            "results/figures/kernel_heatmap.png",
            caption="../report/kernel_heatmap.rst",
            category="Figures",
        ),
        heatmap_pdf="results/figures/kernel_heatmap.pdf",
    log:
        "logs/figures.log",
    conda:
        "../../envs/results.yaml"
    resources:
        mem_mb=figures_mem_mb,
    params:
        code=code_hash("figures.py"),
        mnk=canonical(config["mnk"]),
    script:
        "../../scripts/figures.py"
