"""rosbag2 message types and the messages fer-ros bags hold, without a ROS installation.

Bags written here are standard rosbag2 folders with every message definition and its RIHS01
type hash embedded, so `ros2 bag play/info` and Foxglove read them on a real ROS 2 install.
Our own message types are registered from the package's msg/*.msg files, so the embedded
definitions and hashes are exactly those of the built fer_ros interfaces.

Conventions used by `fer-ros bag` (see docs/bags.md):
- images on `/camera/image_raw` (sensor_msgs/Image), bag log time == header.stamp for made bags;
- ground truth on `/ground_truth/expression` (std_msgs/String, `data` = one FaceExpression
  label). std_msgs/String has no header, so a label belongs to the image whose
  header.stamp equals the label's bag log time. Unlabelled frames carry no label message;
- outputs on `/faces/expressions` (fer_ros/FaceExpressionArray), bag log time == receipt time,
  so receipt time - header.stamp is the end-to-end latency.

Messages here are the `rosbags` dataclasses; the ROS side (record, replay) moves raw CDR bytes
between the bag and rclpy, so nothing is converted twice.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import numpy as np

from fer_ros import LABELS

IMAGE_TOPIC = "/camera/image_raw"
EXPRESSIONS_TOPIC = "/faces/expressions"
ANNOTATED_TOPIC = "/faces/image_annotated"
GROUND_TRUTH_TOPIC = "/ground_truth/expression"
#: One std_msgs/Header per frame the replay published (stamp = the frame's new stamp), so
#: the evaluation knows how many frames went in without storing the images again.
FRAMES_TOPIC = "/replay/frames"

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"  # what image_transport records on robots
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)
STRING_TYPE = "std_msgs/msg/String"
HEADER_TYPE = "std_msgs/msg/Header"
EXPRESSIONS_TYPE = "fer_ros/msg/FaceExpressionArray"
STORAGES = ("mcap", "sqlite3")
BAG_VERSION = 9  # the metadata version rosbag2 writes on Jazzy/Kilted


class BagError(Exception):
    """A bag that cannot be read or written as asked; the message says what and why."""


# --------------------------------------------------------------------------- types


def msg_dir() -> Path:
    """The folder holding FaceExpression.msg etc.: source checkout first, then installs."""
    candidates = [Path(__file__).resolve().parents[1] / "msg"]
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) + [sys.prefix]:
        if prefix:
            candidates.append(Path(prefix) / "share" / "fer_ros" / "msg")
    for folder in candidates:
        if (folder / "FaceExpressionArray.msg").is_file():
            return folder
    raise BagError("cannot find the fer_ros message definitions (msg/*.msg); looked in "
                   + ", ".join(str(c) for c in candidates))


@functools.lru_cache(maxsize=1)
def typestore():
    """Kilted's standard types plus fer_ros/msg/* registered from their .msg files."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    types = {}
    for path in sorted(msg_dir().glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"fer_ros/msg/{path.stem}"))
    store.register(types)
    return store


def _installed_msg_file(msgtype: str) -> Path | None:
    """share/<pkg>/msg/<Name>.msg of an installed ROS package (AMENT_PREFIX_PATH, this venv)."""
    pkg, _, name = msgtype.replace("/msg/", "/").partition("/")
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) + [sys.prefix]:
        path = Path(prefix) / "share" / pkg / "msg" / f"{name}.msg"
        if prefix and path.is_file():
            return path
    return None


def _referenced_types(fields) -> list[str]:
    from rosbags.interfaces import Nodetype

    out = []
    for _, (kind, spec) in fields:
        if kind in (Nodetype.ARRAY, Nodetype.SEQUENCE):
            kind, spec = spec[0]
        if kind == Nodetype.NAME:
            out.append(spec)
    return out


def ensure_type(msgtype: str) -> None:
    """Make a type known to the typestore: standard and fer_ros types are; others are loaded from
    their installed .msg files (with their dependencies), so `record` can store any topic."""
    from rosbags.typesys import get_types_from_msg

    store = typestore()
    pending, found = [msgtype], {}
    while pending:
        name = pending.pop()
        if name in store.fielddefs or name in found:
            continue
        path = _installed_msg_file(name)
        if path is None:
            raise BagError(f"unknown message type {name}: not a standard ROS 2 type and no installed "
                           f"definition (share/{name.split('/')[0]}/msg/*.msg under AMENT_PREFIX_PATH)")
        try:
            parsed = get_types_from_msg(path.read_text(), name)
        except Exception as exc:  # noqa: BLE001
            raise BagError(f"cannot parse {path}: {exc}") from None
        found.update(parsed)
        pending.extend(_referenced_types(parsed[name][1]))
    if found:
        store.register(found)


def msg_class(msgtype: str):
    return typestore().types[msgtype]


# ------------------------------------------------------------------ message helpers


def ns_to_stamp(ns: int):
    """Integer nanoseconds -> builtin_interfaces/Time (rosbags dataclass)."""
    sec, nanosec = divmod(int(ns), 1_000_000_000)
    return msg_class("builtin_interfaces/msg/Time")(sec=sec, nanosec=nanosec)


def stamp_to_ns(stamp) -> int:
    """builtin_interfaces/Time (rosbags or rclpy) -> integer nanoseconds (exact: label keys)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def set_stamp(stamp, ns: int) -> None:
    """Set a builtin_interfaces/Time (rosbags or rclpy) in place to integer nanoseconds."""
    stamp.sec, stamp.nanosec = divmod(int(ns), 1_000_000_000)


def make_header(stamp_ns: int, frame_id: str = "camera"):
    return msg_class(HEADER_TYPE)(stamp=ns_to_stamp(stamp_ns), frame_id=frame_id)


def make_string(text: str):
    return msg_class(STRING_TYPE)(data=str(text))


def make_image(image: np.ndarray, stamp_ns: int, frame_id: str = "camera", encoding: str | None = None):
    """uint8 gray (HxW) or BGR (HxWx3) array -> sensor_msgs/Image (mono8 / bgr8 by default)."""
    image = np.ascontiguousarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        encoding = encoding or "mono8"
        channels = 1
    elif image.ndim == 3 and image.shape[2] == 3:
        encoding = encoding or "bgr8"
        channels = 3
    else:
        raise ValueError(f"unsupported image shape {image.shape}")
    if _CHANNELS.get(encoding) != channels:
        raise ValueError(f"encoding {encoding!r} does not fit an image of shape {image.shape}")
    height, width = image.shape[:2]
    return msg_class(IMAGE_TYPE)(
        header=make_header(stamp_ns, frame_id), height=height, width=width, encoding=encoding,
        is_bigendian=0, step=width * channels, data=image.reshape(-1))


_CHANNELS = {"mono8": 1, "8UC1": 1, "bgr8": 3, "rgb8": 3, "8UC3": 3, "bgra8": 4, "rgba8": 4, "8UC4": 4}


def label_key(stamp_ns: int, log_time: int) -> int:
    """The time a ground-truth label of an image is written at: its header stamp, or its log
    time when the camera driver left the stamp at zero."""
    return int(stamp_ns) if stamp_ns > 0 else int(log_time)


def parse_label(text: str, where: str = "") -> str:
    """A ground-truth label by name or index in LABELS; BagError (prefixed with `where`) otherwise."""
    text = text.strip().lower()
    if text.isdigit() and int(text) < len(LABELS):
        return LABELS[int(text)]
    if text not in LABELS:
        raise BagError(f"{where}unknown expression label {text!r}; expected one of {', '.join(LABELS)}")
    return text
