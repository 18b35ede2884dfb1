"""vla-adp."""
