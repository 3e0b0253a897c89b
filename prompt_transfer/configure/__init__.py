"""configure."""
