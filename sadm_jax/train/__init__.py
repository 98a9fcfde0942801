"""Generic sharded, checkpointed training loop and the per-stage train steps."""
