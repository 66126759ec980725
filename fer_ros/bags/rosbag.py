"""rosbag2 reading and writing without a ROS installation (the pure-Python `rosbags` library).

Bags written here are standard rosbag2 folders (mcap or sqlite3 storage, metadata.yaml
version 9 as written by Kilted) with every message definition and its RIHS01 type hash
embedded, so `ros2 bag play/info` and Foxglove read them on a real ROS 2 install. Our own
message types are registered from the package's msg/*.msg files, so the embedded
definitions and hashes are exactly those of the built fer_ros interfaces.

Conventions used by `fer-ros bag` (see docs/bags.md):
- images on `/camera/image_raw` (sensor_msgs/Image), bag log time == header.stamp for made bags;
- ground truth on `/ground_truth/expression` (std_msgs/String, `data` = one FaceExpression
  label). std_msgs/String has no header, so a label belongs to the image whose
  header.stamp equals the label's bag log time. Unlabelled frames carry no label message;
- outputs on `/faces/expressions` (fer_ros/FaceExpressionArray), bag log time == receipt time,
  so receipt time - header.stamp is the end-to-end latency.

Everything here is ROS-free; messages are the `rosbags` dataclasses. The ROS side (record,
replay) moves raw CDR bytes between the bag and rclpy, so nothing is converted twice.
"""

from __future__ import annotations

import csv
import functools
import os
import queue
import sys
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

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


def label_key(stamp_ns: int, log_time: int) -> int:
    """The time a ground-truth label of an image is written at: its header stamp, or its log
    time when the camera driver left the stamp at zero."""
    return int(stamp_ns) if stamp_ns > 0 else int(log_time)


