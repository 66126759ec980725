"""sensor_msgs/Image <-> numpy conversions (fer_ros.ros.image), including padded rows and
the malformed messages the expression node must reject with a clear error."""

from __future__ import annotations

import array

import cv2
import numpy as np
import pytest

pytest.importorskip("sensor_msgs.msg", reason="ROS 2 messages not installed (run `make build`)")
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from fer_ros.ros.image import bgr_to_image_msg, image_msg_to_array, image_msg_to_bgr  # noqa: E402

RNG = np.random.default_rng(7)


def random_bgr(h=5, w=7):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def raw_msg(pixels: np.ndarray, encoding: str, step: int | None = None, pad_value: int = 0xAB):
    """Build an Image by hand (independent of bgr_to_image_msg), optionally with padded rows."""
    h, w = pixels.shape[:2]
    row = pixels.reshape(h, -1).view(np.uint8).reshape(h, -1)
    step = step or row.shape[1]
    buf = np.full((h, step), pad_value, np.uint8)
    buf[:, : row.shape[1]] = row
    msg = Image(height=h, width=w, encoding=encoding, step=step, is_bigendian=0)
    msg.data = array.array("B", buf.tobytes())
    return msg


@pytest.mark.parametrize("encoding", ["bgr8", "rgb8", "bgra8", "rgba8"])
def test_color_round_trip_is_lossless(encoding):
    bgr = random_bgr()
    header = Header(frame_id="cam")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    msg = bgr_to_image_msg(bgr, header=header, encoding=encoding)
    assert msg.encoding == encoding and (msg.height, msg.width) == (5, 7)
    assert msg.step == 7 * (4 if encoding.endswith("a8") else 3)
    assert len(msg.data) == msg.step * msg.height
    assert msg.header.frame_id == "cam" and msg.header.stamp.nanosec == 345
    np.testing.assert_array_equal(image_msg_to_bgr(msg), bgr)


def test_rgb8_channel_order_is_swapped_on_the_wire():
    bgr = np.zeros((2, 3, 3), np.uint8)
    bgr[..., 0] = 200  # pure blue
    msg = bgr_to_image_msg(bgr, encoding="rgb8")
    wire = np.frombuffer(msg.data, np.uint8).reshape(2, 3, 3)
    assert (wire[..., 2] == 200).all() and (wire[..., 0] == 0).all()


def test_mono8_to_bgr_replicates_gray():
    gray = RNG.integers(0, 256, (4, 9), dtype=np.uint8)
    out = image_msg_to_bgr(raw_msg(gray, "mono8"))
    assert out.shape == (4, 9, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)
    # and encoding BGR as mono8 gives OpenCV's gray
    bgr = random_bgr()
    np.testing.assert_array_equal(image_msg_to_array(bgr_to_image_msg(bgr, encoding="mono8")),
                                  cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))


@pytest.mark.parametrize("encoding,channels", [("bgr8", 3), ("rgb8", 3), ("mono8", 1), ("bgra8", 4)])
def test_odd_width_with_padded_step(encoding, channels):
    """Rows padded to a 32-byte step (as many drivers do) with odd width: padding is ignored."""
    h, w = 3, 5
    pixels = RNG.integers(0, 256, (h, w, channels) if channels > 1 else (h, w), dtype=np.uint8)
    step = ((w * channels + 31) // 32) * 32 + 1  # odd step too
    msg = raw_msg(pixels, encoding, step=step)
    np.testing.assert_array_equal(image_msg_to_array(msg), pixels)
    bgr = image_msg_to_bgr(msg)
    assert bgr.shape == (h, w, 3) and bgr.flags["C_CONTIGUOUS"]
    expected = {"bgr8": pixels, "rgb8": pixels[..., ::-1] if channels == 3 else None,
                "mono8": np.repeat(pixels[..., None], 3, axis=2), "bgra8": pixels[..., :3]}[encoding]
    np.testing.assert_array_equal(bgr, expected)


def test_mono16_big_endian_is_scaled_to_8_bit():
    depth = np.array([[0, 256, 65535]], dtype=">u2")
    msg = raw_msg(depth, "mono16")
    msg.is_bigendian = 1
    np.testing.assert_array_equal(image_msg_to_array(msg), [[0, 256, 65535]])
    np.testing.assert_array_equal(image_msg_to_bgr(msg)[..., 0], [[0, 1, 255]])


def test_yuv422_uyvy_matches_opencv():
    bgr = random_bgr(4, 6)
    uyvy = np.zeros((4, 6, 2), np.uint8)
    uyvy[..., 1] = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)  # Y only with neutral chroma
    uyvy[..., 0] = 128
    out = image_msg_to_bgr(raw_msg(uyvy, "yuv422"))
    np.testing.assert_array_equal(out, cv2.cvtColor(uyvy, cv2.COLOR_YUV2BGR_UYVY))


def make_good():
    return bgr_to_image_msg(random_bgr(4, 6))


@pytest.mark.parametrize("break_it,message", [
    (lambda m: setattr(m, "encoding", "jpeg"), "unsupported image encoding 'jpeg'"),
    (lambda m: setattr(m, "encoding", ""), "unsupported image encoding ''"),
    (lambda m: setattr(m, "step", 10), "step 10 is smaller"),
    (lambda m: setattr(m, "data", m.data[:-5]), "truncated image data"),
    (lambda m: (setattr(m, "width", 0), setattr(m, "height", 0)), "empty image"),
    (lambda m: setattr(m, "height", 99), "truncated image data"),
])
def test_malformed_messages_raise_a_clear_value_error(break_it, message):
    msg = make_good()
    break_it(msg)
    with pytest.raises(ValueError, match=message):
        image_msg_to_bgr(msg)


def test_bgr_to_image_msg_rejects_bad_arrays():
    with pytest.raises(ValueError, match="uint8"):
        bgr_to_image_msg(np.zeros((2, 2, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        bgr_to_image_msg(np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="cannot encode"):
        bgr_to_image_msg(random_bgr(), encoding="yuv422")
