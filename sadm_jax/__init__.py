"""sadm_jax: JAX/Flax re-implementation of SADM (cDDPM reconstruction + supervised anomaly segmentation)."""

__version__ = "0.1.0"
