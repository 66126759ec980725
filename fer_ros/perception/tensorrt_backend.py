"""TensorRT backend: build a serialized engine from the ONNX model, cache it, run it on a GPU.

Supports TensorRT 10.x and 11.x (named tensors: set_input_shape / set_tensor_address /
execute_async_v3, one optimization profile for the dynamic batch dimension). FP16 differs:
10.x builds with BuilderFlag.FP16 (weak typing: FP16 kernels allowed); 11.x removed that flag
(networks are always strongly typed), so it builds from an FP16 copy of the ONNX model that
keeps float32 inputs and outputs. Where neither route exists the engine is FP32 and is named so.

An engine only runs on the TensorRT version and GPU it was built for, so the cache file name
carries the TensorRT version, the GPU name and compute capability, the precision really built,
the batch range and a hash of the ONNX file: a stale or foreign engine is never loaded, a new
one is built (tens of seconds, once); a cached file that fails to deserialize is rebuilt.

Device buffers, pinned host buffers and the stream come from cuda-bindings (NVIDIA's
cuda-python, wheels on PyPI) through the CUDA driver API, on the device's retained primary
context (shared with torch or anyone else in the process), which close() releases.
Every TensorRT and CUDA call's result is checked; a failure raises TensorRTError and callers
(ExpressionClassifier) fall back to onnxruntime.

Also the `fer-ros build-engine` subcommand, to build the engine ahead of time on the robot.
"""

from __future__ import annotations

import ctypes
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
PRECISIONS = ("fp16", "fp32")


class TensorRTError(RuntimeError):
    """A TensorRT or CUDA call reported failure (the message names the call)."""


def trt_major(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


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
               precision: str, max_batch: int) -> dict:
    """Everything an engine depends on; two engines are interchangeable iff their keys match.
    `precision` is what the build really produces (fp16_route), not what was asked for."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return {"onnx_sha256": file_sha256(onnx_path)[:16], "tensorrt": str(trt_version), "gpu": str(gpu_name),
            "compute_capability": f"{compute_capability[0]}.{compute_capability[1]}",
            "precision": precision, "max_batch": int(max_batch)}


def engine_filename(onnx_path: Path, key: dict) -> str:
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", key["gpu"]).strip("-").lower()
    cc = key["compute_capability"].replace(".", "")
    return (f"{Path(onnx_path).stem}-{key['onnx_sha256']}-trt{key['tensorrt']}-{gpu}-sm{cc}-"
            f"{key['precision']}-b{key['max_batch']}.engine")


def fp16_route(trt, fp16: bool) -> str | None:
    """How this TensorRT builds FP16: "flag" (10.x BuilderFlag.FP16), "onnx" (11.x, strongly
    typed: an FP16 copy of the model), or None (FP32 asked for, or no route available here)."""
    if not fp16:
        return None
    if hasattr(trt.BuilderFlag, "FP16"):
        # Every GPU TensorRT 10 supports has fast FP16, so the deprecated
        # Builder.platform_has_fast_fp16 query (gone in 11) is not needed to name the engine.
        return "flag"
    try:
        import onnx  # noqa: F401
        from onnxruntime.transformers.float16 import convert_float_to_float16  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure: no FP16 route
        log.warning("TensorRT %s has no FP16 flag and the ONNX FP16 converter is unavailable (%s); "
                    "building FP32 (install the 'onnx' package for FP16)", trt.__version__, exc)
        return None
    return "onnx"


def fp16_onnx_copy(onnx_path: Path) -> bytes:
    """The model with FP16 weights and arithmetic but float32 inputs/outputs (Cast nodes at the
    edges), serialized: what a strongly typed TensorRT 11 network needs for an FP16 engine.
    onnxruntime's converter (installed with onnxruntime; the onnxconverter-common algorithm)
    does what NVIDIA's ModelOpt AutoCast does with keep_io_types, without ModelOpt."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(onnx_path))
    return convert_float_to_float16(model, keep_io_types=True).SerializeToString()


