"""Stand-ins for the TensorRT 10.x / 11.x Python bindings and cuda-bindings' driver API.

TensorRT and a GPU cannot run here, so these implement just the documented calls the backend
makes (a call outside them fails with AttributeError), with the documented failure signals:
CUresult codes in the first element of every driver result; set_input_shape /
set_tensor_address / execute_async_v3 returning False; build_serialized_network returning an
IHostMemory-like buffer or None; trt.Builder raising without a CUDA device; 11.x without
BuilderFlag.FP16, EXPLICIT_BATCH and platform_has_fast_fp16. The "engine" runs the ONNX model
the parser was given (for 11.x's FP16 route: the FP16 copy) in onnxruntime.
"""

from __future__ import annotations

import ctypes
import enum
import types

import numpy as np
import onnx
import onnxruntime as ort


class CUresult(enum.IntEnum):
    CUDA_SUCCESS = 0
    CUDA_ERROR_INVALID_VALUE = 1
    CUDA_ERROR_NOT_INITIALIZED = 3
    CUDA_ERROR_NO_DEVICE = 100
    CUDA_ERROR_INVALID_DEVICE = 101
    CUDA_ERROR_INVALID_CONTEXT = 201


class CUdevice_attribute(enum.IntEnum):
    CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
    CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76


class FakeStream:
    def __init__(self, handle):
        self.handle = handle

    def __int__(self):
        return self.handle


class FakeDriver(types.ModuleType):
    """cuda.bindings.driver: a context stack, device memory in numpy, pinned memory in ctypes."""

    def __init__(self, devices: int = 1):
        super().__init__("cuda.bindings.driver")
        self.CUresult, self.CUdevice_attribute = CUresult, CUdevice_attribute
        self.devices, self.initialized = devices, False
        self.retained = 0           # primary-context retain count (0 after a clean close)
        self.stack = []             # contexts made current on this thread
        self.device_mem, self.host_mem, self.streams = {}, {}, set()
        self._next = 0x7000_0000

    def _need_ctx(self):
        return None if self.stack else CUresult.CUDA_ERROR_INVALID_CONTEXT

    def cuInit(self, flags):
        self.initialized = True
        return (CUresult.CUDA_SUCCESS,)

    def cuDeviceGetCount(self):
        return (CUresult.CUDA_SUCCESS, self.devices) if self.initialized else (CUresult.CUDA_ERROR_NOT_INITIALIZED, 0)

    def cuDeviceGet(self, i):
        if not self.devices:
            return CUresult.CUDA_ERROR_NO_DEVICE, None
        return (CUresult.CUDA_SUCCESS, i) if 0 <= i < self.devices else (CUresult.CUDA_ERROR_INVALID_DEVICE, None)

    def cuDeviceGetName(self, length, dev):
        return CUresult.CUDA_SUCCESS, b"Fake GPU 9000".ljust(length, b"\0")

    def cuDeviceGetAttribute(self, attr, dev):
        return CUresult.CUDA_SUCCESS, {75: 8, 76: 9}[int(attr)]

    def cuDevicePrimaryCtxRetain(self, dev):
        self.retained += 1
        return CUresult.CUDA_SUCCESS, ("ctx", dev)

    def cuDevicePrimaryCtxRelease(self, dev):
        if self.retained == 0:
            return (CUresult.CUDA_ERROR_INVALID_CONTEXT,)
        self.retained -= 1
        return (CUresult.CUDA_SUCCESS,)

    def cuCtxPushCurrent(self, ctx):
        self.stack.append(ctx)
        return (CUresult.CUDA_SUCCESS,)

    def cuCtxPopCurrent(self):
        return (CUresult.CUDA_SUCCESS, self.stack.pop()) if self.stack else (CUresult.CUDA_ERROR_INVALID_CONTEXT, None)

    def cuStreamCreate(self, flags):
        if err := self._need_ctx():
            return err, None
        self._next += 0x100
        self.streams.add(self._next)
        return CUresult.CUDA_SUCCESS, FakeStream(self._next)

    def cuStreamDestroy(self, stream):
        self.streams.discard(int(stream))
        return (self._need_ctx() or CUresult.CUDA_SUCCESS,)

    def cuStreamSynchronize(self, stream):
        return (self._need_ctx() or CUresult.CUDA_SUCCESS,)

    def cuMemAlloc(self, nbytes):
        if err := self._need_ctx():
            return err, None
        self._next += 0x100000
        self.device_mem[self._next] = np.zeros(nbytes, np.uint8)
        return CUresult.CUDA_SUCCESS, self._next

    def cuMemAllocHost(self, nbytes):
        if err := self._need_ctx():
            return err, None
        buf = (ctypes.c_char * nbytes)()
        self.host_mem[ctypes.addressof(buf)] = buf
        return CUresult.CUDA_SUCCESS, ctypes.addressof(buf)

    def cuMemFree(self, ptr):
        return (self._need_ctx() or (CUresult.CUDA_SUCCESS if self.device_mem.pop(ptr, None) is not None
                                     else CUresult.CUDA_ERROR_INVALID_VALUE),)

    def cuMemFreeHost(self, ptr):
        return (self._need_ctx() or (CUresult.CUDA_SUCCESS if self.host_mem.pop(ptr, None) is not None
                                     else CUresult.CUDA_ERROR_INVALID_VALUE),)

    def cuMemcpyHtoDAsync(self, dst, src, nbytes, stream):
        if self._need_ctx() or dst not in self.device_mem or int(stream) not in self.streams:
            return (CUresult.CUDA_ERROR_INVALID_VALUE,)
        self.device_mem[dst][:nbytes] = np.frombuffer(ctypes.string_at(src, nbytes), np.uint8)
        return (CUresult.CUDA_SUCCESS,)

    def cuMemcpyDtoHAsync(self, dst, src, nbytes, stream):
        if self._need_ctx() or src not in self.device_mem or int(stream) not in self.streams:
            return (CUresult.CUDA_ERROR_INVALID_VALUE,)
        ctypes.memmove(dst, self.device_mem[src].ctypes.data, nbytes)
        return (CUresult.CUDA_SUCCESS,)


