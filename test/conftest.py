"""Shared fixtures and helpers: the read-only data folder (../shared or $FER_SHARED), media readers,
random face crops and the one builder of the small ONNX test model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.data import shared_path

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """$FER_SHARED, else ../shared beside the checkout (the one rule, in training.data)."""
    return shared_path()


def need_shared(*parts: str) -> Path:
    """Path inside the shared data folder, or skip the test saying what is missing."""
    path = shared_dir().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not available: {path} is missing (set FER_SHARED to the data folder)")
    return path


@pytest.fixture(scope="session", autouse=True)
def no_zombie_shared_memory():
    """Before the ROS tests: remove Fast DDS shared-memory files of processes that died earlier
    (an earlier run's SIGKILLed nodes), so that no participant here opens a dead port."""
    from fer_ros.ros.dds import clean_zombie_shm

    clean_zombie_shm()
    yield


@pytest.fixture
def shared():
    return need_shared()


@pytest.fixture
def media():
    return need_shared("media")


# ------------------------------------------------------------------ media


def read(name: str) -> np.ndarray:
    """A BGR image from shared/media (skips when missing)."""
    import cv2

    img = cv2.imread(str(need_shared("media", name)))
    assert img is not None, name
    return img


def frames(name: str) -> list[np.ndarray]:
    """All frames of a video from shared/media (skips when missing)."""
    import cv2

    cap, out = cv2.VideoCapture(str(need_shared("media", name))), []
    while True:
        ok, f = cap.read()
        if not ok:
            return out
        out.append(f)


def scene_cut(video: list[np.ndarray]) -> int:
    """Index of the first frame after the largest content jump (where the face comes in)."""
    import cv2

    small = [cv2.resize(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY), (64, 36)).astype(np.float32) for f in video]
    diffs = [np.abs(a - b).mean() for a, b in zip(small[:-1], small[1:])]
    return int(np.argmax(diffs[: len(diffs) - 2])) + 1  # the last frames may fade to black


# ------------------------------------------------------------------ models


def faces(n: int, seed: int = 1) -> np.ndarray:
    """n random uint8 48x48 face crops."""
    return np.random.default_rng(seed).integers(0, 256, (n, 48, 48), dtype=np.uint8)


def make_onnx_model(path, seed: int = 0, in_shape=("N", 1, 48, 48), n_out: int = 7):
    """A random linear expression model with the shipped model's I/O contract: its predictions
    differ from image to image, so plumbing tests can tell frames apart without the trained model."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array((rng.standard_normal((48 * 48, n_out)) * 0.03).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(n_out).astype(np.float32) * 0.1, "B")
    nodes = [helper.make_node("Flatten", ["input"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "W", "B"], ["logits"])]
    graph = helper.make_graph(nodes, "rand_fer", [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(in_shape))],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", n_out])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def model_for_tests(tmp_dir) -> str:
    """The shipped model when present; else a small random ONNX with the same interface (the
    tests using it check plumbing, not accuracy)."""
    from fer_ros.perception.models import default_model_path

    if default_model_path().is_file():
        return str(default_model_path())
    return str(make_onnx_model(Path(tmp_dir) / "tiny_fer.onnx"))


def faces_msg(expression: str, conf: float = 0.9, face_id: int = 4):
    """A fer_ros/FaceExpressionArray with one face showing `expression` at `conf` (the rest of
    the probability spread evenly), as the expression node would publish it."""
    from fer_ros import LABELS
    from fer_ros.msg import FaceExpression, FaceExpressionArray

    msg = FaceExpressionArray(image_width=640, image_height=480)
    f = FaceExpression(face_id=face_id, expression=expression, confidence=conf, detection_score=0.95)
    f.box.x_offset, f.box.y_offset, f.box.width, f.box.height = 250, 150, 120, 120
    f.scores = [conf if label == expression else (1.0 - conf) / 6 for label in LABELS]
    msg.faces = [f]
    return msg


def ros_context(domain: int):
    """For a module-scoped `ros` fixture: an rclpy context on `domain` with a single-threaded
    executor spinning in a thread (callbacks only hand work on; a MultiThreadedExecutor
    busy-polls and starves the GIL). Yields (context, executor)."""
    import threading

    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    executor = SingleThreadedExecutor(context=context)
    threading.Thread(target=executor.spin, daemon=True).start()
    yield context, executor
    executor.shutdown(timeout_sec=2)
    rclpy.try_shutdown(context=context)
