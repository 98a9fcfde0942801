"""Synthetic anomalies (DRAEM-style) for stage-II training."""
