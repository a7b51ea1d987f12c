"""Planned kernel pairs and projected hours of a config: `make cost CONFIG=...`.

Importable without numpy or torch (common.smk reads the speeds for SLURM runtimes). Kept
apart from `mnk.study.plan` so that updating a speed reruns no kernel block.
"""

from __future__ import annotations


from mnk.kernels.options import KernelOptions, cpu_dtype
from mnk.study.config import SCHEMA, StudyConfig, parse_config
from mnk.study.plan import STAGES, experiment_ids, parse_experiment, pools

# Per-pair speeds (BENCHMARKS.md), the one place SLURM runtimes and `make cost` read them.
# Work of one CNTK pair ~ depth x P x (P with global average pooling, else 1), P = pixels.
GPU_SECONDS_PER_UNIT = 1.6e-12  # NVIDIA H200, fused kernel: 33.45 us/pair at 32x32, depth 20, gap
# CPU-seconds per entry-layer, numba backends, 2-core VM (bench_cntk_cpu): float64 7.0-11.5 ns,
# float32 1.05-1.73 ns (with gap only: the trace is computed in float64, cpu_dtype).
CPU_SECONDS_PER_UNIT = {"float64": 7.6e-9, "float32": 1.8e-9}
NTK_SECONDS_PER_PAIR = 1e-6
META_ITERATIONS_PER_SECOND = {"maml": 25.0, "imaml": 5.0}  # H200, vmap (BENCHMARKS.md)


def meta_updates(study: StudyConfig, method: str, exp: str) -> int:
    """Meta-updates of one MAML/iMAML run (its options' budget for the experiment)."""
    settings = parse_experiment(exp)
    return study.learner(method).n_updates(settings.get("n_characters", settings.get("n_train_tasks")))


def meta_learner_hours(study: StudyConfig, method: str) -> float:
    """GPU-hours (H200) of all runs of `method`."""
    updates = sum(meta_updates(study, method, exp) for exp in experiment_ids(study))
    return updates / META_ITERATIONS_PER_SECOND[method] / 3600


def pair_seconds(kernel: KernelOptions, pixels: int, device: str) -> float:
    """Seconds per kernel pair: GPU wall seconds (H200) or CPU-seconds (one core)."""
    if kernel.type == "ntk":
        return NTK_SECONDS_PER_PAIR
    work = kernel.depth * pixels * (pixels if kernel.gap else 1)
    if device == "cuda":
        return work * GPU_SECONDS_PER_UNIT
    return work * CPU_SECONDS_PER_UNIT[cpu_dtype(kernel.dtype, kernel.gap)]


def kernel_side(study: StudyConfig) -> int:
    return study.kernel_image_size + 2 * study.kernel.options.pad


def study_pair_seconds(study: StudyConfig, device: str) -> float:
    return pair_seconds(study.kernel.options, kernel_side(study) ** 2, device)


def per_experiment_pairs(study: StudyConfig) -> int:
    """Pairs of the former plan, one kernel per experiment (train, test x train, test tasks)."""
    total, t = 0, study.tasks
    for exp in experiment_ids(study):
        e = parse_experiment(exp)
        n = e["n_characters"] * (e["shot"] + t.query)
        size = e["way"] * (e["shot"] + t.query)
        total += n * (n + 1) // 2 + t.n_test_tasks * size * n + t.n_test_tasks * size * (size + 1) // 2
    return total


def cost_lines(study: StudyConfig) -> list[str]:
    if study.regression:
        return [f"{len(experiment_ids(study))} sinusoid experiments: no kernel blocks (solve_sinusoid computes "
                "the NTK of each experiment's points itself, seconds)",
                "MAML / iMAML on points: 6-60 CPU-seconds per run to the validation plateau on the 2-core VM "
                "(BENCHMARKS.md, sinusoid)",
                "total kernel pairs: 0"]
    plans = pools(study)
    stages = dict.fromkeys(STAGES, 0)
    for plan in plans.values():
        for key, value in plan.pairs_by_stage().items():
            stages[key] += value
    gpu, cpu = (study_pair_seconds(study, d) / 3600 for d in ("cuda", "cpu"))
    k, side = study.kernel.options, kernel_side(study)
    lines = [f"{len(plans)} image pools, {len(experiment_ids(study))} experiments, "
             f"{sum(len(p.blocks) for p in plans.values())} kernel blocks; kernel {k.type} depth {k.depth} "
             f"{'gap' if k.gap else 'trace'} on {side}x{side} images",
             f"{'stage':<28}{'pairs':>14}{'GPU-hours':>12}{'CPU-hours':>12}"]
    for key, pairs in stages.items():
        lines.append(f"{'kernel ' + key:<28}{pairs:>14.4g}{pairs * gpu:>12.3g}{pairs * cpu:>12.3g}")
    total = sum(stages.values())
    lines.append(f"{'kernel (all)':<28}{total:>14.4g}{total * gpu:>12.3g}{total * cpu:>12.3g}")
    gpu_hours = total * gpu
    for method in study.enabled:
        hours = meta_learner_hours(study, method)
        gpu_hours += hours
        lines.append(f"{method + ' (meta-training)':<28}{'-':>14}{hours:>12.3g}{'-':>12}")
    lines.append(f"{'kernel + meta-training':<28}{'-':>14}{gpu_hours:>12.3g}{'-':>12}"
                 f"   ({gpu_hours * 60:.1f} GPU-minutes on one H200)")
    lines.append(f"one kernel per experiment (former plan): {per_experiment_pairs(study):.4g} pairs "
                 f"(pooled: {total / per_experiment_pairs(study):.0%})")
    lines.append("GPU-hours: NVIDIA H200 speeds; CPU-hours: CPU-seconds of the 2-core VM (BENCHMARKS.md); "
                 "meta-training at its maximum budget (meta_iterations): early stopping usually ends it sooner")
    lines.append(f"total kernel pairs: {total}")
    return lines


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Planned kernel pairs and projected hours of a config.")
    parser.add_argument("config", help="a config file, e.g. config/paper.yaml")
    args = parser.parse_args(argv)
    print(f"{args.config}:")
    print("\n".join(cost_lines(load_config(args.config))))


def _merged(base: dict, extra: dict) -> dict:
    """`extra` over `base`, nested sections merged key by key (Snakemake's --configfile)."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def load_config(path) -> StudyConfig:
    """A config file merged onto config/config.yaml as `make run CONFIG=` does (--configfile),
    with the schema's defaults where Snakemake is at hand, parsed."""
    import yaml

    with open(SCHEMA.parents[2] / "config" / "config.yaml") as f:
        config = yaml.safe_load(f)
    with open(path) as f:
        config = _merged(config, yaml.safe_load(f) or {})
    try:
        import jsonschema  # noqa: F401
    except ImportError:  # `make cost` needs no venv: the config files give every key
        return parse_config(config)
    return parse_config(config, schema=SCHEMA)


if __name__ == "__main__":
    main()