def build_engine(trt, onnx_path: Path, precision: str = "fp32", max_batch: int = DEFAULT_MAX_BATCH,
                 opt_batch: int = DEFAULT_OPT_BATCH, workspace_mb: int = 256, route: str | None = None) -> bytes:
    """Parse the ONNX model and build a serialized engine with a dynamic batch 1..max_batch.
    precision "fp16" needs `route` from fp16_route(); raises TensorRTError on any failure."""
    if trt_major(trt) < 10:
        raise TensorRTError(f"TensorRT {trt.__version__} is too old: fer_ros needs TensorRT 10.x or 11.x")
    if precision == "fp16" and route not in ("flag", "onnx"):
        raise ValueError("an fp16 build needs route 'flag' (TensorRT 10) or 'onnx' (TensorRT 11)")
    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except Exception as exc:  # noqa: BLE001 - TensorRT raises a bare TypeError without a GPU
        raise TensorRTError(f"TensorRT could not create a builder (is a CUDA GPU usable?): {exc}") from exc
    network = builder.create_network()  # explicit batch is the default since 10; 11 also types strongly
    parser = trt.OnnxParser(network, logger)
    data = fp16_onnx_copy(onnx_path) if precision == "fp16" and route == "onnx" else Path(onnx_path).read_bytes()
    if not parser.parse(data):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTError(f"TensorRT could not parse {onnx_path}: {errors or 'no details'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if precision == "fp16" and route == "flag":
        config.set_flag(trt.BuilderFlag.FP16)  # a permission: TensorRT keeps FP32 kernels where faster
    profile = builder.create_optimization_profile()
    name = network.get_input(0).name
    opt_batch = max(1, min(opt_batch, max_batch))
    profile.set_shape(name, (1, 1, FACE_SIZE, FACE_SIZE), (opt_batch, 1, FACE_SIZE, FACE_SIZE),
                      (max_batch, 1, FACE_SIZE, FACE_SIZE))
    if config.add_optimization_profile(profile) < 0:
        raise TensorRTError(f"TensorRT rejected the batch 1..{max_batch} optimization profile for {name!r}")
    serialized = builder.build_serialized_network(network, config)  # IHostMemory, or None on failure
    if serialized is None or serialized.nbytes == 0:
        raise TensorRTError(f"TensorRT failed to build an engine from {onnx_path} (its log above says why)")
    return bytes(serialized)


# ---- CUDA through cuda-bindings' driver API -----------------------------------------------

def import_cuda_driver():
    """cuda-bindings' driver module (`cuda.bindings.driver`, cuda-bindings >= 12.6)."""
    from cuda.bindings import driver
    return driver


def cuda_device_count() -> int:
    """CUDA GPUs visible through cuda-bindings; 0 when it, the driver or a GPU is missing."""
    try:
        cu = import_cuda_driver()
        if cu.cuInit(0)[0] != cu.CUresult.CUDA_SUCCESS:
            return 0
        err, count = cu.cuDeviceGetCount()
        return int(count) if err == cu.CUresult.CUDA_SUCCESS else 0
    except Exception:  # noqa: BLE001 - any failure means "no usable GPU here"
        return 0


class CudaDevice:
    """A GPU's retained primary context, one stream and the buffers allocated through it.

    Every driver call returns (CUresult, values...); call() raises TensorRTError naming the call
    on anything but CUDA_SUCCESS. close() frees everything and releases the primary context."""

    def __init__(self, index: int = 0):
        self.cu = import_cuda_driver()
        self.ctx = self.stream = None
        self._device_ptrs, self._host_ptrs = [], []
        self.call("cuInit", 0)
        self.device = self.call("cuDeviceGet", int(index))
        self.name = bytes(self.call("cuDeviceGetName", 256, self.device)).split(b"\0", 1)[0].decode(errors="replace")
        attr = self.cu.CUdevice_attribute
        self.compute_capability = tuple(
            int(self.call("cuDeviceGetAttribute", a, self.device))
            for a in (attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR))
        self.ctx = self.call("cuDevicePrimaryCtxRetain", self.device)
        try:
            with self:
                self.stream = self.call("cuStreamCreate", 0)
        except BaseException:
            self.close()  # release the retained context: nothing else will
            raise

    def call(self, fn: str, *args):
        try:
            err, *values = getattr(self.cu, fn)(*args)
        except Exception as exc:  # noqa: BLE001 - e.g. no driver library: cuda-bindings raises, not returns
            raise TensorRTError(f"CUDA {fn} failed ({type(exc).__name__}: {exc})") from exc
        if err != self.cu.CUresult.CUDA_SUCCESS:
            raise TensorRTError(f"CUDA {fn} failed: {getattr(err, 'name', err)}")
        return values[0] if len(values) == 1 else tuple(values)

    def __enter__(self):  # make the primary context current on this thread (ROS executor threads)
        self.call("cuCtxPushCurrent", self.ctx)
        return self

    def __exit__(self, *exc):
        self.call("cuCtxPopCurrent")

    def device_buffer(self, nbytes: int) -> int:
        ptr = int(self.call("cuMemAlloc", int(nbytes)))
        self._device_ptrs.append(ptr)
        return ptr

    def pinned_array(self, shape: tuple) -> np.ndarray:
        """A float32 array in page-locked host memory, so the stream's copies are truly async."""
        n = int(np.prod(shape))
        ptr = int(self.call("cuMemAllocHost", n * 4))
        self._host_ptrs.append(ptr)
        return np.ctypeslib.as_array((ctypes.c_float * n).from_address(ptr)).reshape(shape)

    def to_device(self, dst: int, src: np.ndarray) -> None:
        self.call("cuMemcpyHtoDAsync", dst, src.ctypes.data, src.nbytes, self.stream)

    def to_host(self, dst: np.ndarray, src: int) -> None:
        self.call("cuMemcpyDtoHAsync", dst.ctypes.data, src, dst.nbytes, self.stream)

    def synchronize(self) -> None:
        self.call("cuStreamSynchronize", self.stream)

    def close(self) -> None:
        """Free the buffers and the stream and release the primary context; safe to call twice.
        Failures are logged, not raised: this runs while shutting down."""
        if self.ctx is None:
            return
        try:
            with self:
                for fn, ptrs in (("cuMemFree", self._device_ptrs), ("cuMemFreeHost", self._host_ptrs)):
                    while ptrs:
                        self.call(fn, ptrs.pop())
                if self.stream is not None:
                    self.call("cuStreamDestroy", self.stream)
                    self.stream = None
        except Exception as exc:  # noqa: BLE001
            log.warning("freeing the TensorRT backend's CUDA buffers failed: %s", exc)
        finally:
            try:
                self.call("cuDevicePrimaryCtxRelease", self.device)
            except Exception as exc:  # noqa: BLE001
                log.warning("releasing the CUDA primary context failed: %s", exc)
            self.ctx = None


# ---- the backend ------------------------------------------------------------------------------

class TensorRTBackend:
    """Run the expression model as a cached TensorRT engine (input float32 [N,1,48,48] -> logits [N,7])."""

    name = "tensorrt"

    def __init__(self, onnx_path, cache_dir=None, fp16: bool = True, max_batch: int = DEFAULT_MAX_BATCH,
                 device: int = 0):
        import tensorrt as trt

        self.trt = trt
        self.trt_version = str(trt.__version__)
        if trt_major(trt) < 10:
            raise TensorRTError(f"TensorRT {self.trt_version} is too old: fer_ros needs TensorRT 10.x or 11.x")
        self.onnx_path = Path(onnx_path)
        self.max_batch = int(max_batch)
        self.built = False  # True when this instance built the engine rather than loading it
        self._lock = threading.Lock()  # one set of device buffers: one call at a time
        self.context = self.engine = self.runtime = None
        self._args = (cache_dir, fp16, device)
        self._plan = None  # the serialized engine, kept so `acquire` never rebuilds
        self.gpu = None
        self.acquire()

    def acquire(self) -> None:
        """Take the GPU: retain the CUDA context, load the engine (the one in memory or the cache,
        built when neither exists) and allocate the buffers. No-op while held."""
        if self.gpu is not None and self.gpu.ctx is not None:
            return
        cache_dir, fp16, device = self._args
        self.gpu = CudaDevice(device)
        try:
            with self.gpu:
                self._setup(self.trt, cache_dir, fp16)
        except BaseException:
            self.close()
            raise

    def release(self) -> None:
        """Give the GPU back (engine, buffers, CUDA context) but keep the serialized engine, so
        `acquire` takes it again in well under a second; `logits` raises until then."""
        self.close()

    def _setup(self, trt, cache_dir, fp16: bool) -> None:
        self.fp16_route = fp16_route(trt, fp16)
        self.precision = "fp16" if self.fp16_route else "fp32"
        key = engine_key(self.onnx_path, self.trt_version, self.gpu.name, self.gpu.compute_capability,
                         self.precision, self.max_batch)
        cache = Path(cache_dir) if cache_dir else default_cache_dir()
        self.engine_path = cache / engine_filename(self.onnx_path, key)
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._load_or_build(key)
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise TensorRTError("TensorRT could not create an execution context (out of GPU memory?)")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        modes = {n: self.engine.get_tensor_mode(n) for n in names}
        inputs = [n for n in names if modes[n] == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if modes[n] == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise TensorRTError(f"engine has inputs {inputs} and outputs {outputs}; expected one of each")
        self.input_name, self.output_name = inputs[0], outputs[0]
        for n in names:  # the FP16 copy keeps float32 I/O; anything else would misread the buffers
            if self.engine.get_tensor_dtype(n) != trt.DataType.FLOAT:
                raise TensorRTError(f"engine tensor {n!r} is {self.engine.get_tensor_dtype(n)}, not float32")
        gpu = self.gpu
        self.d_input = gpu.device_buffer(self.max_batch * FACE_SIZE * FACE_SIZE * 4)
        self.d_output = gpu.device_buffer(self.max_batch * NUM_CLASSES * 4)
        self.h_input = gpu.pinned_array((self.max_batch, 1, FACE_SIZE, FACE_SIZE))
        self.h_output = gpu.pinned_array((self.max_batch, NUM_CLASSES))
        for n, ptr in ((self.input_name, self.d_input), (self.output_name, self.d_output)):
            if not self.context.set_tensor_address(n, ptr):
                raise TensorRTError(f"TensorRT set_tensor_address({n!r}) failed")

    def _load_or_build(self, key: dict):
        path = self.engine_path
        if self._plan is not None:
            engine = self.runtime.deserialize_cuda_engine(self._plan)
            if engine is not None:
                return engine
        if path.is_file():
            data = path.read_bytes()
            engine = self.runtime.deserialize_cuda_engine(data)
            if engine is not None:
                log.info("loaded TensorRT engine %s", path)
                self._plan = data
                return engine
            log.warning("cached TensorRT engine %s does not load here; rebuilding", path)
        log.warning("building a %s TensorRT %s engine for %s (once per TensorRT version and GPU; may take a "
                    "minute)", self.precision, self.trt_version, self.onnx_path)
        data = build_engine(self.trt, self.onnx_path, precision=self.precision, max_batch=self.max_batch,
                            route=self.fp16_route)
        self.built = True
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)  # atomic: two nodes starting together never read half a file
            path.with_suffix(".json").write_text(json.dumps({**key, "fp16_route": self.fp16_route}, indent=1))
        except OSError as exc:
            log.warning("could not cache the TensorRT engine in %s: %s", path.parent, exc)
        engine = self.runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise TensorRTError("TensorRT could not deserialize the engine it just built")
        self._plan = data
        return engine

    def logits(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, np.float32)
        out = np.empty((len(x), NUM_CLASSES), np.float32)
        with self._lock:
            if self.context is None:
                raise TensorRTError("the TensorRT backend is closed")
            with self.gpu:
                self._run(x, out)
        return out

    def _run(self, x: np.ndarray, out: np.ndarray) -> None:
        gpu = self.gpu
        for start in range(0, len(x), self.max_batch):
            chunk = x[start:start + self.max_batch]
            n = len(chunk)
            if not self.context.set_input_shape(self.input_name, (n, 1, FACE_SIZE, FACE_SIZE)):
                raise TensorRTError(f"TensorRT set_input_shape rejected batch {n} (engine profile 1..{self.max_batch})")
            self.h_input[:n] = chunk.reshape(n, 1, FACE_SIZE, FACE_SIZE)
            gpu.to_device(self.d_input, self.h_input[:n])
            if not self.context.execute_async_v3(int(gpu.stream)):
                raise TensorRTError("TensorRT execute_async_v3 failed")
            gpu.to_host(self.h_output[:n], self.d_output)
            gpu.synchronize()
            out[start:start + n] = self.h_output[:n]

    def close(self) -> None:
        """Drop the TensorRT objects, then free the CUDA buffers and release the primary context."""
        gpu = getattr(self, "gpu", None)
        if gpu is None or gpu.ctx is None:
            return
        with self._lock:
            try:
                with gpu:  # TensorRT frees its device memory in the context it was made in
                    self.context = self.engine = self.runtime = None
            except Exception as exc:  # noqa: BLE001
                log.warning("closing the TensorRT engine failed: %s", exc)
            self.h_input = self.h_output = None  # views of pinned memory freed next
            gpu.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass


# ---- `fer-ros build-engine` ---------------------------------------------------------------

def add_arguments(parser) -> None:
    parser.add_argument("model_pos", nargs="?", metavar="MODEL.onnx",
                        help="ONNX model (default: the shipped expression model)")
    parser.add_argument("--model", metavar="ONNX", help="the same as MODEL.onnx")
    parser.add_argument("--cache-dir", metavar="DIR",
                        help="engine cache folder (default: $FER_ROS_ENGINE_CACHE or ~/.cache/fer_ros/engines)")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true",
                           help="build in FP16 (the default): TensorRT 10 with its FP16 flag, TensorRT 11 "
                                "from an FP16 copy of the model; FP32 where neither is available")
    precision.add_argument("--fp32", action="store_true", help="build in FP32")
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                        help="largest number of faces per call (default: %(default)s)")


