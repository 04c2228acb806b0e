"""Using a trained net outside the training loop: predictions on image files, and an ONNX export."""

from ..data.images import IMAGE_METHOD, load_image
from .export import export_onnx
from .predict import load_predictor, predict_files

__all__ = ["IMAGE_METHOD", "export_onnx", "load_image", "load_predictor", "predict_files"]
