"""dealseg.training."""
