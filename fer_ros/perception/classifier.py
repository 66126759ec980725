"""Expression classifier: uint8 face crops [N, 48, 48] -> probabilities [N, 7] in LABELS order.

One class, three backends:
- `onnxruntime`: CPU (the CUDA provider when onnxruntime-gpu is installed and a GPU exists).
- `tensorrt`: a serialized TensorRT engine built from the same ONNX model and cached per
  TensorRT version and GPU (fer_ros/perception/tensorrt_backend.py). Any TensorRT problem is logged and
  the classifier falls back to onnxruntime: a robot must not stop because of an engine.
- `torch`: a PyTorch training checkpoint (research: compare a checkpoint with its export).
`auto` picks tensorrt when it is importable and a GPU is present, else onnxruntime.

All faces of a frame go through the network in one batched call.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from fer_ros import LABELS
from .models import default_int8_model_path, default_model_path  # noqa: F401 - re-exported for callers
from .preprocess import FACE_SIZE, normalize, tta_view_count, tta_views

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch")


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def default_threads() -> int:
    """Intra-op threads: all cores up to 2. More threads than cores only adds contention,
    and for a 48x48 MobileNet batch the gain beyond 2 threads is small."""
    return max(1, min(2, os.cpu_count() or 1))


def check_faces(faces) -> np.ndarray:
    """Validate face crops: uint8 [N, 48, 48] (a single [48, 48] crop is accepted as N=1)."""
    if not isinstance(faces, np.ndarray):
        raise TypeError(f"faces must be a numpy array, got {type(faces).__name__}")
    if faces.ndim == 2:
        faces = faces[None]
    if faces.ndim != 3 or faces.shape[1:] != (FACE_SIZE, FACE_SIZE):
        raise ValueError(f"faces must be uint8 [N, {FACE_SIZE}, {FACE_SIZE}] grayscale crops "
                         f"(see fer_ros.perception.preprocess.crop_faces), got shape {faces.shape}")
    if faces.dtype != np.uint8:
        raise ValueError(f"faces must be uint8 grayscale crops in 0..255, got dtype {faces.dtype} "
                         "(pass crops before normalisation; the classifier normalises them)")
    return faces


def cuda_available() -> bool:
    """True when a CUDA GPU is usable from Python (checked through cuda-bindings, then torch)."""
    from .tensorrt_backend import cuda_device_count

    if cuda_device_count() > 0:
        return True
    try:
        import torch
        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


def tensorrt_importable() -> bool:
    try:
        import tensorrt  # noqa: F401
        return True
    except Exception:  # noqa: BLE001
        return False


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, model_path: Path, threads: int | None = None, providers=None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or default_threads())
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning threads burn a core between frames; on a shared 2-core robot PC we yield it.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if providers is None:
            providers = ["CPUExecutionProvider"]
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(model_path), opts, providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types
            raise ValueError(f"could not load the expression model {model_path}: not a valid ONNX model "
                             f"({type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]})") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        shape = inputs[0].shape
        if len(shape) != 4 or list(shape[1:]) != [1, FACE_SIZE, FACE_SIZE]:
            raise ValueError(f"expression model {model_path} takes input shape {shape}, "
                             f"expected [N, 1, {FACE_SIZE}, {FACE_SIZE}]")
        out_shape = outputs[0].shape
        if len(out_shape) != 2 or out_shape[1] != len(LABELS):
            raise ValueError(f"expression model {model_path} outputs shape {out_shape}, expected [N, {len(LABELS)}]")
        self.providers = self.session.get_providers()

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: x})[0]


class TorchBackend:
    """A training checkpoint ({"config", "state_dict", "labels"} from training.train; the network
    is rebuilt by fer_ros.perception.mobilenet) or a TorchScript file. Neither way of loading
    runs Python code from the file: checkpoints are read with weights_only=True and TorchScript
    with torch.jit.load, and a pickled nn.Module is refused. torch is imported only when this
    backend is asked for."""

    name = "torch"

    def __init__(self, model_path: Path, device: str | None = None, threads: int | None = None):
        import torch

        torch.set_num_threads(int(threads or default_threads()))
        self.torch = torch
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        try:
            self.model = self._load(model_path).to(self.device).eval()
        except (FileNotFoundError, ValueError):
            raise
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"could not load the torch checkpoint {model_path}: "
                             f"{type(exc).__name__}: {str(exc)[:200]}") from None

    def _load(self, path: Path):
        try:
            return self.torch.jit.load(str(path), map_location="cpu")
        except Exception:  # noqa: BLE001 - not TorchScript: try a checkpoint
            pass
        from .mobilenet import from_checkpoint

        try:
            model, ckpt = from_checkpoint(path)
        except ValueError as exc:
            raise ValueError(f"{exc} (backend=torch takes a fer_ros training checkpoint or TorchScript)") from None
        labels = ckpt.get("labels", list(LABELS))
        if list(labels) != list(LABELS):
            raise ValueError(f"{path}: a model for the classes {labels}; the classifier needs {list(LABELS)}")
        return model

    def logits(self, x: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model(self.torch.from_numpy(x).to(self.device)).float().cpu().numpy()


class ExpressionClassifier:
    """Classify 48x48 grayscale face crops into the 7 LABELS.

    model_path: the ONNX model (default: the shipped one) or, for backend="torch", a
        training checkpoint or TorchScript file.
    backend: "auto", "onnxruntime", "tensorrt" or "torch".
    threads: CPU intra-op threads (default: min(2, cores)).
    engine_cache_dir, fp16: TensorRT engine cache folder and precision.
    int8: with the default model on the onnxruntime backend, use its INT8 copy
        (fer_mobilenet_v1_int8.onnx) when the package ships one: "auto" (default) = yes if present.
        TensorRT always builds from the FP32 ONNX model (in FP16).
    flip_average, crop_average: test-time averaging. Each face is classified as several views
        in one batch and their logits are averaged (`preprocess.tta_views`): flip_average (on by
        default) adds the mirror image, crop_average (off by default; on in config/therapy.yaml)
        the centre and four corner crops of 90% side (the crops the model was trained on), 12
        views per face with both. More views, higher accuracy, proportionally more classifier
        time: the model card has the accuracy of each setting, docs/core.md the time. Both
        False: the network's raw logits.
    """

    def __init__(self, model_path: str | os.PathLike | None = None, backend: str = "auto",
                 threads: int | None = None, engine_cache_dir: str | os.PathLike | None = None,
                 fp16: bool = True, int8: bool | str = "auto", flip_average: bool = True,
                 crop_average: bool = False):
        if backend not in BACKENDS:
            raise ValueError(f"unknown classifier backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        self.model_path = Path(model_path) if model_path else default_model_path()
        if not self.model_path.is_file():
            hint = (" (the default model ships with the package; reinstall it or pass model_path)"
                    if model_path is None else "")
            raise FileNotFoundError(f"expression model not found: {self.model_path}{hint}")
        if backend == "auto":
            backend = "tensorrt" if tensorrt_importable() and cuda_available() else "onnxruntime"
        self.flip_average = bool(flip_average)
        self.crop_average = bool(crop_average)
        self._impl = None
        if backend == "tensorrt":
            try:
                from .tensorrt_backend import TensorRTBackend
                self._impl = TensorRTBackend(self.model_path, cache_dir=engine_cache_dir, fp16=fp16)
            except Exception as exc:  # noqa: BLE001 - never crash on TensorRT, fall back
                log.warning("TensorRT backend unavailable (%s: %s); falling back to onnxruntime",
                            type(exc).__name__, exc)
                backend = "onnxruntime"
        if self._impl is None:
            if backend == "torch":
                self._impl = TorchBackend(self.model_path, threads=threads)
            else:
                int8_path = default_int8_model_path()
                if model_path is None and int8 and int8_path.is_file():
                    self.model_path = int8_path
                elif int8 is True and model_path is None:
                    raise FileNotFoundError(f"int8=True but there is no INT8 model at {int8_path}")
                self._impl = OnnxRuntimeBackend(self.model_path, threads=threads)
        self.backend = self._impl.name

    @property
    def views_per_face(self) -> int:
        """Images the network sees per face: 1, 2 (flip), 6 (crops) or 12 (both)."""
        return tta_view_count(crops=self.crop_average, flip=self.flip_average)

    def predict_logits(self, faces) -> np.ndarray:
        faces = check_faces(faces)
        if len(faces) == 0:
            return np.zeros((0, len(LABELS)), np.float32)
        views = tta_views(faces, crops=self.crop_average, flip=self.flip_average)  # [V, N, 48, 48]
        x = np.ascontiguousarray(normalize(views.reshape(-1, *faces.shape[1:])))  # one batch, view-major
        try:
            out = self._impl.logits(x)
        except Exception as exc:  # noqa: BLE001
            if self._impl.name != "tensorrt":
                raise
            # A GPU/engine failure at run time: switch to onnxruntime for good, keep running.
            log.warning("TensorRT inference failed (%s: %s); switching to onnxruntime", type(exc).__name__, exc)
            if hasattr(self._impl, "close"):
                self._impl.close()  # free the GPU buffers and the CUDA context now, not at garbage collection
            self._impl = OnnxRuntimeBackend(self.model_path)
            self.backend = self._impl.name
            out = self._impl.logits(x)
        out = np.asarray(out, np.float32).reshape(len(x), len(LABELS))
        return out.reshape(len(views), len(faces), len(LABELS)).mean(0) if len(views) > 1 else out

    def release_device(self) -> None:
        """Give back the GPU (TensorRT: engine, buffers, CUDA context) while nothing is classified,
        e.g. while a lifecycle node is inactive; `acquire_device` takes it again. No-op on a CPU."""
        if hasattr(self._impl, "release"):
            self._impl.release()

    def acquire_device(self) -> None:
        """Take the GPU again after `release_device`; on any TensorRT problem fall back to onnxruntime."""
        if not hasattr(self._impl, "acquire"):
            return
        try:
            self._impl.acquire()
        except Exception as exc:  # noqa: BLE001 - never crash on TensorRT, fall back
            log.warning("TensorRT backend unavailable again (%s: %s); falling back to onnxruntime",
                        type(exc).__name__, exc)
            self._impl = OnnxRuntimeBackend(self.model_path)
            self.backend = self._impl.name

    def predict(self, faces) -> np.ndarray:
        """uint8 [N, 48, 48] -> float32 [N, 7] probabilities (rows sum to 1); N may be 0."""
        return softmax(self.predict_logits(faces).astype(np.float32, copy=True))

    def __repr__(self) -> str:
        return (f"ExpressionClassifier(model_path={str(self.model_path)!r}, backend={self.backend!r}, "
                f"flip_average={self.flip_average}, crop_average={self.crop_average})")