ROUTES = {"flag": "TensorRT's FP16 builder flag", "onnx": "an FP16 copy of the model, float32 input/output",
          None: "the model's FP32"}


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
    try:  # bindings whose native libraries are missing raise ImportError subclasses or OSError
        import tensorrt
        import_cuda_driver()
    except Exception as exc:  # noqa: BLE001
        print(f"fer-ros build-engine: error: TensorRT is not available here ({type(exc).__name__}: {exc}); "
              "install fer-ros[tensorrt] (tensorrt-cu12 and cuda-bindings) on a machine with an NVIDIA GPU "
              "(docs/core.md)", file=sys.stderr)
        return 1
    try:
        backend = TensorRTBackend(model, cache_dir=args.cache_dir, fp16=not args.fp32, max_batch=args.max_batch)
    except Exception as exc:  # noqa: BLE001 - report, don't trace back
        print(f"fer-ros build-engine: error: TensorRT {getattr(tensorrt, '__version__', '?')}: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"TensorRT {backend.trt_version} on {backend.gpu.name} (sm{''.join(map(str, backend.gpu.compute_capability))}): "
          f"{backend.precision} engine from {ROUTES[backend.fp16_route]}, batch 1..{backend.max_batch}, "
          f"{'built' if backend.built else 'already cached'}")
    print(backend.engine_path)  # last line: the path, for scripts
    backend.close()
    return 0
