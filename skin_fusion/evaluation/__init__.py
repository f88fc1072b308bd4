"""Evaluation: the lesion_metrics evaluate module, metric names, subgroup metrics and plots."""
