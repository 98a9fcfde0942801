"""Sweeps: members (config, `--config.k=v` overrides, dependencies), a resumable runner, Slurm scripts, the report."""

from sadm_jax.sweeps.members import Member, Sweep, flag, grid, load_sweep, member_config, ordered