def stamp_to_ns(stamp) -> int:
    """builtin_interfaces/Time (rosbags or rclpy) -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


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


def image_to_array(msg) -> np.ndarray:
    """sensor_msgs/Image (rosbags or rclpy) -> uint8 gray HxW or BGR HxWx3; ValueError if malformed."""
    channels = _CHANNELS.get(msg.encoding)
    if channels is None:
        raise ValueError(f"unsupported image encoding {msg.encoding!r} (expected one of {sorted(_CHANNELS)})")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.frombuffer(bytes(msg.data) if not isinstance(msg.data, np.ndarray) else msg.data, np.uint8)
    if height <= 0 or width <= 0 or step < width * channels or data.size < step * height:
        raise ValueError(f"malformed image: {width}x{height} {msg.encoding}, step {step}, {data.size} bytes")
    rows = data[: step * height].reshape(height, step)[:, : width * channels]
    image = rows.reshape(height, width, channels) if channels > 1 else rows.reshape(height, width)
    import cv2

    if msg.encoding == "rgb8":
        return cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if msg.encoding in ("bgra8", "8UC4"):
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if msg.encoding == "rgba8":
        return cv2.cvtColor(image, cv2.COLOR_RGBA2BGR)
    return image


# ---------------------------------------------------------------------------- QoS


def qos_profile(kind: str = "reliable", depth: int = 10):
    """Offered QoS stored with a topic; `ros2 bag play` publishes with it.

    "reliable" matches reliable and best-effort subscribers alike, so it is the default
    even for images; "sensor_data" is what a live camera offers.
    """
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    reliability = {"reliable": QosReliability.RELIABLE, "sensor_data": QosReliability.BEST_EFFORT}[kind]
    zero = QosTime(sec=0, nsec=0)
    return Qos(history=QosHistory.KEEP_LAST, depth=depth, reliability=reliability,
               durability=QosDurability.VOLATILE, deadline=zero, lifespan=zero,
               liveliness=QosLiveliness.AUTOMATIC, liveliness_lease_duration=zero,
               avoid_ros_namespace_conventions=False)


# ------------------------------------------------------------------------- writer


def storage_of(path: Path) -> str:
    """Storage of an existing bag folder or file (mcap or sqlite3)."""
    path = Path(path)
    files = [path] if path.is_file() else list(path.glob("*"))
    if any(f.suffix == ".db3" for f in files):
        return "sqlite3"
    return "mcap"


class BagWriter:
    """Write a rosbag2 folder; messages are rosbags dataclasses or raw CDR bytes.

    with BagWriter("out_bag", storage="mcap") as bag:
        bag.add_topic("/camera/image_raw", IMAGE_TYPE)
        bag.write("/camera/image_raw", t_ns, make_image(frame, t_ns))

    background=True serializes and writes on a thread of its own, in order, so that ROS callbacks
    and a real-time publishing loop never wait on the disk (a disk busy flushing stalled them for
    seconds and put those seconds into the recorded latencies); close() writes what is queued.
    That thread then owns the rosbags writer (SQLite objects only work in their own thread).
    """

    QUEUE = 256  # messages waiting for the background writer before write() waits too

    def __init__(self, path, storage: str = "mcap", overwrite: bool = False, version: int = BAG_VERSION,
                 background: bool = False):
        from rosbags.rosbag2 import StoragePlugin, Writer

        if storage not in STORAGES:
            raise BagError(f"unknown storage {storage!r}: use one of {', '.join(STORAGES)}")
        self.path = Path(path)
        if self.path.exists():
            if not overwrite:
                raise BagError(f"{self.path} exists already; choose another output or pass --overwrite")
            _remove_bag(self.path)
        self._connections: dict[str, object] = {}
        self._types: dict[str, str] = {}
        self.counts: dict[str, int] = {}
        self._error: BaseException | None = None
        self._queue: queue.Queue | None = None
        if background:
            self._queue = queue.Queue(self.QUEUE)
            self._thread = threading.Thread(target=self._drain, name="bag_writer", daemon=True)
            self._thread.start()
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self._writer = Writer(self.path, version=version, storage_plugin=plugin)
        self._call(self._writer.open)

    def _call(self, fn, *args):
        """fn(*args) on the thread that owns the writer, waiting for its result."""
        if self._queue is None:
            return fn(*args)
        done: Future = Future()
        self._queue.put((fn, args, done))
        return done.result()

    def _drain(self) -> None:
        while (item := self._queue.get()) is not None:
            fn, args, done = item
            try:
                if done is not None:
                    done.set_result(fn(*args))
                elif self._error is None:  # after a failed write, keep emptying so writers never block
                    fn(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, or kept for write()/close()
                if done is not None:
                    done.set_exception(exc)
                else:
                    self._error = exc

    def add_topic(self, topic: str, msgtype: str, qos: str = "reliable") -> None:
        if topic in self._connections:
            return
        ensure_type(msgtype)
        try:
            typestore().get_msgdef(msgtype)
        except Exception as exc:  # noqa: BLE001 - rosbags raises several kinds
            raise BagError(f"unknown message type {msgtype!r} for {topic}: {exc}") from None
        self._connections[topic] = self._call(lambda: self._writer.add_connection(
            topic, msgtype, typestore=typestore(), offered_qos_profiles=[qos_profile(qos)]))
        self._types[topic] = msgtype
        self.counts[topic] = 0

    def has_topic(self, topic: str) -> bool:
        return topic in self._connections

    def write(self, topic: str, log_time_ns: int, msg) -> None:
        """Write one message (dataclass, or bytes already CDR-serialized) at a log time in ns."""
        if topic not in self._connections:
            raise BagError(f"topic {topic} was not added to {self.path}")
        if self._error is not None:
            raise BagError(f"writing {self.path} failed: {self._error!r}")
        if self._queue is not None:
            self._queue.put((self._write, (topic, int(log_time_ns), msg), None))
        else:
            self._write(topic, int(log_time_ns), msg)

    def _write(self, topic: str, log_time_ns: int, msg) -> None:
        data = msg if isinstance(msg, (bytes, bytearray, memoryview)) else \
            typestore().serialize_cdr(msg, self._types[topic])
        self._writer.write(self._connections[topic], log_time_ns, data)
        self.counts[topic] += 1

    def set_info(self, key: str, value: str) -> None:
        """Free-form provenance stored in metadata.yaml custom_data (e.g. how the bag was made)."""
        self._call(self._writer.set_custom_data, f"fer_ros.{key}", str(value))

    def close(self) -> None:
        try:
            if self._writer is not None:
                self._call(self._writer.close)  # after everything queued before it
        finally:
            self._writer = None
            if self._queue is not None:
                self._queue.put(None)
                self._thread.join()
                self._queue = None
        if self._error is not None:
            error, self._error = self._error, None
            raise BagError(f"writing {self.path} failed: {error!r}")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()
        return False


def _remove_bag(path: Path) -> None:
    """Delete an old output bag, refusing anything that does not look like one."""
    import shutil

    if path.is_dir():
        entries = list(path.iterdir())
        if entries and not (path / "metadata.yaml").exists():
            raise BagError(f"{path} exists and is not a rosbag2 folder; not overwriting it")
        shutil.rmtree(path)
    else:
        raise BagError(f"{path} exists and is a file; not overwriting it")


# ------------------------------------------------------------------------- reader


@dataclass
class BagMessage:
    topic: str
    msgtype: str
    log_time: int  # ns, when the recorder received (or the maker wrote) it
    msg: object  # rosbags dataclass, or raw CDR bytes with raw=True


_TRUNCATED_HINT = (" (if the recording was killed, the file may be truncated: `ros2 bag reindex` "
                   "can repair it on a ROS 2 install)")


class BagReader:
    """Read a rosbag2 folder (or a single .mcap/.db3 file) with errors a user can act on."""

    def __init__(self, path):
        from rosbags.rosbag2 import Reader, ReaderError

        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f"{self.path}: no such bag (folder or .mcap/.db3 file)")
        if self.path.is_dir() and not (self.path / "metadata.yaml").exists():
            raise BagError(f"{self.path} is not a rosbag2 folder (no metadata.yaml)")
        if self.path.is_file() and self.path.suffix not in (".mcap", ".db3"):
            raise BagError(f"{self.path} is not a bag: expected a rosbag2 folder or a .mcap/.db3 file")
        try:
            self._reader = Reader(self.path)
            self._reader.open()
        except ReaderError as exc:
            raise BagError(f"{self.path} cannot be opened as a rosbag2 bag: {exc}{_TRUNCATED_HINT}") from None
        except Exception as exc:  # noqa: BLE001 - corrupt files raise all sorts (yaml, sqlite, struct)
            raise BagError(f"{self.path} cannot be opened as a rosbag2 bag (damaged or truncated?): "
                           f"{type(exc).__name__}: {exc}") from None

    @property
    def topics(self) -> dict[str, str]:
        """topic -> message type."""
        return {c.topic: c.msgtype for c in self._reader.connections}

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self._reader.connections:
            out[c.topic] = out.get(c.topic, 0) + c.msgcount
        return out

    @property
    def start_time(self) -> int:
        return self._reader.start_time

    @property
    def end_time(self) -> int:
        return self._reader.end_time

    @property
    def storage(self) -> str:
        return storage_of(self.path)

    @property
    def info(self) -> dict[str, str]:
        """Provenance written by BagWriter.set_info (metadata.yaml custom_data, fer_ros.* keys)."""
        meta = getattr(getattr(self._reader, "storage", None), "metadata", None)
        custom = getattr(meta, "custom", None) or {}
        return {k.removeprefix("fer_ros."): v for k, v in custom.items() if k.startswith("fer_ros.")}

    def describe(self) -> str:
        counts = self.counts
        return "\n".join(f"  {t} [{ty}] {counts.get(t, 0)} msgs" for t, ty in sorted(self.topics.items())) \
            or "  (no topics)"

    def require(self, topic: str, msgtype: str | tuple | None = None, hint: str = "") -> str:
        """The topic's type; BagError naming the topics that are there when it is missing or mistyped."""
        topics = self.topics
        if topic not in topics:
            raise BagError(f"{self.path} has no {topic} topic{hint}. It has:\n{self.describe()}")
        allowed = (msgtype,) if isinstance(msgtype, str) else msgtype
        if allowed and topics[topic] not in allowed:
            raise BagError(f"{topic} in {self.path} is {topics[topic]}, expected {' or '.join(allowed)}")
        return topics[topic]

    def messages(self, topics: Iterable[str] | None = None, raw: bool = False) -> Iterator[BagMessage]:
        """Messages in log-time order, deserialized unless raw=True; BagError on damage/unknown types."""
        from rosbags.rosbag2 import ReaderError

        wanted = set(topics) if topics is not None else None
        conns = [c for c in self._reader.connections if wanted is None or c.topic in wanted]
        if wanted is not None and not conns:
            return
        store = typestore()
        if not raw:
            for c in conns:
                self._ensure_type(c)
        try:
            for conn, t, data in self._reader.messages(connections=conns):
                if raw:
                    yield BagMessage(conn.topic, conn.msgtype, t, bytes(data))
                    continue
                try:
                    msg = store.deserialize_cdr(data, conn.msgtype)
                except Exception as exc:  # noqa: BLE001
                    raise BagError(f"a {conn.msgtype} message on {conn.topic} at t={t} ns in {self.path} "
                                   f"cannot be decoded ({type(exc).__name__}: {exc})") from None
                yield BagMessage(conn.topic, conn.msgtype, t, msg)
        except ReaderError as exc:
            raise BagError(f"{self.path} is damaged: {exc}") from None
        except BagError:
            raise
        except Exception as exc:  # noqa: BLE001 - truncated storage surfaces as sqlite/struct/zstd errors
            raise BagError(f"{self.path} is damaged or truncated: {type(exc).__name__}: {exc}") from None

    def _ensure_type(self, conn) -> None:
        """Register a type we do not know from the definition embedded in the bag, if any."""
        store = typestore()
        if conn.msgtype in store.fielddefs:
            return
        msgdef = getattr(conn.msgdef, "data", "") or ""
        if msgdef:
            try:
                from rosbags.typesys import get_types_from_idl, get_types_from_msg

                is_idl = msgdef.startswith("=" * 80 + "\nIDL: ")
                types = get_types_from_idl(msgdef) if is_idl else _types_from_concatenated_msg(msgdef, conn.msgtype)
                store.register(types)
                return
            except Exception as exc:  # noqa: BLE001
                raise BagError(f"{conn.topic} has unknown type {conn.msgtype} and its embedded definition "
                               f"cannot be parsed: {exc}") from None
        raise BagError(f"{conn.topic} has unknown message type {conn.msgtype} and the bag embeds no "
                       f"definition for it")

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()
        return False


