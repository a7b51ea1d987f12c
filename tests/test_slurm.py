"""SLURM support, proven on a real single-node cluster (slurmctld + slurmdbd + slurmd, fake GPUs).

Opt-in: MNK_TEST_SLURM=1 (CI sets it). Needs root and the Debian 12 packages that
tests/slurm/cluster.sh installs (apt-get) when missing. The cluster lives in a temporary
folder for the module and is always torn down (tests/slurm/cluster.sh start|stop).
Every Snakemake run goes through the user-facing profile profiles/slurm, with the test
partition/account given the way users give theirs (MNK_SLURM_PARTITION/ACCOUNT) and only
test knobs added: the first status check after 1 s instead of 40 s, and for the real
workflow a GPU request on the kernel blocks and 1 CPU per block (the node has 2).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CLUSTER_SH = REPO / "tests" / "slurm" / "cluster.sh"
SMOKE_SNAKEFILE = REPO / "tests" / "slurm" / "smoke" / "Snakefile"
PROFILE = REPO / "profiles" / "slurm"
COPY = ["workflow", "scripts", "src", "config", "envs", "profiles"]
# What the tests add to the profile: poll sacct after 1 s instead of 40 s.
TEST_ARGS = ["--slurm-init-seconds-before-status-checks", "1"]
SUBMITTED = re.compile(r"submitted with SLURM jobid (\d+) \(log: (\S+?)\)")

def default_sigint():
    """Child processes act on Ctrl-C: a shell's background jobs (CI) start with SIGINT
    ignored, which the children would inherit, and Snakemake would never see the interrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(os.environ.get("MNK_TEST_SLURM") != "1",
                       reason="brings up a local SLURM cluster: set MNK_TEST_SLURM=1"),
]


@dataclass
class Cluster:
    state: Path
    env: dict

    def run(self, *args, timeout=120, check=True) -> subprocess.CompletedProcess:
        result = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode:
            raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def sacct(self, job_ids) -> dict[str, dict]:
        """sacct rows (allocations only) of the given jobs, by job id."""
        fields = ["JobID", "State", "ExitCode", "AllocTRES", "Account", "Partition", "Comment"]
        out = self.run("sacct", "-X", "-n", "-P", "-j", ",".join(job_ids), "-o", ",".join(fields)).stdout
        rows = [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip()]
        return {row["JobID"]: row for row in rows}

    def snakemake(self, *args, cwd: Path, timeout=600) -> subprocess.CompletedProcess:
        # SIGINT, not SIGTERM: Snakemake ignores SIGTERM while jobs run; on SIGINT it
        # cancels its SLURM jobs (scancel) and exits. --foreground: without it, timeout
        # signals its whole process group too, so Snakemake gets a second SIGINT that
        # aborts the scancel and leaves jobs behind.
        cmd = ["timeout", "--foreground", "-s", "INT", "-k", "60", str(timeout), str(BIN / "snakemake"), *args]
        return subprocess.run(cmd, cwd=cwd, env=self.env, capture_output=True, text=True, timeout=timeout + 90,
                              preexec_fn=default_sigint)


def submissions(result: subprocess.CompletedProcess) -> list[tuple[str, str, str]]:
    """(job id, rule, SLURM log path) of each job Snakemake submitted."""
    out = result.stdout + result.stderr
    jobs = []
    for job_id, log in SUBMITTED.findall(out):
        rule = re.search(r"/rule_(\w+?)(?:/|$)", log)
        jobs.append((job_id, rule.group(1) if rule else "?", log))
    return jobs


def tail(result: subprocess.CompletedProcess, n=6000) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout[-n:]}\n--- stderr\n{result.stderr[-n:]}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    state = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "MNK_SLURM_DIR": str(state), "MNK_SLURM_GPUS": "2"}
    start = subprocess.run(["bash", str(CLUSTER_SH), "start"], env=env, capture_output=True, text=True,
                           timeout=900)
    try:
        assert start.returncode == 0, f"cluster did not start:\n{start.stdout}\n{start.stderr}"
        env = {**env, "SLURM_CONF": str(state / "etc" / "slurm.conf"),
               # the user-facing knobs of profiles/slurm
               "MNK_SLURM_PARTITION": "debug", "MNK_SLURM_ACCOUNT": "mnk"}
        yield Cluster(state, env)
    finally:
        subprocess.run(["bash", str(CLUSTER_SH), "stop"], env=env, timeout=180)


# --- the cluster itself, with a tiny self-contained workflow -------------------------------


def test_cluster_runs_a_gpu_job_and_accounts_for_it(cluster, tmp_path):
    out = tmp_path / "job.out"
    job = cluster.run("timeout", "-k", "5", "60", "sbatch", "--parsable", "--wait", "--gpus=1", "-o", str(out),
                      "--wrap", "echo CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES", timeout=90).stdout.strip()
    assert out.read_text().strip() in {"CUDA_VISIBLE_DEVICES=0", "CUDA_VISIBLE_DEVICES=1"}
    row = cluster.sacct([job])[job]
    assert (row["State"], row["ExitCode"]) == ("COMPLETED", "0:0"), row
    assert "gres/gpu=1" in row["AllocTRES"], row


