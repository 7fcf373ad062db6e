"""dealseg.client."""
