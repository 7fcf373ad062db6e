"""The torch-free core every part of dealseg shares: the graph contract, image decoding, pool
listing, ranking and selection, and atomic file writes. Imports numpy and Pillow only."""