def _types_from_concatenated_msg(text: str, msgtype: str) -> dict:
    """rosbag2's msgdef: the main .msg then '====\\nMSG: pkg/Name' sections for each dependency."""
    from rosbags.typesys import get_types_from_msg

    sep = "=" * 80 + "\n"
    parts = text.split(sep)
    types = get_types_from_msg(parts[0], msgtype)
    for part in parts[1:]:
        head, _, body = part.partition("\n")
        name = head.removeprefix("MSG: ").strip()
        if "/msg/" not in name:
            name = name.replace("/", "/msg/", 1)
        types.update(get_types_from_msg(body, name))
    return types


def read_bag(path, topics: Iterable[str] | None = None, raw: bool = False) -> list[BagMessage]:
    """All (selected) messages of a bag in log-time order."""
    with BagReader(path) as bag:
        return list(bag.messages(topics, raw=raw))


# ------------------------------------------------------------------------- labels


@dataclass
class LabelTrack:
    """Ground-truth expression labels by time range or by frame number, from a CSV.

    Rows are `start_s,end_s,label` (seconds from the first frame; start inclusive, end
    exclusive) or `frame,label` (0-based frame index). A header row and `#` comments are
    allowed (also at the end of a line); labels are FaceExpression labels or their index in LABELS.
    """

    ranges: list[tuple[float, float, str]]
    frames: dict[int, str]

    def label(self, frame_index: int, t_s: float) -> str | None:
        if frame_index in self.frames:
            return self.frames[frame_index]
        for start, end, label in self.ranges:
            if start <= t_s < end:
                return label
        return None


