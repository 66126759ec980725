"""rosbag2 reading and writing (mcap or sqlite3, metadata version 9 as Kilted writes) with the
pure-Python `rosbags` library: no ROS installation needed. Errors are BagError saying what to do."""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from fer_ros.bags.messages import BAG_VERSION, STORAGES, BagError, ensure_type, typestore


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
            remove_bag(self.path)
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


def remove_bag(path: Path) -> None:
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
                from rosbags.typesys import get_types_from_idl

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
