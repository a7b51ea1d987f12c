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
        mnk_grid="results/mnk_grid.csv",
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
        mnk_grid="results/mnk_grid.csv",
        spectra=expand("results/mnk/{exp}/spectrum.npz", exp=experiment_ids()),
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
        mnk_grid=report(
            "results/figures/mnk_grid.png",
            caption="../report/mnk_grid.rst",
            category="Figures",
        ),
        mnk_grid_pdf="results/figures/mnk_grid.pdf",
        spectrum=report(
            "results/figures/mnk_spectrum.png",
            caption="../report/mnk_spectrum.rst",
            category="Figures",
        ),
        spectrum_pdf="results/figures/mnk_spectrum.pdf",
    log:
        "logs/figures.log",
    conda:
        "../../envs/results.yaml"
    params:
        code=code_hash("figures.py"),
        mnk=canonical(STUDY.mnk.params()),
        spectrum_experiments=[plan.parse_experiment(exp) for exp in experiment_ids()],
    script:
        "../../scripts/figures.py"
