"""dealseg.serving."""
