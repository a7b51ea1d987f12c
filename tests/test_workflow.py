"""The Snakemake workflow itself: lint, format, config validation, a real tiny run, reruns."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COPY = ["workflow", "scripts", "src", "config", "envs", "profiles"]


def snakemake(workdir: Path, *args, check=True, env=None, timeout=900):
    run_env = {**os.environ, **(env or {})}
    result = subprocess.run([str(BIN / "snakemake"), *args], cwd=workdir, env=run_env,
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def planned_jobs(workdir: Path, *args) -> list[tuple[str, str]]:
    """(rule, wildcards) of each job a dry run would run."""
    out = snakemake(workdir, "--dry-run", *args).stdout
    jobs = []
    for match in re.finditer(r"^(?:local)?rule (\w+):\n((?:[ \t]+.*\n?)*)", out, re.M):
        wildcards = re.search(r"wildcards: (.*)", match.group(2))
        jobs.append((match.group(1), wildcards.group(1).strip() if wildcards else ""))
    return jobs


@pytest.fixture(scope="module")
def project(tmp_path_factory, mirror) -> Path:
    """A copy of the workflow in a scratch folder, run once on the tiny test config."""
    root = tmp_path_factory.mktemp("project")
    for name in COPY:
        if (REPO / name).exists():
            shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copyfile(REPO / "config" / "test.yaml", root / "config" / "config.yaml")
    os.environ["OMNIGLOT_MIRROR"] = str(mirror)
    snakemake(root, "--cores", "2")
    return root


def test_lint_and_format_are_clean():
    lint = snakemake(REPO, "--lint", env={"OMNIGLOT_MIRROR": ""})
    assert "Congratulations" in lint.stdout + lint.stderr
    fmt = subprocess.run([str(BIN / "snakefmt"), "--check", "workflow"], cwd=REPO, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stderr


def test_default_config_full_dag_dry_run():
    jobs = planned_jobs(REPO, "--forceall")
    rules = {rule for rule, _ in jobs}
    assert {"download_omniglot", "preprocess_omniglot", "make_tasks", "kernel_block", "assemble_kernel",
            "solve_mnk", "train_meta_learner", "aggregate", "figures", "all"} <= rules
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    n_experiments = len(config["tasks"]["n_characters"]) * len(config["tasks"]["seeds"])
    assert sum(rule == "solve_mnk" for rule, _ in jobs) == n_experiments
    assert sum(rule == "train_meta_learner" for rule, _ in jobs) == 2 * n_experiments


def test_paper_config_dry_run_lists_whole_dag():
    if not (REPO / "config" / "paper.yaml").exists():
        pytest.skip("config/paper.yaml not present")
    jobs = planned_jobs(REPO, "--forceall", "--configfile", "config/paper.yaml")
    assert sum(rule == "solve_mnk" for rule, _ in jobs) >= 6
    assert sum(rule == "kernel_block" for rule, _ in jobs) > 6


@pytest.mark.parametrize("edit,message", [
    (lambda c: c["kernel"].update(depht=3), "depht"),
    (lambda c: c["tasks"].update(way="five"), "way"),
    (lambda c: c.update(solver={}), "solver"),
    (lambda c: c["maml"]["options"].update(inner_stpes=2), "inner_stpes"),
])
def test_config_errors_name_the_key(tmp_path, edit, message):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    edit(config)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake(REPO, "--dry-run", "--configfile", str(path), check=False)
    assert result.returncode != 0
    assert message in result.stderr + result.stdout


def test_tiny_run_produces_every_output(project):
    summary = (project / "results" / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("method,experiment,way,shot,n_characters")
    assert len(summary) == 1 + 5 * 2  # 5 methods (2 without meta-learning) x 2 experiments
    for figure in ("accuracy", "paired", "cost", "mnk_grid", "mnk_spectrum", "learning_curves"):
        assert (project / "results" / "figures" / f"{figure}.png").stat().st_size > 10_000
    metrics = json.loads((project / "results" / "mnk" / "5way1shot-10char-seed0" / "metrics.json").read_text())
    assert 0.2 < metrics["accuracy"] <= 1.0 and metrics["ci95_low"] <= metrics["accuracy"] <= metrics["ci95_high"]
    for rule_log in ("preprocess_omniglot.log", "make_tasks/5way1shot-5char-seed0.log"):
        assert "wall time" in (project / "logs" / rule_log).read_text()


def test_every_row_has_its_measured_cpu_time_and_the_learners_stopping_facts(project):
    import pandas as pd

    summary = pd.read_csv(project / "results" / "summary.csv")
    assert (summary["cpu_seconds"] > 0).all()
    learners = summary[summary["method"].isin(["maml", "imaml"])]
    assert set(learners["stopped_by"]) <= {"plateau", "budget"}
    assert (learners["selected_iteration"] <= learners["n_meta_updates"]).all()
    mnk = summary[summary["method"] == "mnk"].iloc[0]
    metrics = json.loads((project / "results" / "mnk" / mnk["experiment"] / "metrics.json").read_text())
    # MNK is charged its kernel share and its own solve (and the label encoder with encoder
    # targets, which the tiny config does not use), each measured
    assert "encoder_cpu_seconds" not in metrics
    assert metrics["kernel_cpu_seconds"] > 0 and metrics["solve_cpu_seconds"] > 0
    assert mnk["cpu_seconds"] == pytest.approx(metrics["kernel_cpu_seconds"] + metrics["solve_cpu_seconds"])
    # prototypes are charged the label encoder they classify with
    prototypes = summary[summary["method"] == "prototypes"].iloc[0]
    own = json.loads((project / "results" / "prototypes" / prototypes["experiment"] / "metrics.json").read_text())
    encoder = json.loads((project / "results" / "encoder" / prototypes["experiment"] / "cost.json").read_text())
    assert own["encoder_cpu_seconds"] == encoder["cpu_seconds"] > 0
    assert prototypes["cpu_seconds"] == pytest.approx(own["encoder_cpu_seconds"] + own["solve_cpu_seconds"])
    assert metrics["numerics"]["torch_threads"] == 2


# What a user's environment may ask of the vector code paths: the pipeline's pinning
# (mnk.infra.numerics) must make it irrelevant.
FOREIGN_ISA = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "DNNL_MAX_CPU_ISA": "AVX2",
               "MKL_ENABLE_INSTRUCTIONS": "AVX2", "NUMBA_CPU_NAME": "haswell"}


def _torch_job_outputs(root: Path) -> dict:
    """Every torch job's numbers: accuracies, per-task accuracies, the encoder's training history."""
    out = {}
    for path in sorted((root / "results").glob("*/*/metrics.json")):
        m = json.loads(path.read_text())
        out[str(path.relative_to(root))] = (m["accuracy"], m.get("per_task_accuracy"), m.get("learning_curve"))
    for path in sorted((root / "results" / "encoder").glob("*/cost.json")):
        out[str(path.relative_to(root))] = json.loads(path.read_text())["history"]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("environment", [FOREIGN_ISA, {"ATEN_CPU_CAPABILITY": "default", "NUMBA_CPU_NAME": "generic"}])
def test_torch_and_kernel_jobs_give_the_same_bits_whatever_the_environment_asks(project, tmp_path, environment):
    rerun = tmp_path / "rerun"
    shutil.copytree(project, rerun, ignore=shutil.ignore_patterns(".snakemake"))
    forced = ["kernel_block", "train_encoder", "solve_mnk", "solve_baseline", "train_meta_learner"]
    snakemake(rerun, "--cores", "2", "--forcerun", *forced, env=environment)
    log = (rerun / "logs" / "train_maml" / "5way1shot-5char-seed0.log").read_text()
    assert "maml" in log
    first, second = _torch_job_outputs(project), _torch_job_outputs(rerun)
    assert first.keys() == second.keys() and len(first) == 5 * 2 + 2  # 5 methods x 2 experiments, 2 encoders
    assert first == second
    per_task = [(project / "results" / "per_task.csv").read_bytes(), (rerun / "results" / "per_task.csv").read_bytes()]
    assert per_task[0] == per_task[1]


def test_assembled_kernel_equals_one_shot_gram(project):
    from mnk.study.blocks import base_kernel
    from mnk.kernels.options import KernelOptions
    from mnk.infra.io import load_npz
    from mnk.kernels.transform import transform_images

    exp = project / "results"
    config = yaml.safe_load((project / "config" / "config.yaml").read_text())
    tasks = load_npz(exp / "tasks" / "5way1shot-10char-seed0" / "tasks.npz")
    pool = load_npz(exp / "tasks" / "pool-5way1shot-seed0" / "pool.npz")
    kernel = load_npz(exp / "kernels" / "5way1shot-10char-seed0" / "kernel.npz")
    n_train = int(tasks["n_train_images"])
    # The kernel resamples the original 105x105 images (kernel.source auto): straight from the data stage's file.
    originals = load_npz(exp / "data" / "omniglot_originals.npz")["originals"]
    raw = originals[tasks["image_ids"]].astype(np.float32) / 255
    pool_raw = originals[pool["image_ids"]].astype(np.float32) / 255
    # Standardised on the pool's training images (those of the largest experiment).
    k = config["kernel"]
    assert k["source"] == "auto" and originals.shape[1:] == (105, 105)
    images = transform_images(raw, image_size=k["image_size"], resample=k["resample"], pad=k["pad"],
                              standardize=k["standardize"], reference=pool_raw[: int(pool["n_train_images"])])
    full = base_kernel(images, None, KernelOptions.from_section(k))
    computed = kernel["computed"]
    np.testing.assert_allclose(kernel["K"][computed], full[computed], rtol=1e-12, atol=0)
    # Exactly the needed pairs: train x train, (val, test) x train, within each val/test task.
    expected = np.zeros_like(computed)
    expected[:, :n_train] = expected[:n_train, :] = True
    for name in ("val", "test"):
        for ids in np.concatenate([tasks[f"{name}_support"], tasks[f"{name}_query"]], axis=1):
            expected[np.ix_(ids, ids)] = True
    np.testing.assert_array_equal(computed, expected)
    assert len(tasks["val_support"]) == config["tasks"]["n_val_tasks"]


def _saved_per_task(project, method, exp):
    from mnk.infra.io import load_npz

    saved = load_npz(project / "results" / method / exp / "predictions.npz")
    return (saved["labels"] == saved["query_labels"]).mean(axis=1)


def test_summary_and_paired_equal_the_saved_predictions(project):
    """The reported numbers, recomputed from each method's saved test labels."""
    import pandas as pd

    summary = pd.read_csv(project / "results" / "summary.csv")
    paired = pd.read_csv(project / "results" / "paired.csv")
    for exp, chars in (("5way1shot-5char-seed0", 5), ("5way1shot-10char-seed0", 10)):
        per_task = {m: _saved_per_task(project, m, exp) for m in ("mnk", "kernel_regression", "prototypes")}
        for method, accuracy in per_task.items():
            row = summary[(summary.method == method) & (summary.experiment == exp)].iloc[0]
            assert row.accuracy == pytest.approx(accuracy.mean(), abs=1e-12)
            half = 1.96 * accuracy.std() / np.sqrt(len(accuracy))
            assert row.ci95_high == pytest.approx(accuracy.mean() + half, abs=1e-12)
        for baseline in ("kernel_regression", "prototypes"):
            row = paired[(paired.baseline == baseline) & (paired.n_characters == chars)].iloc[0]
            d = per_task["mnk"] - per_task[baseline]
            assert row.method == "mnk" and row.n_test_tasks == len(d)
            assert row.mean_difference == pytest.approx(d.mean(), abs=1e-12)
            assert row.ci95_low == pytest.approx(d.mean() - 1.96 * d.std() / np.sqrt(len(d)), abs=1e-12)