def wait_for(predicate, timeout: float, what: str, interval=1.0):
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def test_smoke_workflow_on_fake_gpus_interrupted_and_resumed(cluster, tmp_path):
    work = tmp_path / "slurm"
    work.mkdir()
    args = ["--profile", str(PROFILE), *TEST_ARGS, "--snakefile", str(SMOKE_SNAKEFILE), "--directory", str(work)]

    # 1. A run interrupted (Ctrl-C) while block b0 still runs and b1, b2 are done.
    log = tmp_path / "first-run.log"
    with open(log, "w") as out:
        first = subprocess.Popen([str(BIN / "snakemake"), *args], cwd=work, stdout=out, stderr=subprocess.STDOUT,
                                 preexec_fn=default_sigint,
                                 env={**cluster.env, "MNK_SMOKE_HOLD": "b0"})  # b0 hangs
        try:
            wait_for(lambda: log.read_text().count("(Rule: gpu_block)") == 2
                     and "rule_gpu_block/b0/" in log.read_text(), 300, "b1 and b2 to finish while b0 runs")
            first.send_signal(signal.SIGINT)
            # Snakemake acts on the interrupt at its next status check, which backs off to
            # one per 180 s while a job runs: allow for a full interval plus the cancel.
            first.wait(timeout=420)
        finally:
            if first.poll() is None:
                first.kill()
    text = log.read_text()
    assert first.returncode != 0, text[-4000:]
    first_jobs = submissions(subprocess.CompletedProcess([], first.returncode, text, ""))
    held = [job_id for job_id, _, path in first_jobs if "rule_gpu_block/b0/" in path]
    assert len(held) == 1, text[-4000:]
    # Snakemake cancelled the job it was waiting for
    assert cluster.sacct(held)[held[0]]["State"].startswith("CANCELLED"), text[-4000:]
    wait_for(lambda: cluster.run("squeue", "-h", "-o", "%i").stdout.strip() == "", 60,
             "the cancelled job to leave the queue")
    assert not (work / "blocks" / "b0.txt").exists()

    # 2. The same command again submits the missing block and what depends on it, nothing else.
    again = cluster.snakemake(*args, cwd=work, timeout=300)
    assert again.returncode == 0, tail(again)
    second_jobs = submissions(again)
    assert sorted(rule for _, rule, _ in second_jobs) == ["assemble", "gpu_block"], tail(again)
    assert "rule_gpu_block/b0/" in again.stdout + again.stderr

    # 3. Every job but the local rule `all` ran under SLURM and completed; GPU rules got
    #    one fake GPU each, CPU rules none.
    jobs = [job for job in first_jobs if job[0] not in held] + second_jobs
    assert sorted(rule for _, rule, _ in jobs) == ["assemble", "gpu_block", "gpu_block", "gpu_block", "make_input"]
    rows = cluster.sacct([job_id for job_id, _, _ in jobs])
    for job_id, rule, _ in jobs:
        row = rows[job_id]
        assert (row["State"], row["ExitCode"]) == ("COMPLETED", "0:0"), row
        assert (row["Account"], row["Partition"]) == ("mnk", "debug"), row
        assert ("gres/gpu=1" in row["AllocTRES"]) == (rule == "gpu_block"), row
        assert f"rule_{rule}" in row["Comment"], row
    gpu_job_ids = {job_id for job_id, rule, _ in jobs if rule == "gpu_block"}
    for env_file in sorted((work / "env").glob("*.txt")):
        seen = dict(item.split("=", 1) for item in env_file.read_text().split())
        assert seen["CUDA_VISIBLE_DEVICES"] in {"0", "1"}, env_file.read_text()
        assert seen["SLURM_JOB_ID"] in gpu_job_ids

    # 4. The same workflow run locally gives the same outputs.
    local = tmp_path / "local"
    local.mkdir()
    run = subprocess.run([str(BIN / "snakemake"), "--cores", "2", "--snakefile", str(SMOKE_SNAKEFILE)],
                         cwd=local, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, tail(run)
    assert (work / "result.txt").read_text() == (local / "result.txt").read_text()
    assert (work / "result.txt").read_text() == "".join(f"{b} {2 * 5050}\n" for b in ("b0", "b1", "b2"))


def test_failed_job_is_retried_then_fails_the_run_naming_its_log(cluster, tmp_path):
    result = cluster.snakemake("--profile", str(PROFILE), *TEST_ARGS, "--snakefile", str(SMOKE_SNAKEFILE),
                               "--directory", str(tmp_path), "fail.txt", cwd=tmp_path, timeout=300)
    assert result.returncode != 0, tail(result)
    out = result.stdout + result.stderr
    jobs = submissions(result)
    # retries: 1 in the profile -> submitted twice
    assert [rule for _, rule, _ in jobs] == ["fail", "fail"], tail(result)
    rows = cluster.sacct([job_id for job_id, _, _ in jobs])
    assert {row["State"] for row in rows.values()} == {"FAILED"}, rows
    assert "0:0" not in {row["ExitCode"] for row in rows.values()}, rows
    # the error names the SLURM job and both logs: the rule's and the SLURM job's (kept,
    # as the job failed); show-failed-logs prints the rule log
    last_id, _, slurm_log = jobs[-1]
    assert f"SLURM-job '{last_id}' failed, SLURM status is: 'FAILED'" in out, tail(result)
    assert f"log: logs/fail.log, {slurm_log}" in out, tail(result)
    assert Path(slurm_log).is_file()
    assert "deliberate failure" in out, tail(result)


# --- the real workflow on its tiny test config ---------------------------------------------

# The tiny test config, cut to what proves the point in a few minutes on 2 shared cores
# (each SLURM job pays 5-20 s of Snakemake start-up there): one experiment, blocks of 100
# images (5 kernel blocks instead of 21; the kernel does not depend on the block size),
# and no MAML/iMAML (CPU torch jobs with nothing SLURM-specific, ~1 min).
SLURM_TEST_CONFIG = {"tasks": {"n_characters": [10]}, "kernel": {"block_size": 100},
                     "maml": {"enabled": False}, "imaml": {"enabled": False}}


def copy_project(root: Path) -> Path:
    import yaml

    for name in COPY:
        if (REPO / name).exists():
            shutil.copytree(REPO / name, root / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "results", "logs"))
    config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    for section, values in SLURM_TEST_CONFIG.items():
        config[section].update(values)
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root


