"""Serving a saved model: the predictor, image checks, Grad-CAM, ONNX export and session."""
