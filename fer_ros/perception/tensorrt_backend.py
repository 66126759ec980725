"""TensorRT backend: build a serialized engine from the ONNX model, cache it, run it with pycuda.

An engine only runs on the TensorRT version and GPU it was built for, so the cache file name
carries the TensorRT version, the GPU name and compute capability, the precision, the batch
range and a hash of the ONNX file. A stale or foreign engine is therefore never loaded: a new
one is built (tens of seconds, once). A cached file that fails to deserialize anyway is
rebuilt. Callers (ExpressionClassifier) fall back to onnxruntime on any exception from here.

Also the `fer-ros build-engine` subcommand, to build the engine ahead of time on the robot.
TensorRT 10 API: named tensors (set_input_shape / set_tensor_address) and execute_async_v3,
one optimization profile for the dynamic batch dimension.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import threading
from pathlib import Path

import numpy as np

from .preprocess import FACE_SIZE

log = logging.getLogger(__name__)

NUM_CLASSES = 7
DEFAULT_MAX_BATCH = 32
DEFAULT_OPT_BATCH = 4


def default_cache_dir() -> Path:
    """$FER_ROS_ENGINE_CACHE, else ~/.cache/fer_ros/engines."""
    env = os.environ.get("FER_ROS_ENGINE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "fer_ros" / "engines"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def engine_key(onnx_path: Path, trt_version: str, gpu_name: str, compute_capability: tuple,
               fp16: bool, max_batch: int) -> dict:
    """Everything an engine depends on; two engines are interchangeable iff their keys match."""
    return {"onnx_sha256": file_sha256(onnx_path)[:16], "tensorrt": str(trt_version), "gpu": str(gpu_name),
            "compute_capability": f"{compute_capability[0]}.{compute_capability[1]}",
            "precision": "fp16" if fp16 else "fp32", "max_batch": int(max_batch)}


def engine_filename(onnx_path: Path, key: dict) -> str:
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", key["gpu"]).strip("-").lower()
    cc = key["compute_capability"].replace(".", "")
    return (f"{Path(onnx_path).stem}-{key['onnx_sha256']}-trt{key['tensorrt']}-{gpu}-sm{cc}-"
            f"{key['precision']}-b{key['max_batch']}.engine")


def build_engine(trt, onnx_path: Path, fp16: bool = True, max_batch: int = DEFAULT_MAX_BATCH,
                 opt_batch: int = DEFAULT_OPT_BATCH, workspace_mb: int = 256) -> bytes:
    """Parse the ONNX model and build a serialized engine with a dynamic batch 1..max_batch."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    # FP16 is a permission, not an order: TensorRT still picks FP32 kernels where faster. The
    # flag is gone in TensorRT 11 (strong typing) and the capability query deprecated in 10.5.
    if fp16 and hasattr(trt.BuilderFlag, "FP16"):
        config.set_flag(trt.BuilderFlag.FP16)
    elif fp16:
        log.info("this TensorRT has no FP16 builder flag; building in the model's FP32")
    profile = builder.create_optimization_profile()
    name = network.get_input(0).name
    opt_batch = max(1, min(opt_batch, max_batch))
    profile.set_shape(name, (1, 1, FACE_SIZE, FACE_SIZE), (opt_batch, 1, FACE_SIZE, FACE_SIZE),
                      (max_batch, 1, FACE_SIZE, FACE_SIZE))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
    return bytes(serialized)


