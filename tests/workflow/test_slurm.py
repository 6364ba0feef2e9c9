"""`snakemake --profile slurm`, for real: a one-node SLURM cluster (Debian's slurmctld, slurmd and
munge, with two fake GPUs) runs the tiny DAG's stages up to SFT through sbatch. On the way its
SFT job gets SIGUSR1 (what `--signal=USR1@N` sends before a time limit): it saves a checkpoint
and exits, Snakemake's retry resumes it, and the artifacts equal those of a local run."""

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, bin_path, run
from test_dag import _tree_hashes

DPO_VARIANT = "variants/qwen3-30b-a3b-dpo.yaml"

CONF = ROOT / "tests/data/slurm"
# The rules that make results/sft.
RULES = {"demo_data", "base_model", "prepare_data_eval", "prepare_data_sft", "sft"}


def _stages(*overlays):
    from posttrain import dag
    from posttrain.config import load_params

    files = [ROOT / "params.yaml", *overlays]
    return {s.name: s for s in dag.stages(load_params(files), [str(f) for f in files])}


def test_the_demo_asks_for_no_gpu_and_training_rules_ask_for_the_early_signal():
    stages = _stages()
    assert not any("gpu" in s.resources for s in stages.values())
    trained = {n for n, s in stages.items() if "slurm_extra" in s.resources}
    assert trained == {"sft", "reward_helpful", "reward_safety", "reward_helpful_audit", "rl_helpfulness", "rl_safety",
                       "rl_reasoning", "rl_zero", "preference_dpo", "distill", "distill_baseline"}
    assert stages["sft"].resources["slurm_extra"] == "--signal=USR1@300"
    # resources are no stage's parameters: changing them reruns nothing
    assert not any("resources" in s.params for s in stages.values())


def test_the_production_recipe_asks_each_stage_for_its_gpus():
    stages = _stages(ROOT / "recipes/qwen3-30b-a3b.yaml")
    sft = stages["sft"].resources
    assert sft["gpu"] == 8 and sft["gpu_model"] == "h100" and sft["cpus_per_gpu"] == 8
    assert "cpus_per_task" not in sft and stages["sft"].threads == 64      # the plugin prefers cpus_per_task
    assert sft["slurm_extra"] == "--signal=USR1@600"
    assert stages["evaluate_sft"].resources["gpu"] == 2 and "slurm_extra" not in stages["evaluate_sft"].resources
    assert "gpu" not in stages["prepare_data_sft"].resources and stages["prepare_data_sft"].threads == 16
    assert all(s.resources["gpu"] == 8 for n, s in stages.items() if n.startswith("rl_"))
    assert not any(n.startswith("preference_") for n in stages)     # the DPO variant adds one
    dpo = _stages(ROOT / "recipes/qwen3-30b-a3b.yaml", ROOT / "recipes" / DPO_VARIANT)
    assert dpo["preference_dpo"].resources == {**sft, "runtime": 1440}


def test_a_training_stage_across_nodes_starts_one_launcher_per_node(tmp_path):
    overlay = tmp_path / "nodes.yaml"
    overlay.write_text("resources: {stages: {sft: {nodes: 2}}}\n")
    sft = _stages(ROOT / "recipes/qwen3-30b-a3b.yaml", overlay)["sft"]
    r = sft.resources
    # the plugin's multi-node pattern: no srun of its own (mpi), one task per node, GPUs per node
    assert r["nodes"] == 2 and r["mpi"] == "srun" and r["tasks"] == 2 and "gpu" not in r
    assert r["slurm_extra"] == "--signal=USR1@600 --gpus-per-node=h100:8" and r["cpus_per_task"] == 64
    assert sft.cmd.startswith("srun --ntasks-per-node=1 scripts/srun-accelerate configs/accelerate/fsdp.yaml 8 "
                              "-m posttrain.cli sft --base results/base")
    assert (ROOT / "scripts/srun-accelerate").stat().st_mode & 0o111
    overlay.write_text("resources: {stages: {evaluate: {nodes: 2, gpu: 2}}}\n")
    with pytest.raises(ValueError, match="runs in one process"):
        _stages(ROOT / "recipes/qwen3-30b-a3b.yaml", overlay)