def test_kernel_regression_baseline_is_wired_to_the_kernel_and_r1(project):
    """Its saved labels equal a per-task one-hot regression computed here from kernel.npz."""
    from mnk.infra.io import load_npz

    config = yaml.safe_load((project / "config" / "config.yaml").read_text())
    r1 = config["mnk"]["r1"]
    exp = project / "results"
    tasks = load_npz(exp / "tasks" / "5way1shot-10char-seed0" / "tasks.npz")
    K = load_npz(exp / "kernels" / "5way1shot-10char-seed0" / "kernel.npz")["K"]
    saved = load_npz(exp / "kernel_regression" / "5way1shot-10char-seed0" / "predictions.npz")
    for s, q, y, got in zip(tasks["test_support"], tasks["test_query"], tasks["test_support_labels"], saved["labels"]):
        ids = np.r_[s, q]
        d = np.sqrt(np.diag(K)[ids] + r1)
        Kn = (K[np.ix_(ids, ids)] + r1 * np.eye(len(ids))) / np.outer(d, d)
        ns = len(s)
        scores = Kn[ns:, :ns] @ np.linalg.solve(Kn[:ns, :ns] + r1 * np.eye(ns), np.eye(5)[y])
        np.testing.assert_array_equal(got, scores.argmax(-1))


