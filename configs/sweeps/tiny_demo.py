"""Two learning rates of the tiny cDDPM, 2 steps each: the sweep machinery's smallest real example (CI).

    python -m sadm_jax.sweep --sweep=configs/sweeps/tiny_demo.py --workdir=W \
        --set=data.data_dir=D [--mode=slurm] [--report]
"""


def get_sweep():
  return {
      "config": "configs/cddpm.py:tiny",
      "overrides": {"train.num_steps": 2, "train.eval_every": 2, "train.checkpoint_every": 2},
      "members": [
          {"name": "lr_2e-3", "overrides": {"optimizer.learning_rate": 2e-3}},
          {"name": "lr_1e-4", "overrides": {"optimizer.learning_rate": 1e-4}},
      ],
  }
