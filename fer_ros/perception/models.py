"""Where the shipped expression model lives (fer_ros/models/). A module of its own so the
classifier and the TensorRT backend (and its build-engine command) share it without
importing each other."""

from __future__ import annotations

from pathlib import Path

MODEL_FILE = "fer_mobilenet_v1.onnx"
INT8_MODEL_FILE = "fer_mobilenet_v1_int8.onnx"
MODELS_DIR = Path(__file__).resolve().parents[1] / "models"  # fer_ros/models, beside this package


def default_model_path() -> Path:
    """The model shipped with the package (fer_ros/models/fer_mobilenet_v1.onnx)."""
    return MODELS_DIR / MODEL_FILE


def default_int8_model_path() -> Path:
    """An optional INT8 copy of the shipped model (training.quantize), used on CPU when present."""
    return MODELS_DIR / INT8_MODEL_FILE
