"""sensor_msgs/Image <-> numpy BGR without cv_bridge (which the PyPI ROS wheels lack).

One code path everywhere, so what the tests check is what runs on a robot. Malformed
messages raise ValueError with a message that says what is wrong; callers log and skip.
"""

from __future__ import annotations

import array

import cv2
import numpy as np

# encoding -> (channels, numpy dtype); the 8-bit colour ones are what cameras publish.
_LAYOUTS = {
    "bgr8": (3, np.uint8), "rgb8": (3, np.uint8), "bgra8": (4, np.uint8), "rgba8": (4, np.uint8),
    "mono8": (1, np.uint8), "8UC1": (1, np.uint8), "8UC3": (3, np.uint8), "8UC4": (4, np.uint8),
    "mono16": (1, np.uint16), "16UC1": (1, np.uint16),
    # packed 4:2:2, 2 bytes per pixel (usb_cam's default output)
    "yuv422": (2, np.uint8), "uyvy": (2, np.uint8), "yuv422_yuy2": (2, np.uint8), "yuyv": (2, np.uint8),
}
_TO_BGR = {
    "rgb8": cv2.COLOR_RGB2BGR, "bgra8": cv2.COLOR_BGRA2BGR, "rgba8": cv2.COLOR_RGBA2BGR,
    "8UC4": cv2.COLOR_BGRA2BGR, "mono8": cv2.COLOR_GRAY2BGR, "8UC1": cv2.COLOR_GRAY2BGR,
    "mono16": cv2.COLOR_GRAY2BGR, "16UC1": cv2.COLOR_GRAY2BGR,
    "yuv422": cv2.COLOR_YUV2BGR_UYVY, "uyvy": cv2.COLOR_YUV2BGR_UYVY,
    "yuv422_yuy2": cv2.COLOR_YUV2BGR_YUY2, "yuyv": cv2.COLOR_YUV2BGR_YUY2,
}
SUPPORTED_ENCODINGS = tuple(_LAYOUTS)


def image_msg_to_array(msg) -> np.ndarray:
    """The pixels of an Image message as an [H,W] or [H,W,C] array in its own encoding (no copy
    when the rows are unpadded). Raises ValueError for unknown encodings or inconsistent sizes."""
    enc = msg.encoding
    if enc not in _LAYOUTS:
        raise ValueError(f"unsupported image encoding {enc!r} (supported: {', '.join(SUPPORTED_ENCODINGS)})")
    channels, dtype = _LAYOUTS[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ValueError(f"empty image: {w}x{h}")
    itemsize = np.dtype(dtype).itemsize
    row = w * channels * itemsize
    if step < row:
        raise ValueError(f"step {step} is smaller than width*bytes_per_pixel = {row} for {w}x{h} {enc}")
    if itemsize > 1 and step % itemsize:
        raise ValueError(f"step {step} is not a multiple of {itemsize} for {enc}")
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    if buf.size < step * h:
        raise ValueError(f"truncated image data: {buf.size} bytes, expected step*height = {step * h} ({w}x{h} {enc})")
    rows = buf[: step * h].reshape(h, step)[:, :row]
    if itemsize > 1:
        order = ">" if msg.is_bigendian else "<"
        rows = np.ascontiguousarray(rows).view(np.dtype(dtype).newbyteorder(order)).astype(dtype, copy=False)
    if channels == 1:
        return rows.reshape(h, w)
    return rows.reshape(h, w, channels)


def image_msg_to_bgr(msg) -> np.ndarray:
    """Any supported Image message -> contiguous uint8 BGR [H,W,3] (16-bit depth is scaled to 8 bit)."""
    pixels = image_msg_to_array(msg)
    if pixels.dtype == np.uint16:
        pixels = (pixels >> 8).astype(np.uint8)
    code = _TO_BGR.get(msg.encoding)
    if code is not None:
        return cv2.cvtColor(pixels, code)
    return np.ascontiguousarray(pixels)


def bgr_to_image_msg(bgr: np.ndarray, header=None, encoding: str = "bgr8"):
    """A uint8 BGR [H,W,3] (or gray [H,W]) array -> sensor_msgs/Image in `encoding`
    (bgr8, rgb8, mono8, bgra8 or rgba8), unpadded rows; `header` is used as given."""
    from sensor_msgs.msg import Image

    image = np.asarray(bgr)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        image = image if encoding == "mono8" else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an [H,W,3] BGR or [H,W] gray image, got shape {image.shape}")
    if image.ndim == 3:
        convert = {"bgr8": None, "rgb8": cv2.COLOR_BGR2RGB, "mono8": cv2.COLOR_BGR2GRAY,
                   "bgra8": cv2.COLOR_BGR2BGRA, "rgba8": cv2.COLOR_BGR2RGBA}
        if encoding not in convert:
            raise ValueError(f"cannot encode to {encoding!r} (use one of {', '.join(convert)})")
        if convert[encoding] is not None:
            image = cv2.cvtColor(image, convert[encoding])
    image = np.ascontiguousarray(image)
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(image.shape[0]), int(image.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(image.strides[0])
    data = array.array("B")
    data.frombytes(image.data)  # one memcpy; assigning bytes or ndarray converts element-wise
    msg.data = data
    return msg
