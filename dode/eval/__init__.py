"""Evaluation: datasets (the embedded digits set, uint8 conversion) and metrics (FD-digits, FID)."""
