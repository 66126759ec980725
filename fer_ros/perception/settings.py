"""The one source of the pipeline's settings: defaults, descriptions, ranges and choices.

The expression node declares its pipeline parameters from `SETTINGS`, `fer-ros analyze` derives
its options from them and bag replay checks its `-p name:=value` overrides against them, so a
default or a range is changed here and only here. `build_pipeline(values)` turns a dict of
values (names as the ROS parameters spell them) into an `ExpressionPipeline`.

The defaults are the measured best for a robot (docs/ros.md): periodic full scans every 5
frames run in a background thread, so three faces at 30 FPS stay within the frame budget on a
2-core CPU. Offline analysis overrides two of them (`OFFLINE`): every frame is scanned in full
and nothing runs in the background, so its results do not depend on timing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Setting:
    """One pipeline setting. `name` is the ROS parameter name (dots group them); the type of
    `default` is the setting's type; `range` (inclusive) for numbers, `choices` for strings."""

    name: str
    default: Any
    description: str
    range: tuple | None = None
    choices: tuple | None = None

    @property
    def flag(self) -> str:
        """The command-line option: `detector.model` -> `--detector-model`."""
        return "--" + self.name.replace(".", "-").replace("_", "-")


DETECTORS = ("default", "haar", "yunet", "mtcnn", "whole")
BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch")

SETTINGS: tuple[Setting, ...] = (
    Setting("detector", "default", "Face detector: 'default' (MTCNN on a 320 px wide copy, or Haar with a "
            "warning where torch or the PyPI package mtcnn is missing), 'mtcnn' (CNN with the weights of the "
            "PyPI package mtcnn, run in torch: finds partly covered and turned faces Haar misses), 'haar' "
            "(Viola-Jones, the paper's; needs nothing beyond OpenCV), 'yunet' (CNN, needs detector.model) or "
            "'whole' (the whole image is one face: for inputs that are already face crops).", choices=DETECTORS),
    Setting("detector.model", "", "Path of the YuNet .onnx file (detector 'yunet')."),
    Setting("detector.downscale_width", 320, "Detect on a copy resized to this width (0: full resolution). "
            "Smaller is faster; faces must stay >= ~24 px there.", range=(0, 8192)),
    Setting("detector.scale_factor", 1.1, "Haar: image pyramid step (> 1; larger is faster, misses more).",
            range=(1.01, 2.0)),
    Setting("detector.min_neighbors", 5, "Haar: overlapping detections needed to accept a face (higher: "
            "fewer false faces, more missed ones).", range=(0, 50)),
    Setting("detector.score_threshold", 0.6, "YuNet: minimum face score.", range=(0.0, 1.0)),
    Setting("detect_interval", 5, "Scan the whole frame for faces every N frames; in between, re-detect only "
            "around the known faces (MTCNN, Haar; much cheaper than a full scan, docs/core.md). A lost face triggers "
            "a full scan on the next frame; a new face appears at most N-1 frames late. Smaller N finds new "
            "faces sooner and costs latency. 1: full scan on every frame.", range=(1, 1000)),
    Setting("async_scan", True, "Run the periodic full-frame scans in a background thread, so no frame waits "
            "for one (lower p95 latency; which frame a new face first appears in then depends on timing). "
            "false: scans run inside the frame that needs them (reproducible results)."),
    Setting("min_face_size", 30, "Ignore faces whose shorter side is below this many image pixels (a "
            "48x48 crop of a smaller face carries little expression).", range=(1, 4096)),
    Setting("max_faces", 20, "Classify at most this many faces per frame (the largest), all in one batch.",
            range=(1, 1000)),
    Setting("hold_frames", 8, "Bridge short detection gaps: a face the detector misses (turned, a hand over "
            "it) is searched for near its last box with a lower threshold and the profile cascade, and "
            "otherwise kept, following it with optical flow, for up to this many frames before it counts "
            "as gone. 0: off (a missed face is gone at once).", range=(0, 300)),
    Setting("backend", "auto", "Classifier backend: 'auto' (TensorRT on an NVIDIA GPU when available, else "
            "ONNX Runtime), 'onnxruntime', 'tensorrt' (falls back to onnxruntime on any engine problem) "
            "or 'torch' (model_path is a training checkpoint).", choices=BACKENDS),
    Setting("classifier_threads", 0, "CPU threads of the classifier (onnxruntime/torch); 0: min(2, cores).",
            range=(0, 256)),
    Setting("flip_average", True, "Test-time averaging: also classify each face's mirror image (same batch) "
            "and average the logits; doubles the classifier's batch (model card: accuracy per setting)."),
    Setting("crop_average", False, "Test-time averaging: also classify the centre and four corner crops of "
            "90% side of each face and average; with flip_average 12 views per face, 6x the classifier's "
            "batch (model card: accuracy per setting)."),
    Setting("model_path", "", "Expression model (.onnx, input [N,1,48,48] in [-1,1], output 7 logits); "
            "empty: the model shipped in the package (fer_ros/models/fer_mobilenet_v1.onnx)."),
    Setting("crop_scale", 0.0, "Side of the square face crop in detector-box sides; 0: the framing measured "
            "for the detector (fer_ros.perception.preprocess.FRAMINGS), which matches the faces the model "
            "was trained on.", range=(0.0, 3.0)),
    Setting("crop_shift_y", 0.0, "With crop_scale > 0: move the crop down by this fraction of the box side.",
            range=(-1.0, 1.0)),
    Setting("tracking", True, "Keep a stable face_id per person across frames (and smooth their scores); "
            "false: ids are 1..N per frame, raw scores."),
    Setting("smoothing", 0.6, "Temporal smoothing of each tracked face's probabilities: weight of the past "
            "in an exponential moving average (0: none; 0.9: very smooth, slower to react).", range=(0.0, 0.99)),
    Setting("tracking.iou_threshold", 0.3, "Minimum box overlap (IoU) for a face to keep its track id from "
            "one frame to the next.", range=(0.01, 1.0)),
    Setting("tracking.max_age_s", 1.0, "Seconds a face may be unseen before its id is retired (ids are "
            "never reused).", range=(0.0, 3600.0)),
    Setting("tracking.max_age_frames", 30, "The same in frames, used for images without a stamp.",
            range=(0, 100000)),
)