class HostMemory(bytearray):
    """IHostMemory-like: a buffer with nbytes (what build_serialized_network returns)."""

    @property
    def nbytes(self):
        return len(self)


def fake_tensorrt(version: str, driver: FakeDriver, calls: list, fail: set = frozenset()):
    """A `tensorrt` module of the given major version. `fail` names calls that report failure:
    "build" (None from build_serialized_network), "set_input_shape", "set_tensor_address",
    "execute_async_v3"."""
    major = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="ws")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.DataType = types.SimpleNamespace(FLOAT="float32", HALF="float16")
    if major == 10:
        trt.BuilderFlag = types.SimpleNamespace(FP16="fp16", TF32="tf32")
        trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0, STRONGLY_TYPED=1)
    else:  # 11: weak typing removed
        trt.BuilderFlag = types.SimpleNamespace(TF32="tf32")
        trt.NetworkDefinitionCreationFlag = types.SimpleNamespace()
    onnx_dtype = {onnx.TensorProto.FLOAT: trt.DataType.FLOAT, onnx.TensorProto.FLOAT16: trt.DataType.HALF}

    def need_ctx(what):
        assert driver.stack, f"{what} called without a current CUDA context"

    class Context:
        def __init__(self, engine):
            self.engine, self.shape, self.addr = engine, None, {}

        def set_input_shape(self, name, shape):
            ok = ("set_input_shape" not in fail and name == engine_io(self.engine)[0]
                  and tuple(shape[1:]) == (1, 48, 48) and 1 <= shape[0] <= self.engine.max_batch)
            self.shape = tuple(shape) if ok else None
            return ok

        def set_tensor_address(self, name, ptr):
            if "set_tensor_address" in fail or ptr not in driver.device_mem:
                return False
            self.addr[name] = driver.device_mem[ptr]
            return True

        def execute_async_v3(self, stream_handle):
            need_ctx("execute_async_v3")
            assert int(stream_handle) in driver.streams
            if "execute_async_v3" in fail or self.shape is None:
                return False
            n = self.shape[0]
            inp, out = engine_io(self.engine)
            x = self.addr[inp].view(np.float32)[: n * 48 * 48].reshape(self.shape)
            self.addr[out].view(np.float32)[: n * 7] = self.engine.sess.run(None, {inp: x})[0].ravel()
            calls.append(("execute", n))
            return True

    def engine_io(engine):
        return engine.model.graph.input[0].name, engine.model.graph.output[0].name

    class Engine:
        def __init__(self, model_bytes, max_batch):
            self.model = onnx.load_from_string(model_bytes)
            self.sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
            self.max_batch, self.num_io_tensors = max_batch, 2

        def get_tensor_name(self, i):
            return engine_io(self)[i]

        def get_tensor_mode(self, name):
            return "in" if name == engine_io(self)[0] else "out"

        def get_tensor_dtype(self, name):
            vi = [v for v in (*self.model.graph.input, *self.model.graph.output) if v.name == name][0]
            return onnx_dtype[vi.type.tensor_type.elem_type]

        def create_execution_context(self):
            need_ctx("create_execution_context")
            return Context(self)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            need_ctx("deserialize_cuda_engine")
            calls.append("deserialize")
            data = bytes(data)
            if not data.startswith(b"ENGINE"):
                return None
            max_batch, model = data[6:].split(b"|", 1)
            return Engine(model, int(max_batch))

    class Network:
        def __init__(self):
            self.model = None

        def get_input(self, i):
            return types.SimpleNamespace(name=self.model.graph.input[i].name)

    class Parser:
        def __init__(self, network, logger):
            self.network, self.num_errors = network, 0

        def parse(self, data):
            try:
                self.network.model = onnx.load_from_string(bytes(data))
            except Exception:  # noqa: BLE001
                self.num_errors = 1
                return False
            self.network.data = bytes(data)
            g = self.network.model.graph
            calls.append(("parsed", {onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name for t in g.initializer},
                          g.input[0].type.tensor_type.elem_type, g.output[0].type.tensor_type.elem_type))
            return True

        def get_error(self, i):
            return "fake parse error"

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            self.hi = hi[0]
            calls.append(("profile", name, lo[0], opt[0], hi[0]))

    class Config:
        def set_memory_pool_limit(self, pool, size):
            pass

        def set_flag(self, flag):
            calls.append(("flag", flag))

        def add_optimization_profile(self, p):
            self.profile = p
            return 0

    class Builder:
        def __init__(self, logger):
            if not driver.devices:  # what TensorRT does without a CUDA device
                raise TypeError("pybind11::init(): factory function returned nullptr")

        def create_network(self, flags=0):
            return Network()

        create_builder_config = staticmethod(Config)
        create_optimization_profile = staticmethod(Profile)

        def build_serialized_network(self, network, config):
            calls.append("build")
            if "build" in fail:
                return None
            return HostMemory(b"ENGINE" + str(config.profile.hi).encode() + b"|" + network.data)

    if major == 10:
        Builder.platform_has_fast_fp16 = True
    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, Parser, Runtime
    return trt


def install(monkeypatch, version: str, model_path=None, devices: int = 1, fail=frozenset()):
    """Put the stand-ins in sys.modules; returns (trt, driver, calls)."""
    import sys

    calls = []
    driver = FakeDriver(devices)
    trt = fake_tensorrt(version, driver, calls, set(fail))
    cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    cuda.bindings, bindings.driver = bindings, driver
    for name, mod in {"tensorrt": trt, "cuda": cuda, "cuda.bindings": bindings, "cuda.bindings.driver": driver}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return trt, driver, calls