def parse_label(text: str, where: str = "") -> str:
    text = text.strip().lower()
    if text.isdigit() and int(text) < len(LABELS):
        return LABELS[int(text)]
    if text not in LABELS:
        raise BagError(f"{where}unknown expression label {text!r}; expected one of {', '.join(LABELS)}")
    return text


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def read_labels(path) -> LabelTrack:
    path = Path(path)
    if not path.is_file():
        raise BagError(f"label file {path} does not exist")
    ranges, frames = [], {}
    try:
        lines = [line.split("#", 1)[0] for line in path.read_text().splitlines()]  # '#' starts a comment
    except (OSError, UnicodeDecodeError) as exc:
        raise BagError(f"cannot read label file {path}: {exc}") from None
    rows = [r for r in csv.reader(lines) if r and "".join(r).strip()]
    for n, row in enumerate(rows, 1):
        row = [c.strip() for c in row]
        where = f"{path}, row {n}: "
        if n == 1 and not _is_number(row[0]):
            continue  # header row
        try:
            if len(row) == 3:
                start, end = float(row[0]), float(row[1])
                if end <= start:
                    raise BagError(f"{where}end {end} is not after start {start}")
                ranges.append((start, end, parse_label(row[2], where)))
            elif len(row) == 2:
                frames[int(row[0])] = parse_label(row[1], where)
            else:
                raise BagError(f"{where}expected start_s,end_s,label or frame,label, got {len(row)} columns")
        except ValueError:
            raise BagError(f"{where}cannot parse {','.join(row)!r} (numbers expected before the label)") from None
    if not ranges and not frames:
        raise BagError(f"label file {path} has no label rows")
    return LabelTrack(ranges, frames)


