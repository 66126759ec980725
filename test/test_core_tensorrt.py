"""TensorRT backend: cache keys (always), build/run/cache/rebuild (only where TensorRT and a GPU exist)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from fer_ros.perception import tensorrt_backend as trtb
from fer_ros.perception.classifier import ExpressionClassifier
from fer_ros.cli import main as cli_main
from test_core_classifier import faces, make_onnx_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_onnx_model(tmp_path_factory.mktemp("m") / "rand.onnx")


def test_engine_key_separates_versions_gpus_precisions_and_models(model, tmp_path):
    base = trtb.engine_key(model, "10.3.0", "NVIDIA H100 80GB HBM3", (9, 0), True, 32)
    names = {trtb.engine_filename(model, base)}
    for k in (trtb.engine_key(model, "10.4.0", "NVIDIA H100 80GB HBM3", (9, 0), True, 32),
              trtb.engine_key(model, "10.3.0", "Orin", (8, 7), True, 32),
              trtb.engine_key(model, "10.3.0", "NVIDIA H100 80GB HBM3", (9, 0), False, 32),
              trtb.engine_key(model, "10.3.0", "NVIDIA H100 80GB HBM3", (9, 0), True, 8),
              trtb.engine_key(make_onnx_model(tmp_path / "other.onnx", seed=5), "10.3.0",
                              "NVIDIA H100 80GB HBM3", (9, 0), True, 32)):
        names.add(trtb.engine_filename(model, k))
    assert len(names) == 6
    assert all("/" not in n and " " not in n and n.endswith(".engine") for n in names)
    # the same inputs always give the same file
    assert trtb.engine_filename(model, trtb.engine_key(model, "10.3.0", "NVIDIA H100 80GB HBM3", (9, 0), True, 32)) \
        in names


def test_default_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("FER_ROS_ENGINE_CACHE", str(tmp_path / "c"))
    assert trtb.default_cache_dir() == tmp_path / "c"


def test_build_engine_cli_without_tensorrt(model, capsys):
    try:
        import pycuda.driver  # noqa: F401
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt and pycuda are installed here")
    except ImportError:
        pass
    assert cli_main(["build-engine", "--model", str(model)]) == 1
    assert "TensorRT is not available" in capsys.readouterr().err
    assert cli_main(["build-engine", "--model", "/nonexistent.onnx"]) == 2


def test_runtime_failure_switches_to_onnxruntime(model, monkeypatch, caplog):
    """An engine that fails at inference time (GPU lost, driver reset) must not stop the robot."""

    class FlakyEngine:
        name = "tensorrt"

        def __init__(self, *a, **k):
            pass

        def logits(self, x):
            raise RuntimeError("CUDA error: an illegal memory access")

    monkeypatch.setattr(trtb, "TensorRTBackend", FlakyEngine)
    c = ExpressionClassifier(model, backend="tensorrt")
    assert c.backend == "tensorrt"
    ref = ExpressionClassifier(model, backend="onnxruntime").predict(faces(3))
    with caplog.at_level(logging.WARNING):
        p = c.predict(faces(3))
    assert c.backend == "onnxruntime" and "switching to onnxruntime" in caplog.text
    np.testing.assert_allclose(p, ref, atol=1e-6)


def gpu_trt():
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (needs an NVIDIA GPU machine)")
    cuda = pytest.importorskip("pycuda.driver", reason="pycuda is not installed")
    try:
        cuda.init()
        if cuda.Device.count() == 0:
            pytest.skip("no CUDA GPU")
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"CUDA not usable: {exc}")
    return trt


def test_tensorrt_engine_matches_onnxruntime_and_is_cached(model, tmp_path):
    gpu_trt()
    x = faces(40)  # more than max_batch: chunked
    ref = ExpressionClassifier(model, backend="onnxruntime").predict(x)
    c = ExpressionClassifier(model, backend="tensorrt", engine_cache_dir=tmp_path, fp16=False)
    assert c.backend == "tensorrt"
    np.testing.assert_allclose(c.predict(x), ref, atol=1e-3)
    assert c.predict(np.zeros((0, 48, 48), np.uint8)).shape == (0, 7)
    engines = list(tmp_path.glob("*.engine"))
    assert len(engines) == 1
    mtime = engines[0].stat().st_mtime_ns
    c2 = ExpressionClassifier(model, backend="tensorrt", engine_cache_dir=tmp_path, fp16=False)
    assert c2.backend == "tensorrt" and engines[0].stat().st_mtime_ns == mtime  # reused, not rebuilt


def test_unloadable_cached_engine_is_rebuilt(model, tmp_path):
    gpu_trt()
    c = ExpressionClassifier(model, backend="tensorrt", engine_cache_dir=tmp_path, fp16=False)
    (engine,) = tmp_path.glob("*.engine")
    engine.write_bytes(b"engine from another TensorRT version")
    c2 = ExpressionClassifier(model, backend="tensorrt", engine_cache_dir=tmp_path, fp16=False)
    assert c2.backend == "tensorrt"
    assert engine.read_bytes() != b"engine from another TensorRT version"
    np.testing.assert_allclose(c2.predict(faces(4)), c.predict(faces(4)), atol=1e-4)


# ---- the backend's logic against a stand-in of the TensorRT 10 / pycuda APIs -------------------
# TensorRT cannot run here; these fakes implement just the documented calls the backend makes
# (and nothing else, so a call outside the API fails), with onnxruntime doing the maths.

class _FakeDevBuf:
    def __init__(self, nbytes):
        self.data = np.zeros(nbytes // 4, np.float32)

    def __int__(self):
        return id(self)


def _fake_modules(model_path, calls):
    import types

    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    buffers = {}

    cuda = types.ModuleType("pycuda.driver")
    cuda.init = lambda: None

    class Device:
        def __init__(self, i):
            pass

        count = staticmethod(lambda: 1)
        name = staticmethod(lambda: "Fake GPU 9000")
        compute_capability = staticmethod(lambda: (8, 9))

        def retain_primary_context(self):
            return types.SimpleNamespace(push=lambda: calls.append("push"), pop=lambda: calls.append("pop"))

    def mem_alloc(nbytes):
        buf = _FakeDevBuf(nbytes)
        buffers[int(buf)] = buf
        return buf

    def htod(dst, src, stream):
        dst.data[: np.asarray(src).size] = np.asarray(src, np.float32).ravel()

    def dtoh(dst, src, stream):
        dst[...] = src.data[: dst.size].reshape(dst.shape)

    cuda.Device, cuda.mem_alloc = Device, mem_alloc
    cuda.Stream = lambda: types.SimpleNamespace(handle=1234, synchronize=lambda: None)
    cuda.pagelocked_empty = lambda shape, dtype: np.zeros(shape, dtype)
    cuda.memcpy_htod_async, cuda.memcpy_dtoh_async = htod, dtoh

    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.9.0"
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="ws")
    trt.BuilderFlag = types.SimpleNamespace(FP16="fp16")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace()

    class Context:
        def __init__(self):
            self.shape, self.addr = None, {}

        def set_input_shape(self, name, shape):
            assert name == "input" and shape[1:] == (1, 48, 48) and 1 <= shape[0] <= 32
            self.shape = shape
            return True

        def set_tensor_address(self, name, ptr):
            self.addr[name] = buffers[ptr]

        def execute_async_v3(self, stream_handle):
            assert stream_handle == 1234
            n = self.shape[0]
            x = self.addr["input"].data[: n * 48 * 48].reshape(self.shape)
            self.addr["logits"].data[: n * 7] = sess.run(None, {"input": x})[0].ravel()
            calls.append(("execute", n))
            return True

    class Engine:
        num_io_tensors = 2
        get_tensor_name = staticmethod(lambda i: ["input", "logits"][i])
        get_tensor_mode = staticmethod(lambda name: "in" if name == "input" else "out")
        create_execution_context = staticmethod(Context)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            calls.append("deserialize")
            return Engine() if bytes(data).startswith(b"ENGINE") else None

    class Network:
        get_input = staticmethod(lambda i: types.SimpleNamespace(name="input"))

    class Parser:
        def __init__(self, network, logger):
            self.num_errors = 0

        def parse(self, data):
            return data[:4] != b"junk"

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            calls.append(("profile", name, lo[0], opt[0], hi[0]))

    class Config:
        def set_memory_pool_limit(self, pool, size):
            pass

        def set_flag(self, flag):
            calls.append(("flag", flag))

        def add_optimization_profile(self, p):
            pass

    class Builder:
        def __init__(self, logger):
            pass

        create_network = staticmethod(lambda flags: Network())
        create_builder_config = staticmethod(Config)
        create_optimization_profile = staticmethod(Profile)

        def build_serialized_network(self, network, config):
            calls.append("build")
            return b"ENGINE built for fake GPU"

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, Parser, Runtime
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = cuda
    return {"tensorrt": trt, "pycuda": pycuda, "pycuda.driver": cuda}


def test_backend_logic_with_api_stand_ins(model, tmp_path, monkeypatch):
    import sys

    calls = []
    for name, mod in _fake_modules(model, calls).items():
        monkeypatch.setitem(sys.modules, name, mod)
    x = faces(40)
    ref = ExpressionClassifier(model, backend="onnxruntime").predict(x)

    c = ExpressionClassifier(model, backend="auto", engine_cache_dir=tmp_path)  # auto: TensorRT + a GPU
    assert c.backend == "tensorrt"
    assert calls.count("build") == 1 and ("flag", "fp16") in calls and ("profile", "input", 1, 4, 32) in calls
    (engine,) = tmp_path.glob("*.engine")
    assert "trt10.9.0" in engine.name and "fake-gpu-9000" in engine.name and "sm89" in engine.name
    assert json.loads(engine.with_suffix(".json").read_text())["gpu"] == "Fake GPU 9000"

    calls.clear()
    np.testing.assert_allclose(c.predict(x), ref, atol=1e-5)
    # 40 faces and their 40 mirror images (flip averaging, the default): chunks of 32 + 32 + 16
    assert [e for e in calls if isinstance(e, tuple)] == [("execute", 32), ("execute", 32), ("execute", 16)]
    assert calls[0] == "push" and calls[-1] == "pop"

    calls.clear()
    ExpressionClassifier(model, backend="tensorrt", engine_cache_dir=tmp_path)
    assert "build" not in calls  # the cached engine is reused

    engine.write_bytes(b"garbage from TensorRT 8")
    calls.clear()
    c3 = ExpressionClassifier(model, backend="tensorrt", engine_cache_dir=tmp_path)
    assert c3.backend == "tensorrt" and calls.count("build") == 1  # unloadable: rebuilt
    assert engine.read_bytes().startswith(b"ENGINE")

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"junk" + model.read_bytes())  # parses in onnxruntime? no: but TensorRT fails first
    calls.clear()
    with pytest.raises(ValueError):  # TensorRT parse fails -> fallback -> onnxruntime reports the bad file
        ExpressionClassifier(junk, backend="tensorrt", engine_cache_dir=tmp_path)


def test_build_engine_cli_with_api_stand_ins(model, tmp_path, monkeypatch, capsys):
    import sys

    calls = []
    for name, mod in _fake_modules(model, calls).items():
        monkeypatch.setitem(sys.modules, name, mod)
    assert cli_main(["build-engine", "--model", str(model), "--cache-dir", str(tmp_path), "--fp32",
                     "--max-batch", "8"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.endswith(".engine") and "fp32-b8" in out and (tmp_path / out.split("/")[-1]).is_file()
    assert ("flag", "fp16") not in calls and ("profile", "input", 1, 4, 8) in calls
    # the form the docs give: `fer-ros build-engine MODEL.onnx --fp16`
    calls.clear()
    assert cli_main(["build-engine", str(model), "--cache-dir", str(tmp_path), "--fp16"]) == 0
    assert "fp16-b32" in capsys.readouterr().out
