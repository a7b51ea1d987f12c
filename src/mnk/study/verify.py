"""Reproduction checks and the README's result tables, from committed results files.

    python -m mnk.study.verify per-task RUN_PER_TASK.csv REFERENCE_PER_TASK.csv
    python -m mnk.study.verify summary RUN_SUMMARY.csv [docs/results/default_summary.csv]
    python -m mnk.study.verify readme [README.md] [docs/results/default_summary.csv]
        [--sinusoid docs/results/sinusoid_summary.csv] [--write]

`per-task` (`make verify`) demands every test task's accuracy equal to the bit; `summary`
compares a finished run's accuracies with the committed one the README's numbers come from;
`readme` regenerates the README's table from that committed file (`--write`), or checks that
the README holds exactly the generated table. The pinned CPU numerics (mnk.infra.numerics)
make these hold on any x86-64 machine with AVX2.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd

DEFAULT_SUMMARY = Path("docs/results/default_summary.csv")
KEY = ["method", "way", "shot", "n_characters", "seed"]
TABLE_BEGIN, TABLE_END = "<!-- results-table: begin (make readme-tables) -->", "<!-- results-table: end -->"
TABLE_METHODS = ["mnk", "kernel_regression", "prototypes", "maml", "imaml"]
SINUSOID_SUMMARY = Path("docs/results/sinusoid_summary.csv")  # and sinusoid_paired.csv beside it
SINUSOID_BEGIN, SINUSOID_END = "<!-- sinusoid-table: begin (make readme-tables) -->", "<!-- sinusoid-table: end -->"


def _read(path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such results file")
    return pd.read_csv(path, dtype={"accuracy": str}, keep_default_na=False)


def compare(found_path, reference_path, key: list[str], value: str = "accuracy") -> list[str]:
    """Rows whose `value` differs (as written: exact), or that one of the two files lacks."""
    found, reference = (_read(p).set_index(key)[value] for p in (found_path, reference_path))
    problems = [f"{dict(zip(key, k))}: missing from {found_path}" for k in reference.index.difference(found.index)]
    problems += [f"{dict(zip(key, k))}: not in the reference {reference_path}"
                 for k in found.index.difference(reference.index)]
    both = found.index.intersection(reference.index)
    problems += [f"{dict(zip(key, k))}: {value} {found[k]} here, {reference[k]} in the reference"
                 for k in both if found[k] != reference[k]]
    return problems


def results_table(summary: pd.DataFrame) -> str:
    """The README's Markdown table: mean test accuracy over seeds per method and training
    characters, with the 95% interval over seeds (training variance and test tasks)."""
    summary = summary.assign(accuracy=summary["accuracy"].astype(float))
    methods = [m for m in TABLE_METHODS if m in set(summary["method"])]
    from mnk.study.results import METHOD_LABELS

    lines = ["| training characters (MNK tasks) | " + " | ".join(METHOD_LABELS[m] for m in methods) + " |",
             "| --- |" + " --- |" * len(methods)]
    for chars, rows in summary.groupby("n_characters"):
        tasks = int(rows[rows["method"] == "mnk"]["n_train_tasks"].iloc[0]) if "mnk" in methods else "-"
        cells = []
        for method in methods:
            r = rows[rows["method"] == method]
            low, high = (float(r[c].astype(float).iloc[0]) for c in ("seeds_ci95_low", "seeds_ci95_high"))
            cells.append(f"{100 * r['accuracy'].mean():.1f}% [{100 * low:.1f}, {100 * high:.1f}]")
        lines.append(f"| {chars} ({tasks}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sinusoid_table(summary: pd.DataFrame, paired: pd.DataFrame) -> str:
    """The README's sinusoid table: mean test MSE over seeds per method, K and training tasks,
    and the paired difference MNK - kernel regression with its interval over the test tasks."""
    from mnk.study.results import METHOD_LABELS

    methods = [m for m in ("mnk", "kernel_regression", "maml", "imaml") if m in set(summary["method"])]
    lines = ["| K | training tasks | " + " | ".join(METHOD_LABELS[m] for m in methods)
             + " | MNK - kernel regression [95% CI] |", "| --- | --- |" + " --- |" * (len(methods) + 1)]
    for (shot, n), rows in summary.groupby(["shot", "n_train_tasks"]):
        cells = [f"{rows[rows['method'] == m]['mse'].astype(float).mean():.3f}" for m in methods]
        d = paired[(paired["shot"] == shot) & (paired["n_train_tasks"] == n) & (paired["baseline"] == "kernel_regression")]
        low, mean, high = (float(d[c].iloc[0]) for c in ("ci95_low", "mean_difference", "ci95_high"))
        lines.append(f"| {shot} | {n} | " + " | ".join(cells) + f" | {mean:+.3f} [{low:+.3f}, {high:+.3f}] |")
    return "\n".join(lines)


def readme_block(summary_path=DEFAULT_SUMMARY) -> str:
    return f"{TABLE_BEGIN}\n{results_table(_read(summary_path))}\n{TABLE_END}"


def sinusoid_block(summary_path=SINUSOID_SUMMARY) -> str:
    summary_path = Path(summary_path)
    paired = summary_path.with_name(summary_path.name.replace("summary", "paired"))
    return f"{SINUSOID_BEGIN}\n{sinusoid_table(_read(summary_path), _read(paired))}\n{SINUSOID_END}"


def readme_problems(readme="README.md", summary_path=DEFAULT_SUMMARY, write: bool = False,
                    sinusoid_path=None) -> list[str]:
    """The README's tables against the ones generated from the committed summaries (or write
    them): the default study's, and with `sinusoid_path` the sinusoid study's."""
    blocks = [(TABLE_BEGIN, TABLE_END, lambda: readme_block(summary_path), summary_path)]
    if sinusoid_path is not None:
        blocks.append((SINUSOID_BEGIN, SINUSOID_END, lambda: sinusoid_block(sinusoid_path), sinusoid_path))
    text, problems = Path(readme).read_text(), []
    for begin, end, generate, source in blocks:
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        if not pattern.search(text):
            problems.append(f"{readme}: no results table between {begin!r} and {end!r}")
            continue
        block = generate()
        if write:
            text = pattern.sub(lambda _: block, text)
        elif pattern.search(text).group(0) != block:
            problems.append(f"{readme}: the results table is not the one generated from {source}; "
                            "run `make readme-tables`")
    if write and not problems:
        Path(readme).write_text(text)
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnk.study.verify", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    per_task = sub.add_parser("per-task", help="every test task's accuracy equal to the bit")
    per_task.add_argument("run"), per_task.add_argument("reference")
    summary = sub.add_parser("summary", help="a run's accuracies against the committed summary")
    summary.add_argument("run"), summary.add_argument("reference", nargs="?", default=DEFAULT_SUMMARY)
    readme = sub.add_parser("readme", help="the README's table from the committed summary")
    readme.add_argument("readme", nargs="?", default="README.md")
    readme.add_argument("summary", nargs="?", default=DEFAULT_SUMMARY)
    readme.add_argument("--sinusoid", default=None, help="also the sinusoid table, from this summary")
    readme.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "per-task":
        problems = compare(args.run, args.reference, KEY + ["task"])
    elif args.command == "summary":
        problems = compare(args.run, args.reference, KEY)
    else:
        problems = readme_problems(args.readme, args.summary, args.write, args.sinusoid)
    for problem in problems:
        print(problem, file=sys.stderr)
    what = {"per-task": "per-task accuracies", "summary": "accuracies", "readme": "README table"}[args.command]
    print(f"{what}: {'MISMATCH, ' + str(len(problems)) + ' problems' if problems else 'identical'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