class TensorRTBackend:
    """Run the expression model as a cached TensorRT engine (input float32 [N,1,48,48] -> logits [N,7])."""

    name = "tensorrt"

    def __init__(self, onnx_path, cache_dir=None, fp16: bool = True, max_batch: int = DEFAULT_MAX_BATCH,
                 device: int = 0):
        import pycuda.driver as cuda
        import tensorrt as trt

        self.trt, self.cuda = trt, cuda
        self.onnx_path = Path(onnx_path)
        self.max_batch = int(max_batch)
        self._lock = threading.Lock()  # one set of device buffers: one call at a time
        cuda.init()
        dev = cuda.Device(device)
        # The primary context is shared with other CUDA users of the process (torch etc.);
        # it is pushed around every call, so predict() works from any thread (ROS executors).
        self.ctx = dev.retain_primary_context()
        self.ctx.push()
        try:
            key = engine_key(self.onnx_path, trt.__version__, dev.name(), dev.compute_capability(), fp16, max_batch)
            cache = Path(cache_dir) if cache_dir else default_cache_dir()
            self.engine_path = cache / engine_filename(self.onnx_path, key)
            self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self.engine = self._load_or_build(key, fp16)
            self.context = self.engine.create_execution_context()
            names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
            self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
            self.output_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
            self.stream = cuda.Stream()
            self.d_input = cuda.mem_alloc(self.max_batch * FACE_SIZE * FACE_SIZE * 4)
            self.d_output = cuda.mem_alloc(self.max_batch * NUM_CLASSES * 4)
            self.h_output = cuda.pagelocked_empty((self.max_batch, NUM_CLASSES), np.float32)
            self.context.set_tensor_address(self.input_name, int(self.d_input))
            self.context.set_tensor_address(self.output_name, int(self.d_output))
        finally:
            self.ctx.pop()

    def _load_or_build(self, key: dict, fp16: bool):
        path = self.engine_path
        if path.is_file():
            engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is not None:
                log.info("loaded TensorRT engine %s", path)
                return engine
            log.warning("cached TensorRT engine %s does not load here; rebuilding", path)
        log.warning("building a TensorRT engine for %s (once per TensorRT version and GPU; may take a minute)",
                    self.onnx_path)
        data = build_engine(self.trt, self.onnx_path, fp16=fp16, max_batch=self.max_batch)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)  # atomic: two nodes starting together never read half a file
            path.with_suffix(".json").write_text(json.dumps(key, indent=1))
        except OSError as exc:
            log.warning("could not cache the TensorRT engine in %s: %s", path.parent, exc)
        engine = self.runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise RuntimeError("TensorRT could not deserialize the engine it just built")
        return engine

    def logits(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, np.float32)
        out = np.empty((len(x), NUM_CLASSES), np.float32)
        with self._lock:
            self._run(x, out)
        return out

    def _run(self, x: np.ndarray, out: np.ndarray) -> None:
        self.ctx.push()
        try:
            for start in range(0, len(x), self.max_batch):
                chunk = x[start:start + self.max_batch]
                n = len(chunk)
                self.context.set_input_shape(self.input_name, (n, 1, FACE_SIZE, FACE_SIZE))
                self.cuda.memcpy_htod_async(self.d_input, chunk, self.stream)
                if not self.context.execute_async_v3(stream_handle=self.stream.handle):
                    raise RuntimeError("TensorRT execute_async_v3 failed")
                self.cuda.memcpy_dtoh_async(self.h_output[:n], self.d_output, self.stream)
                self.stream.synchronize()
                out[start:start + n] = self.h_output[:n]
        finally:
            self.ctx.pop()


# ---- `fer-ros build-engine` ---------------------------------------------------------------

def add_arguments(parser) -> None:
    parser.add_argument("model_pos", nargs="?", metavar="MODEL.onnx",
                        help="ONNX model (default: the shipped expression model)")
    parser.add_argument("--model", metavar="ONNX", help="the same as MODEL.onnx")
    parser.add_argument("--cache-dir", metavar="DIR",
                        help="engine cache folder (default: $FER_ROS_ENGINE_CACHE or ~/.cache/fer_ros/engines)")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true",
                           help="build in FP16 where the GPU supports it (the default)")
    precision.add_argument("--fp32", action="store_true", help="build in FP32")
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                        help="largest number of faces per call (default: %(default)s)")


def run(args) -> int:
    from .models import default_model_path

    given = args.model_pos or args.model
    model = Path(given) if given else default_model_path()
    if not model.is_file():
        print(f"fer-ros build-engine: error: model not found: {model}", file=sys.stderr)
        return 2
    if args.max_batch < 1:
        print("fer-ros build-engine: error: --max-batch must be >= 1", file=sys.stderr)
        return 2
    try:
        import pycuda.driver  # noqa: F401
        import tensorrt  # noqa: F401
    except ImportError as exc:
        print(f"fer-ros build-engine: error: TensorRT is not available here ({exc}); install the "
              "'tensorrt' and 'pycuda' packages on a machine with an NVIDIA GPU", file=sys.stderr)
        return 1
    try:
        backend = TensorRTBackend(model, cache_dir=args.cache_dir, fp16=not args.fp32, max_batch=args.max_batch)
    except Exception as exc:  # noqa: BLE001 - report, don't trace back
        print(f"fer-ros build-engine: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(backend.engine_path)
    return 0
