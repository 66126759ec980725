"""TensorRT backend: cache keys, the FP16 model copy and the backend's logic against stand-ins of
TensorRT 10.x / 11.x and cuda-bindings (always); build/run/cache on a real GPU where one exists."""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import trt_stand_ins
from conftest import faces, make_onnx_model
from fer_ros.cli import main as cli_main
from fer_ros.perception import tensorrt_backend as trtb
from fer_ros.perception.classifier import ExpressionClassifier

GPU = "NVIDIA H100 80GB HBM3"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_onnx_model(tmp_path_factory.mktemp("m") / "rand.onnx")


def test_engine_key_separates_versions_gpus_precisions_and_models(model, tmp_path):
    base = trtb.engine_key(model, "10.3.0", GPU, (9, 0), "fp16", 32)
    names = {trtb.engine_filename(model, base)}
    for k in (trtb.engine_key(model, "11.4.0", GPU, (9, 0), "fp16", 32),
              trtb.engine_key(model, "10.3.0", "Orin", (8, 7), "fp16", 32),
              trtb.engine_key(model, "10.3.0", GPU, (9, 0), "fp32", 32),
              trtb.engine_key(model, "10.3.0", GPU, (9, 0), "fp16", 8),
              trtb.engine_key(make_onnx_model(tmp_path / "other.onnx", seed=5), "10.3.0", GPU, (9, 0), "fp16", 32)):
        names.add(trtb.engine_filename(model, k))
    assert len(names) == 6
    assert all("/" not in n and " " not in n and n.endswith(".engine") for n in names)
    # the same inputs always give the same file
    assert trtb.engine_filename(model, trtb.engine_key(model, "10.3.0", GPU, (9, 0), "fp16", 32)) in names
    with pytest.raises(ValueError, match="precision"):
        trtb.engine_key(model, "10.3.0", GPU, (9, 0), True, 32)  # a bool is not a precision


def test_default_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("FER_ROS_ENGINE_CACHE", str(tmp_path / "c"))
    assert trtb.default_cache_dir() == tmp_path / "c"


def test_fp16_copy_keeps_float32_io_and_the_model_s_answers(model):
    data = trtb.fp16_onnx_copy(model)
    m16 = onnx.load_from_string(data)
    assert {t.data_type for t in m16.graph.initializer} == {onnx.TensorProto.FLOAT16}
    assert m16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert m16.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    x = np.random.default_rng(3).uniform(-1, 1, (6, 1, 48, 48)).astype(np.float32)
    ref = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    got = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=2e-2)
    assert not np.allclose(got, ref, atol=1e-6)  # really computed in FP16, not a float32 copy


def import_or_skip(name: str):
    """pytest.importorskip re-raises an ImportError that is not ModuleNotFoundError (bindings
    installed, native libraries missing), and a missing .so can also raise OSError: skip on all."""
    import importlib

    try:
        return importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"{name} does not import here ({type(exc).__name__}: {exc})")


