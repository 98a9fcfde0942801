"""Small shared helpers: atomic file writes, PNG output, logging."""
