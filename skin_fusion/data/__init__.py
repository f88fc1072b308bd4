"""Lesion data: loading, splits, class balancing, the synthetic default set, cached features, known data sets."""