@pytest.mark.parametrize("error", ["ImportError", "OSError"])
def test_bindings_without_native_libraries_skip(tmp_path, monkeypatch, error):
    pkg = tmp_path / "tensorrt_broken_here"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(f"raise {error}('libnvinfer.so.10: cannot open shared object file')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(pytest.skip.Exception, match="libnvinfer"):
        import_or_skip("tensorrt_broken_here")


def test_build_engine_cli_without_tensorrt(model, capsys):
    try:
        import tensorrt  # noqa: F401
        trtb.import_cuda_driver()
        pytest.skip("tensorrt and cuda-bindings import here")
    except Exception:  # noqa: BLE001
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


# ---- real TensorRT on a real GPU (skipped here) -----------------------------------------------

def gpu_trt():
    trt = import_or_skip("tensorrt")
    import_or_skip("cuda.bindings.driver")
    if trtb.cuda_device_count() == 0:
        pytest.skip("no CUDA GPU")
    return trt


@pytest.mark.parametrize("fp16", [False, True])
def test_tensorrt_engine_matches_onnxruntime_and_is_cached(model, tmp_path, fp16):
    gpu_trt()
    x = faces(40)  # more than max_batch: chunked
    ref = ExpressionClassifier(model, backend="onnxruntime").predict(x)
    c = ExpressionClassifier(model, backend="tensorrt", engine_cache_dir=tmp_path, fp16=fp16)
    assert c.backend == "tensorrt"
    np.testing.assert_allclose(c.predict(x), ref, atol=1e-2 if fp16 else 1e-3)
    assert c.predict(np.zeros((0, 48, 48), np.uint8)).shape == (0, 7)
    (engine,) = tmp_path.glob("*.engine")
    assert ("-fp16-" in engine.name) == fp16
    mtime = engine.stat().st_mtime_ns
    c2 = ExpressionClassifier(model, backend="tensorrt", engine_cache_dir=tmp_path, fp16=fp16)
    assert c2.backend == "tensorrt" and engine.stat().st_mtime_ns == mtime  # reused, not rebuilt


def test_unloadable_cached_engine_is_rebuilt(model, tmp_path):
    gpu_trt()
    c = ExpressionClassifier(model, backend="tensorrt", engine_cache_dir=tmp_path, fp16=False)
    (engine,) = tmp_path.glob("*.engine")
    engine.write_bytes(b"engine from another TensorRT version")
    c2 = ExpressionClassifier(model, backend="tensorrt", engine_cache_dir=tmp_path, fp16=False)
    assert c2.backend == "tensorrt"
    assert engine.read_bytes() != b"engine from another TensorRT version"
    np.testing.assert_allclose(c2.predict(faces(4)), c.predict(faces(4)), atol=1e-4)


# ---- the backend's logic against stand-ins of TensorRT 10.x / 11.x and cuda-bindings ---------

@pytest.mark.parametrize("version", ["10.13.0", "11.4.0"])
def test_backend_with_stand_ins(model, tmp_path, monkeypatch, version):
    trt, driver, calls = trt_stand_ins.install(monkeypatch, version)
    x = faces(40)
    ref = ExpressionClassifier(model, backend="onnxruntime").predict(x)

    c = ExpressionClassifier(model, backend="auto", engine_cache_dir=tmp_path)  # auto: TensorRT + a GPU
    assert c.backend == "tensorrt"
    (parsed,) = [e for e in calls if e[0] == "parsed"]
    if version.startswith("10"):  # weak typing: the FP32 model with the FP16 flag
        assert ("flag", "fp16") in calls and parsed[1] == {"float32"}
    else:  # strongly typed: no flag; the FP16 copy with float32 input/output
        assert not [e for e in calls if e[0] == "flag"] and parsed[1] == {"float16"}
    assert parsed[2:] == (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT)
    assert calls.count("build") == 1 and ("profile", "input", 1, 4, 32) in calls
    (engine,) = tmp_path.glob("*.engine")
    assert f"trt{version}" in engine.name and "fake-gpu-9000-sm89-fp16-b32" in engine.name
    meta = json.loads(engine.with_suffix(".json").read_text())
    assert meta["precision"] == "fp16" and meta["fp16_route"] == ("flag" if version.startswith("10") else "onnx")

    calls.clear()
    np.testing.assert_allclose(c.predict(x), ref, atol=1e-5 if version.startswith("10") else 2e-3)
    # 40 faces and their 40 mirror images (flip averaging, the default): chunks of 32 + 32 + 16
    assert [e for e in calls if e[0] == "execute"] == [("execute", 32), ("execute", 32), ("execute", 16)]
    assert driver.stack == []  # every push popped

    calls.clear()
    ExpressionClassifier(model, backend="tensorrt", engine_cache_dir=tmp_path)
    assert "build" not in calls  # the cached engine is reused

    engine.write_bytes(b"garbage from TensorRT 8")
    calls.clear()
    c3 = ExpressionClassifier(model, backend="tensorrt", engine_cache_dir=tmp_path)
    assert c3.backend == "tensorrt" and calls.count("build") == 1  # unloadable: rebuilt
    assert engine.read_bytes().startswith(b"ENGINE")

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"junk" + model.read_bytes())
    with pytest.raises(ValueError):  # TensorRT parse fails -> fallback -> onnxruntime reports the bad file
        ExpressionClassifier(junk, backend="tensorrt", engine_cache_dir=tmp_path)


