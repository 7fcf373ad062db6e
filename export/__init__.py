"""dealseg.export."""