BY_NAME = {s.name: s for s in SETTINGS}

#: What offline analysis (`fer-ros analyze`) changes, and why: no frame deadline, reproducible output.
OFFLINE = {"detect_interval": 1, "async_scan": False}

# Detector settings each detector takes (the others are ignored for it).
DETECTOR_KEYS = {"default": ("downscale_width",),  # MTCNN's or, in its absence, Haar's
                 "haar": ("downscale_width", "scale_factor", "min_neighbors"),
                 "yunet": ("model", "downscale_width", "score_threshold"),
                 # mtcnn keeps its own three thresholds (0.6/0.7/0.8); score_threshold's 0.6 is YuNet's.
                 "mtcnn": ("downscale_width",),
                 "whole": ()}


def defaults() -> dict:
    """{name: default} for every setting."""
    return {s.name: s.default for s in SETTINGS}


def fit_value(name: str, value, default, range: tuple | None = None, choices: tuple | None = None):
    """`value` fitted to a parameter with this `default` (its type), inclusive `range` and `choices`:
    an int where a float is expected becomes a float; ValueError naming `name` when it does not fit.
    Also checks the expression node's other parameters (bag replay)."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
    elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif type(value) is not type(default):
        raise ValueError(f"{name} must be a {type(default).__name__}, got {value!r}")
    if range is not None and not isinstance(default, bool) and not range[0] <= value <= range[1]:
        raise ValueError(f"{name} must be in [{range[0]}, {range[1]}], got {value!r}")
    if choices is not None and value not in choices:
        raise ValueError(f"unknown {name} {value!r}: use one of {', '.join(choices)}")
    return value


def check_value(name: str, value):
    """`value` fitted to setting `name` (`fit_value`); ValueError on an unknown name or a bad value."""
    s = BY_NAME.get(name)
    if s is None:
        raise ValueError(f"no pipeline setting {name!r}")
    return fit_value(name, value, s.default, s.range, s.choices)


def resolve(values: dict | None = None) -> dict:
    """The defaults with `values` applied and checked (ValueError on an unknown name or a bad value)."""
    out = defaults()
    for name, value in (values or {}).items():
        out[name] = check_value(name, value)
    return out


def build_pipeline(values: dict | None = None):
    """ExpressionPipeline from setting values (the rest default); ValueError/FileNotFoundError when
    unusable. Names not in SETTINGS are ignored, so a node can pass all its parameters."""
    from .classifier import ExpressionClassifier
    from .pipeline import ExpressionPipeline
    from .preprocess import Framing

    p = resolve({k: v for k, v in (values or {}).items() if k in BY_NAME})
    name = p["detector"]
    det_params = {k: p[f"detector.{k}"] for k in DETECTOR_KEYS[name]}
    if name == "yunet" and not det_params["model"]:
        raise ValueError("detector 'yunet' needs detector.model (path of face_detection_yunet_*.onnx)")
    if "downscale_width" in det_params:
        det_params["downscale_width"] = det_params["downscale_width"] or None
    classifier = ExpressionClassifier(p["model_path"] or None, backend=p["backend"],
                                      threads=p["classifier_threads"] or None, flip_average=p["flip_average"],
                                      crop_average=p["crop_average"])
    return ExpressionPipeline(
        detector=name, detector_params=det_params, classifier=classifier, detect_interval=p["detect_interval"],
        async_scan=p["async_scan"], tracking=p["tracking"], smoothing=p["smoothing"],
        framing=Framing(p["crop_scale"], 0.0, p["crop_shift_y"]) if p["crop_scale"] > 0 else None,
        max_faces=p["max_faces"], min_face_size=p["min_face_size"], hold_frames=p["hold_frames"],
        iou_threshold=p["tracking.iou_threshold"],
        max_age_s=p["tracking.max_age_s"], max_age_frames=p["tracking.max_age_frames"])