def test_tensorrt_11_without_the_fp16_converter_builds_and_names_fp32(model, tmp_path, monkeypatch, caplog):
    import sys

    trt, driver, calls = trt_stand_ins.install(monkeypatch, "11.4.0")
    monkeypatch.setitem(sys.modules, "onnxruntime.transformers.float16", None)  # import fails
    with caplog.at_level(logging.WARNING):
        b = trtb.TensorRTBackend(model, cache_dir=tmp_path, fp16=True)
    assert b.precision == "fp32" and "no FP16 flag" in caplog.text
    (engine,) = tmp_path.glob("*.engine")
    assert "-fp32-" in engine.name and "fp16" not in engine.name
    assert [e for e in calls if e[0] == "parsed"][0][1] == {"float32"}
    b.close()


def test_close_frees_buffers_and_releases_the_primary_context(model, tmp_path, monkeypatch):
    trt, driver, calls = trt_stand_ins.install(monkeypatch, "11.4.0")
    b = trtb.TensorRTBackend(model, cache_dir=tmp_path, fp16=False)
    assert driver.retained == 1 and len(driver.device_mem) == 2 and len(driver.host_mem) == 2
    b.logits(np.zeros((3, 1, 48, 48), np.float32))
    b.close()
    assert driver.retained == 0 and not driver.device_mem and not driver.host_mem and not driver.streams
    assert driver.stack == []
    b.close()  # twice: no error, no double release
    assert driver.retained == 0
    with pytest.raises(trtb.TensorRTError, match="closed"):
        b.logits(np.zeros((1, 1, 48, 48), np.float32))


def test_a_failed_cuda_call_names_itself_and_releases_the_context(model, tmp_path, monkeypatch):
    trt, driver, calls = trt_stand_ins.install(monkeypatch, "11.4.0")
    monkeypatch.setattr(driver, "cuStreamCreate", lambda flags: (trt_stand_ins.CUresult.CUDA_ERROR_INVALID_VALUE, None))
    with pytest.raises(trtb.TensorRTError, match="cuStreamCreate failed: CUDA_ERROR_INVALID_VALUE"):
        trtb.TensorRTBackend(model, cache_dir=tmp_path)
    assert driver.retained == 0 and driver.stack == []

    def no_driver(flags):  # what cuda-bindings 12.9 does where no NVIDIA driver is installed
        raise RuntimeError('"cuda" is an NVIDIA driver library and can only be found via system search')

    monkeypatch.setattr(driver, "cuInit", no_driver)
    with pytest.raises(trtb.TensorRTError, match="CUDA cuInit failed .*NVIDIA driver library"):
        trtb.TensorRTBackend(model, cache_dir=tmp_path)
    assert trtb.cuda_device_count() == 0


@pytest.mark.parametrize("version", ["10.13.0", "11.4.0"])
@pytest.mark.parametrize("failing, when", [("set_tensor_address", "start"), ("build", "start"),
                                           ("set_input_shape", "run"), ("execute_async_v3", "run")])
def test_failed_tensorrt_calls_raise_and_the_classifier_falls_back(model, tmp_path, monkeypatch, caplog,
                                                                    version, failing, when):
    trt, driver, calls = trt_stand_ins.install(monkeypatch, version, fail={failing})
    with pytest.raises(trtb.TensorRTError, match=failing.replace("build", "failed to build")):
        b = trtb.TensorRTBackend(model, cache_dir=tmp_path / "direct")
        b.logits(np.zeros((2, 1, 48, 48), np.float32))
    assert driver.stack == [] and driver.retained == (1 if when == "run" else 0)  # a failed start let go
    if when == "run":
        b.close()
    ref = ExpressionClassifier(model, backend="onnxruntime").predict(faces(5))
    with caplog.at_level(logging.WARNING):
        c = ExpressionClassifier(model, backend="tensorrt", engine_cache_dir=tmp_path)
        assert c.backend == ("onnxruntime" if when == "start" else "tensorrt")
        p = c.predict(faces(5))
    assert c.backend == "onnxruntime" and failing.replace("build", "failed to build") in caplog.text
    np.testing.assert_allclose(p, ref, atol=1e-6)
    assert driver.retained == 0  # the failed backend let go of the GPU


