"""Accelerator benchmarking: timing of compiled train and inference steps (``python -m experiments.benchmark``)."""
