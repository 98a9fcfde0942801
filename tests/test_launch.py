"""Launch scripts: valid bash, fail fast naming a missing variable, pass `--` arguments through unchanged (nothing is launched)."""

import os
import subprocess
import sys

import pytest

from tests.helpers import REPO
SCRIPTS = {  # script -> its required variables, in the order it checks them
    "launch/local_gpus.sh": ("NUM_GPUS",),
    "launch/slurm.sbatch": ("SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_NNODES", "SLURM_NTASKS"),
    "launch/tpu_vm.sh": ("TPU_NAME", "ZONE"),
}
VALUES = {"NUM_GPUS": "2", "SLURM_JOB_ID": "4321", "SLURM_JOB_NODELIST": "gpu[07-08]",
          "SLURM_NNODES": "2", "SLURM_NTASKS": "16", "TPU_NAME": "pod", "ZONE": "us-central2-b"}
ARGS = ["--", "--config=configs/cddpm.py", "--workdir=runs/a b", "--config.seed=7"]


def _run(script, env, args=(), cwd=REPO):
  base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
  return subprocess.run(["bash", os.path.join(REPO, script), *args], env={**base, **env}, cwd=cwd,
                        capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_syntax(script):
  res = subprocess.run(["bash", "-n", os.path.join(REPO, script)], capture_output=True, text=True)
  assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("script,missing",
                         [(s, v) for s, req in sorted(SCRIPTS.items()) for v in req])
def test_fails_fast_naming_the_missing_variable(script, missing, tmp_path):
  required = SCRIPTS[script]
  env = {v: VALUES[v] for v in required[:required.index(missing)]}  # the ones checked before
  res = _run(script, {**env, "DRY_RUN": "1"}, ARGS, cwd=tmp_path)
  assert res.returncode == 2
  assert res.stderr.startswith(f"{missing} is not set: ") and len(res.stderr.splitlines()) == 1
  assert res.stdout == ""


def test_local_gpus_passes_arguments_and_checks_visible_devices():
  res = _run("launch/local_gpus.sh", {"NUM_GPUS": "2", "DRY_RUN": "1"}, ARGS)
  assert res.returncode == 0, res.stderr
  assert res.stdout.strip() == ("CUDA_VISIBLE_DEVICES=0,1 SADM_DISTRIBUTED=off SADM_NUM_GPUS=2 "
                                r"python -m sadm_jax.main --config=configs/cddpm.py "
                                r"--workdir=runs/a\ b --config.seed=7")
  res = _run("launch/local_gpus.sh", {"NUM_GPUS": "2", "CUDA_VISIBLE_DEVICES": "5", "DRY_RUN": "1"})
  assert res.returncode == 2 and "lists 1 GPU(s) but NUM_GPUS=2" in res.stderr
  res = _run("launch/local_gpus.sh", {"NUM_GPUS": "two"})
  assert res.returncode == 2 and "NUM_GPUS=two" in res.stderr


def test_tpu_vm_runs_the_same_command_on_all_workers():
  res = _run("launch/tpu_vm.sh", {"TPU_NAME": "pod", "ZONE": "z", "PROJECT": "p", "DRY_RUN": "1"},
             ARGS)
  assert res.returncode == 0, res.stderr
  out = res.stdout
  assert out.startswith("gcloud compute tpus tpu-vm ssh pod --zone=z --worker=all --command=")
  assert "--project=p" in out
  # JAX_PLATFORMS=tpu: without libtpu JAX stops (one line from sadm_jax.main), not runs on the CPU
  assert r"SADM_DISTRIBUTED=auto\ JAX_PLATFORMS=tpu\ exec\ python\ -m\ sadm_jax.main" in out
  assert r"--workdir=runs/a\\\ b" in out  # quoted twice: for the local and the remote shell


def _fake_bin(tmp_path):
  """scontrol (expands the node list), srun (runs the task script as task 9 = local id 1 on node 2)
  and a python that prints what sadm_jax.main would see."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  scripts = {
      "scontrol": "#!/bin/sh\necho gpu07\necho gpu08\n",
      "srun": "#!/bin/bash\nwhile [[ $1 == --* ]]; do shift; done\n"
              "SLURM_PROCID=9 SLURM_LOCALID=${FAKE_LOCALID:-1} exec \"$@\"\n",
      "fakepython": "#!/bin/bash\necho \"JAX_COORDINATOR_ADDRESS=$JAX_COORDINATOR_ADDRESS "
                    "JAX_NUM_PROCESSES=$JAX_NUM_PROCESSES JAX_PROCESS_ID=$JAX_PROCESS_ID "
                    "JAX_LOCAL_DEVICE_IDS=${JAX_LOCAL_DEVICE_IDS:-unset}\"\n"
                    "printf '[%s]' \"$@\"; echo\n"
                    "echo \"SADM_NUM_GPUS=${SADM_NUM_GPUS:-unset} "
                    "SADM_GPUS_FROM=${SADM_GPUS_FROM:-unset}\"\n",
  }
  for name, text in scripts.items():
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(0o755)
  return bin_dir


@pytest.mark.parametrize("tasks,visible,local_id,local_ids", [
    ("16", None, "1", "1"), ("2", None, "1", "unset"), ("16", "0,1,2,3,4,5,6,7", "3", "3"),
    ("16", "6,7", "3", "unset"),  # --gpus-per-task=2: the task's own 2 GPUs, not device 3
    ("16", "5", "3", "unset")])
def test_slurm_sets_jax_coordinator_per_task(tmp_path, tasks, visible, local_id, local_ids):
  bin_dir = _fake_bin(tmp_path)
  env = {**VALUES, "SLURM_NTASKS": tasks, "SLURM_SUBMIT_DIR": REPO, "FAKE_LOCALID": local_id,
         **({"CUDA_VISIBLE_DEVICES": visible} if visible else {}),
         "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": str(bin_dir / "fakepython")}
  res = subprocess.run(["bash", os.path.join(REPO, "launch/slurm.sbatch"), *ARGS], env=env,
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)
  assert res.returncode == 0, res.stderr
  lines = res.stdout.splitlines()
  per_node = int(tasks) // 2
  assert lines[0] == (f"JAX_COORDINATOR_ADDRESS=gpu07:24321 JAX_NUM_PROCESSES={tasks} "
                      f"tasks/node={per_node} nodes=2")
  assert lines[1] == (f"JAX_COORDINATOR_ADDRESS=gpu07:24321 JAX_NUM_PROCESSES={tasks} "
                      f"JAX_PROCESS_ID=9 JAX_LOCAL_DEVICE_IDS={local_ids}")
  assert lines[2] == "[-m][sadm_jax.main][--config=configs/cddpm.py][--workdir=runs/a b][--config.seed=7]"


@pytest.mark.parametrize("tasks,visible,gpus_on_node,expected", [
    ("16", None, "8", "SADM_NUM_GPUS=1 SADM_GPUS_FROM=slurm"),  # one GPU per task (device id)
    ("2", None, "8", "SADM_NUM_GPUS=8 SADM_GPUS_FROM=slurm"),  # one task per node: all 8
    ("2", "0,1,2,3", "4", "SADM_NUM_GPUS=4 SADM_GPUS_FROM=slurm"),
    ("16", "6,7", "8", "SADM_NUM_GPUS=2 SADM_GPUS_FROM=slurm"),  # --gpus-per-task=2
    ("16", None, None, "SADM_NUM_GPUS=unset SADM_GPUS_FROM=unset"),  # a CPU job: no check
    ("16", None, "0", "SADM_NUM_GPUS=unset SADM_GPUS_FROM=unset")])
def test_slurm_passes_the_gpus_it_gave_each_task(tmp_path, tasks, visible, gpus_on_node,
                                                 expected):
  """sadm_jax.main stops with one line when JAX sees fewer GPUs than Slurm gave the task (a
  jaxlib without CUDA ran a GPU job on the nodes' CPUs with a warning only)."""
  bin_dir = _fake_bin(tmp_path)
  env = {**VALUES, "SLURM_NTASKS": tasks, "SLURM_SUBMIT_DIR": REPO, "FAKE_LOCALID": "3",
         **({"CUDA_VISIBLE_DEVICES": visible} if visible else {}),
         **({"SLURM_GPUS_ON_NODE": gpus_on_node} if gpus_on_node else {}),
         "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": str(bin_dir / "fakepython")}
  res = subprocess.run(["bash", os.path.join(REPO, "launch/slurm.sbatch"), *ARGS], env=env,
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)
  assert res.returncode == 0, res.stderr
  assert res.stdout.splitlines()[3] == expected


def test_slurm_refuses_a_directory_that_is_not_the_repository(tmp_path):
  res = _run("launch/slurm.sbatch", {**VALUES, "SLURM_SUBMIT_DIR": str(tmp_path)}, ARGS)
  assert res.returncode == 2 and "is not the sadm_jax repository" in res.stderr


def test_slurm_refuses_tasks_that_do_not_spread_evenly_over_the_nodes():
  """3 tasks on 2 nodes: tasks/node was 1, so the 2 tasks sharing a node's GPUs got no device of
  their own (JAX_LOCAL_DEVICE_IDS) and both took every GPU of it."""
  res = _run("launch/slurm.sbatch", {**VALUES, "SLURM_NTASKS": "3", "SLURM_SUBMIT_DIR": REPO,
                                     "DRY_RUN": "1"}, ARGS)
  assert (res.returncode, res.stdout) == (2, "")
  assert res.stderr == ("SLURM_NTASKS=3 tasks do not spread evenly over SLURM_NNODES=2 nodes: "
                        "submit with --ntasks-per-node (1 = per node, #GPUs = per GPU)\n")


def test_local_gpus_stops_when_jax_sees_fewer_gpus_than_num_gpus(cli_data_dir, tmp_path):
  """NUM_GPUS=2 where JAX sees no GPU (CUDA skips an index the machine lacks; JAX falls back to
  the CPU): the run went on, on fewer devices, without a word."""
  res = _run("launch/local_gpus.sh", {"NUM_GPUS": "2", "PYTHON": sys.executable,
                                      "JAX_PLATFORMS": "cpu"},
             ["--", "--config=configs/cddpm.py:tiny", f"--workdir={tmp_path / 'w'}",
              f"--config.data.data_dir={cli_data_dir}"])
  assert (res.returncode, res.stderr) == (2, (
      "error: NUM_GPUS=2 but JAX sees 0 local GPU(s) (CUDA_VISIBLE_DEVICES=0,1, it runs on cpu): "
      "set NUM_GPUS (and CUDA_VISIBLE_DEVICES) to GPUs this machine has (nvidia-smi -L lists "
      "them)\n")), res.stderr
  assert not (tmp_path / "w").exists()


def test_the_gpus_jax_sees_are_counted_against_num_gpus(monkeypatch):
  import jax
  from sadm_jax import distributed
  gpu, cpu = type("D", (), {"platform": "gpu"})(), type("D", (), {"platform": "cpu"})()
  monkeypatch.setattr(jax, "local_devices", lambda: [gpu, gpu, gpu])
  env = {"SADM_NUM_GPUS": "4", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}
  assert distributed.gpu_shortfall(env) == (
      "NUM_GPUS=4 but JAX sees 3 local GPU(s) (CUDA_VISIBLE_DEVICES=0,1,2,3): set NUM_GPUS (and "
      "CUDA_VISIBLE_DEVICES) to GPUs this machine has (nvidia-smi -L lists them)")
  assert distributed.gpu_shortfall({**env, "SADM_NUM_GPUS": "3"}) is None
  assert distributed.gpu_shortfall({}) is None  # not started by launch/local_gpus.sh
  monkeypatch.setattr(jax, "local_devices", lambda: [cpu] * 8)  # e.g. one CPU device per core
  assert "JAX sees 0 local GPU(s) (CUDA_VISIBLE_DEVICES=0,1,2,3, it runs on cpu)" in (
      distributed.gpu_shortfall(env))
  # from launch/slurm.sbatch: the advice is about the job's JAX, not about NUM_GPUS
  assert distributed.gpu_shortfall({**env, "SADM_GPUS_FROM": "slurm"}) == (
      "Slurm gave this task 4 GPU(s) but JAX sees 0 (CUDA_VISIBLE_DEVICES=0,1,2,3, it runs on "
      f"cpu): install JAX with CUDA in the job's environment (pip install \"jax[cuda12]=="
      f"{jax.__version__}\", README.md), or submit without GPUs")
