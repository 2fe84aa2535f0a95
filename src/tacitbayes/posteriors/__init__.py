"""Post-hoc Gaussian posteriors around trained weights."""