def test_tiny_config_on_slurm_matches_local_run(cluster, mirror, tmp_path):
    import numpy as np

    from mnk.infra.io import load_npz

    env_mirror = {"OMNIGLOT_MIRROR": str(mirror)}
    cluster.env.update(env_mirror)
    slurm = copy_project(tmp_path / "slurm")
    result = cluster.snakemake(
        "--profile", "profiles/slurm", *TEST_ARGS,
        # test.yaml computes kernels on CPUs (backend auto); make the blocks ask for a GPU
        # anyway, so GPU blocks are scheduled onto the fake GPUs; one CPU per job fits
        # the 2-CPU test node
        "--set-resources", "kernel_block:gpu=1", "--set-threads", "kernel_block=1",
        cwd=slurm, timeout=900)
    assert result.returncode == 0, tail(result)

    jobs = submissions(result)
    rules = [rule for _, rule, _ in jobs]
    # local rules (download, all) ran on the submit host; everything else went to SLURM, once
    assert not {"download_omniglot", "all"} & set(rules), tail(result)
    assert {"preprocess_omniglot", "make_tasks", "kernel_block", "assemble_kernel", "solve_mnk", "aggregate",
            "figures"} <= set(rules), tail(result)
    blocks = sorted((slurm / "results" / "kernels" / "pool-5way1shot-seed0" / "blocks").glob("*.npz"))
    assert rules.count("kernel_block") == len(blocks) == 5, tail(result)
    assert len({log for _, _, log in jobs}) == len(jobs), "a job was submitted twice"
    rows = cluster.sacct([job_id for job_id, _, _ in jobs])
    assert len(rows) == len(jobs)
    for job_id, rule, _ in jobs:
        row = rows[job_id]
        assert (row["State"], row["ExitCode"]) == ("COMPLETED", "0:0"), (rule, row)
        assert ("gres/gpu=1" in row["AllocTRES"]) == (rule == "kernel_block"), (rule, row)
    summary = (slurm / "results" / "summary.csv").read_text().splitlines()
    # 1 experiment, MAML/iMAML off: MNK and the two baselines without meta-learning
    assert sorted(line.split(",")[0] for line in summary[1:]) == ["kernel_regression", "mnk", "prototypes"]

    # A local run from the same preprocessed images gives the same tasks and kernel.
    local = copy_project(tmp_path / "local")
    shutil.copytree(slurm / "results" / "data", local / "results" / "data")  # keeps mtimes
    exp = "5way1shot-10char-seed0"
    run = subprocess.run([str(BIN / "snakemake"), "--cores", "2", f"results/kernels/{exp}/kernel.npz"],
                         cwd=local, env={**os.environ, **env_mirror}, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, tail(run)
    assert "preprocess_omniglot" not in run.stdout + run.stderr
    for name in (f"tasks/{exp}/tasks.npz", f"tasks/{exp}/images.npz", f"kernels/{exp}/kernel.npz",
                 *(f"kernels/pool-5way1shot-seed0/blocks/{p.name}" for p in blocks)):
        ours, theirs = load_npz(slurm / "results" / name), load_npz(local / "results" / name)
        assert sorted(ours) == sorted(theirs), name
        for key in ours:
            if "seconds" in key:  # wall times differ from run to run
                continue
            a, b = np.asarray(ours[key]), np.asarray(theirs[key])
            if a.dtype.kind == "f":
                # numba may sum in another order with another thread count
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=0, err_msg=f"{name}:{key}")
            else:
                np.testing.assert_array_equal(a, b, err_msg=f"{name}:{key}")
