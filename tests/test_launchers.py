"""The launchers run as written: launch/gpu_slurm.sbatch and launch/tpu_pod.sh under stand-ins for srun/scontrol
and gcloud that record what they are asked to run, and scripts/install.sh's argument check."""
import os
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _exe(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/usr/bin/env bash\n" + text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_slurm_script_starts_one_process_per_task_with_the_coordinator(tmp_path):
    bin_, repo, log = tmp_path / "bin", tmp_path / "repo", tmp_path / "log"
    _exe(bin_ / "scontrol", 'printf "gpu-a1\\ngpu-a2\\n"\n')
    # srun: run the command once per task, as SLURM does, with SLURM_PROCID set.
    _exe(bin_ / "srun", 'while [[ "$1" == --* ]]; do shift; done\n'
                        'for i in $(seq 0 $((SLURM_NTASKS - 1))); do SLURM_PROCID=$i "$@"; done\n')
    _exe(repo / ".venv" / "bin" / "python", "exit 0\n")  # stands in for the "jax sees a GPU" check
    _exe(repo / ".venv" / "bin" / "otter-jax",
         f'echo "$OTTER_COORDINATOR $OTTER_NUM_PROCESSES $OTTER_PROCESS_ID $*" >> {log}\n')
    env = dict(os.environ, PATH=f"{bin_}:{os.environ['PATH']}", SLURM_JOB_NODELIST="gpu-a[1-2]", SLURM_NTASKS="2",
               SLURM_JOB_ID="77", SLURM_SUBMIT_DIR=str(repo), WORKDIR="/shared/runs/77")
    p = subprocess.run(["bash", str(ROOT / "launch" / "gpu_slurm.sbatch"), "configs/demo.py", "--config.train.steps=5"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    lines = log.read_text().splitlines()
    for pid, line in enumerate(lines):
        assert line.startswith(f"gpu-a1:12355 2 {pid} train --config configs/demo.py --config.workdir=/shared/runs/77 "
                               "--config.distributed.mode=on --config.train.steps=5"), line
    assert len(lines) == 2
    _exe(repo / ".venv" / "bin" / "python", "exit 1\n")  # a CPU-only jax: refuses instead of training on CPU
    p = subprocess.run(["bash", str(ROOT / "launch" / "gpu_slurm.sbatch"), "configs/demo.py"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "--accelerator cuda" in p.stderr


def test_tpu_pod_script_runs_the_same_command_on_every_worker(tmp_path):
    bin_, log = tmp_path / "bin", tmp_path / "gcloud.log"
    # gcloud: log each call on one line; `describe` fails (the slice does not exist yet)
    _exe(bin_ / "gcloud", f'echo "$*" | tr "\\n" " " >> {log}; echo >> {log}\n[ "$6" != describe ]\n')
    env = dict(os.environ, PATH=f"{bin_}:{os.environ['PATH']}", PROJECT="p", ZONE="z", ACCELERATOR="v4-16",
               BUCKET="gs://b/otter", RUN="r1", TMPDIR=str(tmp_path))
    p = subprocess.run(["bash", str(ROOT / "launch" / "tpu_pod.sh"), "configs/demo.py", "--config.train.steps=5"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    calls = [" ".join(c.split()) for c in log.read_text().splitlines()]
    assert calls[0].startswith("compute tpus tpu-vm --project=p --zone=z describe otter-jax-v4-16")
    assert any("create otter-jax-v4-16 --accelerator-type=v4-16 --version=tpu-ubuntu2204-base" in c for c in calls)
    ssh = [c for c in calls if " ssh " in f" {c} "]
    assert all("--worker=all" in c for c in ssh) and len(ssh) == 2
    assert "uv venv --seed --python 3.11" in ssh[0] and "scripts/install.sh --accelerator tpu" in ssh[0]
    assert ("otter-jax train --config configs/demo.py --config.distributed.mode=on --config.workdir=gs://b/otter/r1"
            in ssh[1]) and ssh[1].rstrip().endswith("--config.train.steps=5")


def test_install_script_checks_the_accelerator():
    p = subprocess.run(["bash", str(ROOT / "scripts" / "install.sh"), "--accelerator", "rocm"], capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 2 and "must be cpu, tpu or cuda (got 'rocm')" in p.stderr