def test_resource_mistakes_are_named(tmp_path):
    from posttrain.config import ConfigError

    typo = tmp_path / "typo.yaml"
    typo.write_text("resources: {stages: {sfft: {gpu: 1}}}\n")
    with pytest.raises(ValueError, match=r"resources.stages \['sfft'\] name no stage kind or rule"):
        _stages(typo)
    short = tmp_path / "short.yaml"
    short.write_text("sft: {gpus: 4, strategy: fsdp}\nresources: {stages: {sft: {gpu: 2}}}\n")
    with pytest.raises(ValueError, match=r"sft.gpus is 4 but the resources give rule sft 2 GPU"):
        _stages(short)
    bad = tmp_path / "bad.yaml"
    bad.write_text("resources: {default: {mem_gb: 4}}\n")
    with pytest.raises(ConfigError, match=r"unknown key 'resources.default.mem_gb'"):
        _stages(bad)


def _cluster_up() -> bool:
    res = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return res.returncode == 0 and res.stdout.strip() in {"idle", "mixed", "allocated"}


def _daemon(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def slurm_cluster():
    """A one-node cluster on this machine: started here (and stopped after) unless one runs."""
    missing = [p for p in ("sbatch", "squeue", "scancel", "slurmctld", "slurmd", "munged")
               if not shutil.which(p) and not Path("/usr/sbin", p).exists()]
    if missing:
        pytest.fail(f"SLURM is not installed (missing {', '.join(missing)}): run `make system-deps` as root, "
                    f"or apt-get install slurmctld slurmd slurm-client munge")
    if _cluster_up():
        yield
        return
    if os.geteuid() != 0:
        pytest.fail("starting the test cluster's daemons needs root (they run as root in CI)")
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 * 8 // 10
    etc = Path("/etc/slurm")
    etc.mkdir(exist_ok=True)
    (etc / "slurm.conf").write_text((CONF / "slurm.conf").read_text().format(cpus=os.cpu_count(),
                                                                              memory_mb=memory_mb))
    shutil.copy(CONF / "gres.conf", etc / "gres.conf")
    for d in ("/var/spool/slurmctld", "/var/spool/slurmd", "/var/log/slurm", "/run/munge"):
        Path(d).mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode != 0:
        _daemon("runuser", "-u", "munge", "--", "/usr/sbin/munged")
    _daemon("/usr/sbin/slurmctld")
    _daemon("/usr/sbin/slurmd", "-N", "localhost")
    deadline = time.time() + 60
    while not _cluster_up():
        if time.time() > deadline:
            log = Path("/var/log/slurm/slurmctld.log")
            pytest.fail(f"the test cluster did not come up:\n{log.read_text()[-2000:] if log.exists() else ''}")
        time.sleep(1)
    yield
    subprocess.run(["scancel", "--user", "root"], capture_output=True)
    subprocess.run(["pkill", "-x", "slurmd"], capture_output=True)
    subprocess.run(["pkill", "-x", "slurmctld"], capture_output=True)


def _wait_for(predicate, what: str, proc, log: Path, timeout: float = 600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"snakemake ended ({proc.returncode}) before {what}:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}:\n{log.read_text()[-4000:]}")


def _running_job(comment: str) -> str | None:
    out = subprocess.run(["squeue", "-h", "-o", "%i %k %T"], capture_output=True, text=True).stdout
    return next((i for i, k, state in (line.split() for line in out.splitlines()) if k == comment and
                 state == "RUNNING"), None)


@pytest.mark.slow
def test_profile_slurm_submits_every_rule_and_a_preempted_training_job_resumes(slurm_cluster, project, tmp_path):
    (project / "cluster.yaml").write_text(yaml.safe_dump({
        # long enough to be signalled while it trains
        "sft": {"max_steps": 24, "eval_steps": 12, "save_steps": 12},
        "resources": {"stages": {"sft": {"gpu": 1, "gpu_model": "h100"}}},
    }))
    args = ["results/sft", "--configfile", "tiny.yaml", "cluster.yaml"]

    local = tmp_path / "local"
    shutil.copytree(project, local, symlinks=True)
    run([bin_path("snakemake"), "--cores", "2", *args], local)

    # As the README types it, plus what this cluster without an accounting database needs.
    log = tmp_path / "snakemake.log"
    cmd = [bin_path("snakemake"), "--profile", "slurm", "--verbose", "--slurm-status-command", "squeue",
           "--slurm-no-account", "--jobs", "2", *args, "--default-resources", "slurm_partition=debug",
           "mem_mb=1000", "runtime=30"]
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, cwd=project, stdout=sink, stderr=subprocess.STDOUT, text=True)
        job = _wait_for(lambda: _running_job("rule_sft"), "the sft job ran", proc, log)
        _wait_for(lambda: list((project / ".posttrain/checkpoints").glob("sft-*/initial_eval.json")),
                  "sft began training", proc, log)
        run(["scancel", "--signal=USR1", job], project)
        proc.wait(timeout=1200)
    text = log.read_text()
    assert proc.returncode == 0, text[-5000:]

    # Every rule went through sbatch; sft twice (the signalled attempt and its retry).
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+) \(log: \S+/rule_(\w+)/", text)
    rules = [rule for _, rule in submitted]
    assert set(rules) == RULES and rules.count("sft") == 2, submitted
    sft_calls = [c for c in re.findall(r"sbatch call: (.+)", text) if "rule_sft" in c]
    assert sft_calls and all("--gpus=h100:1" in c and "--signal=USR1@300" in c for c in sft_calls), sft_calls
    assert all("--gpus" not in c for c in re.findall(r"sbatch call: (.+)", text) if "rule_sft" not in c)
    first_sft = next(j for j, rule in submitted if rule == "sft")
    assert first_sft == job
    assert "gpu:h100:1" in run(["scontrol", "show", "job", job], project).stdout
    first_log = (project / f".snakemake/slurm_logs/rule_sft/{job}.log").read_text()
    assert "SIGUSR1 received" in first_log and "exit status 75" in first_log, first_log[-3000:]

    # The retry resumed from the checkpoint saved on the signal, and ended where the local run did.
    metrics = yaml.safe_load((project / "results/sft/metrics.json").read_text())
    assert 1 <= metrics["resumed_from_step"] < 24 and metrics["steps"] == 24
    # the same files, but the records that say the run resumed (metrics.json, and the manifest holding them)
    resumed = ("metrics.json", "manifest.json")
    assert _tree_hashes(project / "results", resumed) == _tree_hashes(local / "results", resumed)
    ours, theirs = (yaml.safe_load((d / "results/sft/metrics.json").read_text()) for d in (project, local))
    assert ours.keys() == theirs.keys()
    for key in ours.keys() - {"resumed_from_step"}:
        if isinstance(ours[key], float):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-5), key
        else:
            assert ours[key] == theirs[key], key