def test_no_cuda_device(model, tmp_path, monkeypatch, caplog):
    trt, driver, calls = trt_stand_ins.install(monkeypatch, "10.13.0", devices=0)
    with pytest.raises(trtb.TensorRTError, match="could not create a builder"):
        trtb.build_engine(trt, model)  # trt.Builder raises without a CUDA device
    with pytest.raises(trtb.TensorRTError, match="cuDeviceGet failed: CUDA_ERROR_NO_DEVICE"):
        trtb.TensorRTBackend(model, cache_dir=tmp_path)
    assert ExpressionClassifier(model, backend="auto").backend == "onnxruntime"
    with caplog.at_level(logging.WARNING):
        assert ExpressionClassifier(model, backend="tensorrt").backend == "onnxruntime"
    assert "CUDA_ERROR_NO_DEVICE" in caplog.text


@pytest.mark.parametrize("version, route", [("10.13.0", "FP16 builder flag"), ("11.4.0", "FP16 copy of the model")])
def test_build_engine_cli_with_stand_ins(model, tmp_path, monkeypatch, capsys, version, route):
    trt, driver, calls = trt_stand_ins.install(monkeypatch, version)
    assert cli_main(["build-engine", "--model", str(model), "--cache-dir", str(tmp_path), "--fp32",
                     "--max-batch", "8"]) == 0
    summary, path = capsys.readouterr().out.strip().splitlines()
    assert summary.startswith(f"TensorRT {version} on Fake GPU 9000 (sm89): fp32 engine") and "built" in summary
    assert path.endswith("fp32-b8.engine") and (tmp_path / path.split("/")[-1]).is_file()
    assert ("flag", "fp16") not in calls and ("profile", "input", 1, 4, 8) in calls
    assert driver.retained == 0  # the command closes its backend
    # the form the docs give: `fer-ros build-engine MODEL.onnx --fp16`
    assert cli_main(["build-engine", str(model), "--cache-dir", str(tmp_path), "--fp16"]) == 0
    summary, path = capsys.readouterr().out.strip().splitlines()
    assert f"TensorRT {version}" in summary and "fp16 engine" in summary and route in summary
    assert path.endswith("fp16-b32.engine")
    assert cli_main(["build-engine", str(model), "--cache-dir", str(tmp_path), "--fp16"]) == 0
    assert "already cached" in capsys.readouterr().out


def test_release_gives_the_gpu_back_and_acquire_takes_it_without_a_rebuild(model, tmp_path, monkeypatch):
    """What the expression node does on deactivate / activate."""
    trt, driver, calls = trt_stand_ins.install(monkeypatch, "10.13.0")
    c = ExpressionClassifier(model, backend="tensorrt", engine_cache_dir=tmp_path, fp16=False)
    x = faces(5)
    before = c.predict(x)
    assert driver.retained == 1 and calls.count("build") == 1
    c.release_device()
    assert driver.retained == 0 and not driver.device_mem and not driver.host_mem and not driver.streams
    for f in tmp_path.glob("*.engine"):
        f.unlink()  # the cache is gone: the engine comes from memory, nothing is rebuilt
    calls.clear()
    c.acquire_device()
    assert c.backend == "tensorrt" and driver.retained == 1 and "build" not in calls
    np.testing.assert_allclose(c.predict(x), before, atol=1e-6)
    c.acquire_device()  # while held: no second context
    assert driver.retained == 1
    c.release_device()
    monkeypatch.setattr(driver, "devices", 0)
    c.acquire_device()  # the GPU went away while released: onnxruntime, still classifying
    assert c.backend == "onnxruntime" and driver.retained == 0
    np.testing.assert_allclose(c.predict(x), before, atol=1e-4)
