"""Evaluation: anomaly maps, thresholds, metrics and reports."""