@pytest.mark.slow
def test_the_production_recipe_rehearses_under_profile_slurm(slurm_cluster, tmp_path):
    """`posttrain rehearse recipes/qwen3-30b-a3b.yaml recipes/variants/qwen3-30b-a3b-dpo.yaml --
    --profile slurm`: the production recipe's whole DAG with its DPO variant, every rule through
    sbatch with the recipe's resources scaled to this node (its training rules ask for GPUs of type
    h100), multi-GPU stages as two processes under their accelerate launcher inside the job."""
    from test_rehearsal import PRODUCTION, assert_every_stage_ran

    out = tmp_path / "rehearsal"
    res = run([bin_path("posttrain"), "rehearse", f"recipes/{PRODUCTION}", f"recipes/{DPO_VARIANT}", "--out", str(out),
               "--", "--profile", "slurm", "--verbose", "--slurm-status-command", "squeue", "--slurm-no-account",
               "--jobs", "2", "--default-resources", "slurm_partition=debug"], ROOT)
    assert f"rehearsal of recipes/{PRODUCTION} + recipes/{DPO_VARIANT}" in res.stdout
    assert "every stage ran" in res.stdout
    report = assert_every_stage_ran(out, PRODUCTION, DPO_VARIANT)
    # 8 GPUs on the cluster, with posttrain plan's memory per GPU and the GPU-hours of its steps
    assert re.search(r"^\| preference_dpo \| yes \| 8 \| 1 \| [\d.]+ \| [\d.]+ \|", report, re.M)
    log = (out / "snakemake.log").read_text()
    submitted = set(re.findall(r"has been submitted with SLURM jobid \d+ \(log: \S+/rule_(\w+)/", log))
    local = set(re.findall(r"^localrule (\w+):", log, re.M)) - {"all"}
    assert not local and len(submitted) == report.count("| yes |"), (local, submitted)
    sft_calls = [c for c in re.findall(r"sbatch call: (.+)", log) if "rule_sft" in c]
    assert sft_calls and all("--gpus=h100:2" in c for c in sft_calls), sft_calls
    # what the recipe asks of a real cluster stays in the report: 8 GPUs for SFT, its memory estimate
    assert re.search(r"^\| sft \| yes \| 8 \| 1 \| [\d.]+ \| [\d.]+ \| 215,338 \| \d+ \| "
                     r"2 processes \(gloo\), fsdp config v2 \|", report, re.M)
    assert "| rl.use_vllm |" in report and "vllm (envs/gpu.txt)" in report