def test_mnk_setting_is_chosen_on_validation_tasks_and_recorded(project):
    config = yaml.safe_load((project / "config" / "config.yaml").read_text())
    grid = config["mnk"]["grid"]
    metrics = json.loads((project / "results" / "mnk" / "5way1shot-10char-seed0" / "metrics.json").read_text())
    table = metrics["validation"]
    keys = ("r2", "meta_time", "inner_time", "targets", "decoder")
    assert len(table) == np.prod([len(grid[k]) for k in keys]) > 1
    assert any(np.isfinite(row["meta_time"]) for row in table)  # the tiny grid has a finite meta_time
    best = max(table, key=lambda row: row["val_accuracy"])
    assert metrics["selected"] == {k: best[k] for k in keys}
    # the grid's table and kernel regression on the same validation tasks, for the mnk_grid figure
    import pandas as pd

    rows = pd.read_csv(project / "results" / "mnk_grid.csv")
    rows = rows[rows.experiment == "5way1shot-10char-seed0"]
    assert len(rows) == len(table) and rows.selected.sum() == 1
    np.testing.assert_allclose(sorted(rows.val_accuracy), sorted(row["val_accuracy"] for row in table))
    assert 0 < metrics["validation_kernel_regression"] <= 1
    summary = pd.read_csv(project / "results" / "summary.csv")
    mnk = summary[(summary.method == "mnk") & (summary.experiment == "5way1shot-10char-seed0")].iloc[0]
    assert mnk.meta_share == pytest.approx(metrics["meta_share"]) and metrics["meta_share"] >= 0
    assert summary[summary.method != "mnk"].meta_share.isna().all()
    assert all(row["n_val_tasks"] == config["tasks"]["n_val_tasks"] for row in table)
    assert len(metrics["per_task_accuracy"]) == metrics["n_test_tasks"] == config["tasks"]["n_test_tasks"]


