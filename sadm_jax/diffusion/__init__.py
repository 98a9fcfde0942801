"""Stateless diffusion functions over a schedule pytree, simplex noise and single-step reconstruction."""
