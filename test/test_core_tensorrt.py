"""TensorRT backend: cache keys (always), build/run/cache/rebuild (only where TensorRT and a GPU exist)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from fer_ros import tensorrt_backend as trtb
from fer_ros.classifier import ExpressionClassifier
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
