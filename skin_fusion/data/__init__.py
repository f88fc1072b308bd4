"""Lesion data: loading, splits, views of an image, class balancing, the synthetic default set, cached features,
known data sets."""
