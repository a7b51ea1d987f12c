# Summary table, figures and the Snakemake report.


rule aggregate:
    input:
        metrics=metrics_files(),
    output:
        summary=report(
            "results/summary.csv",
            caption="../report/summary.rst",
            category="Summary",
        ),
        per_task="results/per_task.csv",
        learning_curves="results/learning_curves.csv",
        paired=report(
            "results/paired.csv",
            caption="../report/paired_table.rst",
            category="Summary",
        ),
    log:
        "logs/aggregate.log",
    conda:
        "../../envs/results.yaml"
    params:
        code=code_hash("aggregate.py"),
        config_hash=CONFIG_HASH,  # of the whole config, with every summary row
        test_tasks=TEST_TASKS["list_id"] if TEST_TASKS else "sampled",
    script:
        "../../scripts/aggregate.py"


rule figures:
    input:
        summary="results/summary.csv",
        per_task="results/per_task.csv",
        paired="results/paired.csv",
        learning_curves="results/learning_curves.csv",
        heatmap=f"results/mnk/{experiment_ids()[-1]}/heatmap.npz",
    output:
        accuracy=report(
            "results/figures/accuracy.png",
            caption="../report/accuracy.rst",
            category="Figures",
        ),
        accuracy_pdf="results/figures/accuracy.pdf",
        paired=report(
            "results/figures/paired.png",
            caption="../report/paired.rst",
            category="Figures",
        ),
        paired_pdf="results/figures/paired.pdf",
        cost=report(
            "results/figures/cost.png",
            caption="../report/cost.rst",
            category="Figures",
        ),
        cost_pdf="results/figures/cost.pdf",
        learning=report(
            "results/figures/learning_curves.png",
            caption="../report/learning_curves.rst",
            category="Figures",
        ),
        learning_pdf="results/figures/learning_curves.pdf",
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
    params:
        code=code_hash("figures.py"),
    script:
        "../../scripts/figures.py"
