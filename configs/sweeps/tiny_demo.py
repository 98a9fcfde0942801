"""Two learning rates of the tiny cDDPM, 2 steps each: the sweep machinery's smallest real example (CI).

    python -m sadm_jax.sweep --sweep=configs/sweeps/tiny_demo.py --workdir=W \
        [--mode=slurm] -- --config.data.data_dir=D
    python -m sadm_jax.sweep --sweep=configs/sweeps/tiny_demo.py --workdir=W --report
"""

from sadm_jax.sweep import Member

STEPS = ("--config.train.num_steps=2", "--config.train.eval_every=2",
         "--config.train.checkpoint_every=2")


def get_sweep():
  return [Member(f"lr_{lr}", "configs/cddpm.py:tiny",
                 STEPS + (f"--config.optimizer.learning_rate={lr}",)) for lr in ("2e-3", "1e-4")]