def test_nothing_left_to_do_after_a_run(project):
    assert planned_jobs(project) == []


def test_interrupted_kernel_stage_resumes_with_the_missing_block_only(project, tmp_path):
    """As a run interrupted in the kernel stage leaves it: one block of the shared image pool
    and everything downstream of the kernel stage missing. Only that block is recomputed."""
    results = project / "results"
    pool = "pool-5way1shot-seed0"
    blocks = sorted((results / "kernels" / pool / "blocks").glob("*.npz"))
    assert len(blocks) > 3
    victim = results / "kernels" / pool / "blocks" / "task-0-0.npz"  # every experiment reads it
    experiments = ["5way1shot-5char-seed0", "5way1shot-10char-seed0"]
    downstream = [victim, *(results / "kernels" / e / "kernel.npz" for e in experiments),
                  *(p for e in experiments for p in sorted((results / "mnk" / e).iterdir())),
                  results / "summary.csv", *sorted((results / "figures").iterdir())]
    moved = {path: tmp_path / f"{i}" for i, path in enumerate(downstream)}
    for path, aside in moved.items():
        path.rename(aside)  # keeps mtimes, so the restore below leaves the project as it was
    try:
        jobs = planned_jobs(project)
        assert [w for rule, w in jobs if rule == "kernel_block"] == [f"pool={pool}, block=task-0-0"]
        assert sorted(w for rule, w in jobs if rule == "assemble_kernel") == sorted(f"exp={e}" for e in experiments)
        assert {rule for rule, _ in jobs} == {"kernel_block", "assemble_kernel", "solve_mnk", "solve_baseline", "aggregate", "figures", "all"}
    finally:
        for path, aside in moved.items():
            aside.rename(path)
    assert planned_jobs(project) == []


def test_changing_one_experiment_reruns_only_it(project, tmp_path):
    config = yaml.safe_load((project / "config" / "config.yaml").read_text())
    config["tasks"]["n_characters"] = [5, 15]  # 10 -> 15: one experiment changes
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(config))
    jobs = planned_jobs(project, "--configfile", str(path))
    # The shared image pool grows to 15 characters, so the kernels of its experiments are
    # gathered again and solved again (MNK, kernel regression); nothing else of the
    # 5-character experiment reruns.
    experiments = {re.search(r"exp=([\w-]+)", w).group(1) for rule, w in jobs
                   if "exp=" in w and rule not in ("assemble_kernel", "solve_mnk", "solve_baseline")}
    assert experiments == {"5way1shot-15char-seed0"}
    assert "preprocess_omniglot" not in {rule for rule, _ in jobs}
    assert ("make_pool", "pool=pool-5way1shot-seed0") in jobs


def test_runtime_kernel_settings_rerun_nothing(project, tmp_path):
    config = yaml.safe_load((project / "config" / "config.yaml").read_text())
    config["kernel"]["backend"] = "cpu"  # the values do not depend on it
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(config))
    rules = {rule for rule, _ in planned_jobs(project, "--configfile", str(path))}
    assert rules <= {"aggregate", "figures", "all"}  # the summary records the config's hash


@pytest.mark.parametrize("change", [{"depth": 4}, {"resample": "bicubic"}])
def test_changing_a_kernel_parameter_reruns_kernels_not_baselines(project, tmp_path, change):
    config = yaml.safe_load((project / "config" / "config.yaml").read_text())
    config["kernel"].update(change)
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(config))
    rules = {rule for rule, _ in planned_jobs(project, "--configfile", str(path))}
    assert {"kernel_block", "assemble_kernel", "solve_mnk"} <= rules
    assert not rules & {"make_tasks", "make_pool", "train_meta_learner", "preprocess_omniglot"}


def test_report_builds(project):
    snakemake(project, "--report", "results/report.html")
    html = (project / "results" / "report.html").read_text(errors="ignore")
    assert "accuracy.png" in html or "accuracy" in html