# ------------------------------------------------------------------ making bags


def _start_ns(start_ns: int | None) -> int:
    import time

    return int(time.time() * 1e9) if start_ns is None else int(start_ns)


def _letterbox(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Scale to fit size=(w, h) keeping the aspect ratio, pad with black: faces keep their shape."""
    import cv2

    w, h = size
    fh, fw = frame.shape[:2]
    scale = min(w / fw, h / fh)
    nw, nh = max(1, round(fw * scale)), max(1, round(fh * scale))
    if (nw, nh) != (fw, fh):
        frame = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    out = np.zeros((h, w) + frame.shape[2:], np.uint8)
    y0, x0 = (h - nh) // 2, (w - nw) // 2
    out[y0:y0 + nh, x0:x0 + nw] = frame
    return out


def video_to_bag(video, out, labels=None, fps: float | None = None, size: tuple[int, int] | None = None,
                 loops: int = 1, max_frames: int | None = None, storage: str = "mcap",
                 frame_id: str = "camera", start_ns: int | None = None, overwrite: bool = False) -> dict:
    """Video file -> bag of bgr8 images at `fps` (default: the video's) + ground-truth labels.

    `labels` is a LabelTrack or CSV path; a label message is written for each labelled frame
    at the frame's stamp. `size` letterboxes frames to (w, h); `loops` repeats the video with
    continuing stamps (for longer benchmarks). Returns a summary dict.
    """
    import cv2

    video = Path(video)
    if not video.is_file():
        raise BagError(f"video {video} does not exist")
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise BagError(f"cannot open video {video} (not a video, or a codec OpenCV lacks)")
    fps = float(fps or cap.get(cv2.CAP_PROP_FPS) or 0) or 30.0
    if isinstance(labels, (str, Path)):
        labels = read_labels(labels)
    t0 = _start_ns(start_ns)
    period = 1e9 / fps
    n = labelled = 0
    with BagWriter(out, storage=storage, overwrite=overwrite) as bag:
        bag.add_topic(IMAGE_TOPIC, IMAGE_TYPE)
        if labels is not None:
            bag.add_topic(GROUND_TRUTH_TOPIC, STRING_TYPE)
        bag.set_info("source", f"video {video.name} at {fps:g} fps")
        for loop in range(max(1, loops)):
            if loop:
                cap.release()
                cap = cv2.VideoCapture(str(video))
            index = 0  # frame index within the video: labels refer to it
            while max_frames is None or n < max_frames:
                ok, frame = cap.read()
                if not ok:
                    break
                if size is not None:
                    frame = _letterbox(frame, size)
                t = t0 + round(n * period)
                bag.write(IMAGE_TOPIC, t, make_image(frame, t, frame_id))
                label = labels.label(index, index / fps) if labels is not None else None
                if label is not None:
                    bag.write(GROUND_TRUTH_TOPIC, t, make_string(label))
                    labelled += 1
                n += 1
                index += 1
        cap.release()
    if n == 0:
        _remove_bag(Path(out))
        raise BagError(f"no frames could be read from {video}")
    return {"bag": str(out), "frames": n, "labelled": labelled, "fps": fps}


def load_fer2013(npz, split: str = "PublicTest") -> tuple[np.ndarray, np.ndarray]:
    """FER-2013 npz (shared/README.md layout) -> uint8 [N,48,48] images and int labels of a split."""
    import cv2

    npz = Path(npz)
    if not npz.is_file():
        raise BagError(f"dataset {npz} does not exist")
    try:
        d = np.load(npz, allow_pickle=False)
        names = [str(s) for s in d["split_names"]]
        if split not in names:
            raise BagError(f"{npz} has no split {split!r}; it has {', '.join(names)}")
        idx = np.flatnonzero(d["split"] == names.index(split))
        jpeg, offsets, labels = d["jpeg"], d["offsets"], d["labels"]
    except KeyError as exc:
        raise BagError(f"{npz} is not a FER-2013 npz (missing {exc})") from None
    except (OSError, ValueError) as exc:
        raise BagError(f"cannot read {npz}: {exc}") from None
    images = np.stack([cv2.imdecode(jpeg[offsets[i]:offsets[i + 1]], cv2.IMREAD_GRAYSCALE) for i in idx])
    return images, labels[idx].astype(np.int64)


#: Expression-node settings for bags of pre-cropped, unrelated faces (datasets): the whole image
#: is the face, and no temporal smoothing (consecutive images are different people).
CROPPED_FACES_PARAMS = {"detector": "whole", "smoothing": 0.0}


def images_to_bag(images, labels, out, fps: float = 30.0, encoding: str = "mono8", storage: str = "mcap",
                  frame_id: str = "camera", start_ns: int | None = None, overwrite: bool = False,
                  source: str = "", replay_params: dict | None = CROPPED_FACES_PARAMS) -> dict:
    """Gray images [N,H,W] + label indices -> bag: one Image and one label per frame at `fps`.

    `replay_params` are stored in the bag; `fer-ros bag replay` applies them unless overridden.
    """
    import json

    import cv2

    if len(images) != len(labels):
        raise BagError(f"{len(images)} images but {len(labels)} labels")
    t0 = _start_ns(start_ns)
    period = 1e9 / fps
    with BagWriter(out, storage=storage, overwrite=overwrite) as bag:
        bag.add_topic(IMAGE_TOPIC, IMAGE_TYPE)
        bag.add_topic(GROUND_TRUTH_TOPIC, STRING_TYPE)
        if source:
            bag.set_info("source", source)
        if replay_params:
            bag.set_info("replay_params", json.dumps(replay_params))
        for i, (img, lab) in enumerate(zip(images, labels)):
            t = t0 + round(i * period)
            if encoding == "bgr8" and img.ndim == 2:
                img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
            bag.write(IMAGE_TOPIC, t, make_image(img, t, frame_id, encoding))
            bag.write(GROUND_TRUTH_TOPIC, t, make_string(LABELS[int(lab)]))
    return {"bag": str(out), "frames": len(images), "labelled": len(images), "fps": fps}


def dataset_to_bag(npz, out, split: str = "PublicTest", fps: float = 30.0, encoding: str = "mono8",
                   limit: int | None = None, **kw) -> dict:
    """FER-2013 split -> bag of 48x48 images (mono8 or bgr8) with one label per image."""
    if encoding not in ("mono8", "bgr8"):
        raise BagError(f"encoding must be mono8 or bgr8, not {encoding!r}")
    images, labels = load_fer2013(npz, split)
    if limit:
        images, labels = images[:limit], labels[:limit]
    return images_to_bag(images, labels, out, fps=fps, encoding=encoding,
                         source=f"FER-2013 {split} ({len(images)} images)", **kw)


def label_bag(bag_in, out, labels, topic: str = IMAGE_TOPIC, storage: str | None = None,
              overwrite: bool = False) -> dict:
    """Copy a recorded bag and add ground truth for its images from a label CSV.

    Times in the CSV are seconds from the first image's header stamp, frames count images.
    """
    if isinstance(labels, (str, Path)):
        labels = read_labels(labels)
    with BagReader(bag_in) as src:
        image_type = src.require(topic, IMAGE_TYPES)
        if GROUND_TRUTH_TOPIC in src.topics:
            raise BagError(f"{bag_in} already has {GROUND_TRUTH_TOPIC}")
        types = src.topics
        with BagWriter(out, storage=storage or src.storage, overwrite=overwrite) as dst:
            for t, ty in types.items():
                dst.add_topic(t, ty)
            dst.add_topic(GROUND_TRUTH_TOPIC, STRING_TYPE)
            index, first, labelled, skipped = 0, None, 0, 0
            for m in src.messages(raw=True):
                dst.write(m.topic, m.log_time, m.msg)
                if m.topic != topic:
                    continue
                index += 1
                try:
                    header = typestore().deserialize_cdr(m.msg, image_type).header
                except Exception:  # noqa: BLE001 - a broken image keeps its frame number, gets no label
                    skipped += 1
                    continue
                stamp = label_key(stamp_to_ns(header.stamp), m.log_time)
                first = stamp if first is None else first
                label = labels.label(index - 1, (stamp - first) / 1e9)
                if label is not None:
                    dst.write(GROUND_TRUTH_TOPIC, stamp, make_string(label))
                    labelled += 1
    return {"bag": str(out), "frames": index, "labelled": labelled, "skipped": skipped}
