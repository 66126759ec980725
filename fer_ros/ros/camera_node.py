"""camera_node: publishes sensor_msgs/Image (bgr8) on camera/image_raw.

Sources (parameter `source`): a webcam index ("0") or device path ("/dev/video0"), a video
file, a folder of images, or `demo`: 640x480 frames composed from a real face photo that
ships inside scikit-image (no camera, no download). A lost camera is reported and reopened
every `reconnect_interval` seconds instead of crashing the node.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

from collections import deque

import cv2
import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.lifecycle import LifecycleState, TransitionCallbackReturn

from .image import bgr_to_image_msg
from .params import (AutostartLifecycleNode, Param, declare_params, key_values, publish_diagnostics_every,
                     qos_from_params, qos_params, recent_rate, run_node)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}

PARAMS = [
    Param("source", "demo",
          "What to publish: 'demo' (built-in moving face, no camera needed), a webcam index "
          "('0') or device ('/dev/video0'), a video file, or a folder of images (sorted by name).",
          read_only=True, dynamic_typing=True),
    Param("rate", 30.0,
          "Publish rate in frames per second. 0: the video file's own rate (30 for other sources); "
          "webcams never go faster than they deliver.", range=(0.0, 1000.0), read_only=True),
    Param("width", 0, "Output width in pixels (0: the source's own width; demo: 640).", range=(0, 8192),
          read_only=True),
    Param("height", 0, "Output height in pixels (0: the source's own height; demo: 480).", range=(0, 8192),
          read_only=True),
    Param("max_width", 1920, "Downscale wider frames to this width, keeping the aspect ratio (0: never). "
          "Over best-effort QoS most 2560x1440 and 4K images are lost on the way; detection runs on a "
          "320 px wide copy anyway.", range=(0, 8192), read_only=True),
    Param("frame_id", "camera", "frame_id written into each image header."),
    Param("loop", True, "Start over at the end of a video file or image folder (demo always loops)."),
    Param("exit_at_end", False, "Shut the node down when a non-looping file or folder has been played."),
    Param("reconnect_interval", 2.0, "Seconds between attempts to reopen a lost or missing camera.",
          range=(0.1, 3600.0)),
    Param("autostart", True, "Configure and activate the lifecycle node at start; false: wait for "
          "lifecycle transitions (`ros2 launch` sends them, or `ros2 lifecycle set`).", read_only=True),
    Param("demo_faces", 1, "Number of faces in the demo frames (1-3).", range=(1, 3), read_only=True),
    *qos_params("qos", "best_effort", 5, "the published images (sensor-data QoS by default)"),
]


def demo_face() -> np.ndarray:
    """The astronaut portrait shipped with scikit-image (a real face photo), as BGR."""
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


class DemoSource:
    """Endless 640x480 frames: `faces` copies of a real portrait drifting slowly on a plain
    background, so detection, tracking and the annotated video have something to show."""

    def __init__(self, width: int = 640, height: int = 480, faces: int = 1, rate: float = 30.0):
        self.width, self.height, self.rate = width or 640, height or 480, rate or 30.0
        portrait = demo_face()[10:240, 110:340]  # the head (face at 177,66 95x95 in the photo)
        side = int(min(self.height * 0.5, self.width / (faces + 0.8)))
        self.patch = cv2.resize(portrait, (side, side), interpolation=cv2.INTER_AREA)
        ramp = np.linspace(90, 150, self.width, dtype=np.float32)
        self.background = np.repeat(np.tile(ramp, (self.height, 1))[:, :, None], 3, axis=2).astype(np.uint8)
        self.faces = faces
        self.index = 0

    def read(self):
        t = self.index / self.rate
        self.index += 1
        frame = self.background.copy()
        side = self.patch.shape[0]
        slot = self.width / self.faces
        for i in range(self.faces):
            cx = slot * (i + 0.5) + 0.15 * slot * math.sin(0.5 * t + i)
            cy = self.height / 2 + 0.08 * self.height * math.sin(0.3 * t + 2 * i)
            x = int(np.clip(cx - side / 2, 0, self.width - side))
            y = int(np.clip(cy - side / 2, 0, self.height - side))
            frame[y:y + side, x:x + side] = self.patch
        return True, frame

    def release(self):
        pass


class FolderSource:
    """Images of a folder in name order, like a video."""

    def __init__(self, folder: Path):
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {folder}")
        self.index = 0

    def read(self):
        while self.index < len(self.files):
            path = self.files[self.index]
            self.index += 1
            frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if frame is not None:
                return True, frame
        return False, None

    def rewind(self):
        self.index = 0

    def release(self):
        pass


def parse_source(source: str):
    """'demo' | ('camera', index or device) | ('video', path) | ('folder', path); ValueError if unusable."""
    s = str(source).strip()
    if s.lower() == "demo":
        return "demo", s
    if s.isdigit():
        return "camera", int(s)
    if s.startswith("/dev/video"):
        return "camera", s
    path = Path(os.path.expanduser(s))
    if path.is_dir():
        return "folder", path
    if path.is_file():
        return "video", path
    raise ValueError(f"camera source {s!r} is not 'demo', a webcam index, a /dev/video device, "
                     f"an existing video file or an image folder")


class CameraNode(AutostartLifecycleNode):
    """A lifecycle node: configure checks the source and creates the publisher, activate opens
    the device and publishes, deactivate stops and releases the device (another program may then
    use the webcam), cleanup removes the publisher. With `autostart` (default) it configures and
    activates itself at start."""

    def __init__(self, **kwargs):
        super().__init__("camera_node", **kwargs)
        self.p = declare_params(self, PARAMS)
        self.p["source"] = str(self.p["source"])
        self.kind, self.target = None, None
        self.pub = self.cap = self.timer = None
        self.frames = 0
        self.finished = False
        self.rate = 0.0
        self._next_open = 0.0
        self.open_failures = 0  # attempts to open the camera that failed (its log line is throttled)
        self._open_error_logged = -1e9
        self._config_error = None
        self._published = deque(maxlen=120)  # publish times, for the rate in diagnostics
        publish_diagnostics_every(self, 1.0, self.diagnostics)
        if self.p["autostart"]:
            self.autostart()

    # -- lifecycle transitions --------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.kind, self.target = parse_source(self.p["source"])
            self._open()  # an unreadable video file fails here; a missing webcam is retried
        except ValueError as exc:
            self._config_error = exc
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        rate = self.p["rate"]
        if rate <= 0:
            fps = self.cap.get(cv2.CAP_PROP_FPS) if self.kind == "video" and self.cap is not None else 0
            rate = fps if fps and 0 < fps < 1000 else 30.0
        self.rate = float(rate)
        self.pub = self.create_lifecycle_publisher(_image_type(), "camera/image_raw", qos_from_params(self.p, "qos"))
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        ret = super().on_activate(state)
        self.finished = False
        if self.cap is None:
            self._open()
        self.timer = self.create_timer(1.0 / self.rate, self._tick)
        self.get_logger().info(f"publishing {self.kind} source {self.p['source']!r} on "
                               f"{self.pub.topic_name} at {self.rate:g} fps "
                               f"(qos {self.p['qos.reliability']}, depth {self.p['qos.depth']})")
        return ret

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop()
        self.get_logger().info(f"inactive: {self.kind} source released")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop()
        if self.pub is not None:
            self.destroy_lifecycle_publisher(self.pub)
            self.pub = None
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self.on_cleanup(state)

    def _stop(self):
        if self.timer is not None:
            self.destroy_timer(self.timer)
            self.timer = None
        if self.cap is not None:
            self.cap.release()
            self.cap = None

    # -- sources -------------------------------------------------------------------------
    def _open(self) -> bool:
        if self.kind == "demo":
            self.cap = DemoSource(self.p["width"], self.p["height"], self.p["demo_faces"], self.p["rate"])
        elif self.kind == "folder":
            self.cap = FolderSource(self.target)
        else:
            cap = cv2.VideoCapture(self.target)
            if not cap.isOpened():
                cap.release()
                if self.kind == "video":
                    raise ValueError(f"cannot read video file {self.target} (unknown format or corrupt)")
                # once, then at most every 30 s: a missing camera must not flood the log
                self.open_failures += 1
                now = time.monotonic()
                if now - self._open_error_logged >= 30.0:
                    self._open_error_logged = now
                    self.get_logger().error(f"cannot open camera {self.target!r}; retrying every "
                                            f"{self.p['reconnect_interval']:g} s (said again at most every 30 s; "
                                            f"failed attempts are counted in diagnostics)")
                self.cap = None
                self._next_open = time.monotonic() + self.p["reconnect_interval"]
                return False
            if self.kind == "camera":
                if self.p["width"]:
                    cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.p["width"])
                if self.p["height"]:
                    cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.p["height"])
                cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # newest frame, not a queue of old ones
            self.cap = cap
        return True

    def _rewind(self):
        if self.kind == "folder":
            self.cap.rewind()
        else:
            self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)

    def read_frame(self):
        """Next frame (BGR, resized to width/height when set) or None when there is none now."""
        if self.finished:
            return None
        if self.cap is None:
            if time.monotonic() < self._next_open or not self._open():
                return None
            self.get_logger().info(f"camera {self.target!r} opened")
        ok, frame = self.cap.read()
        if not ok and self.kind in ("video", "folder"):
            if self.p["loop"] and self.frames:
                self._rewind()
                ok, frame = self.cap.read()
            if not ok:
                self.get_logger().info(f"end of {self.kind} {self.target} after {self.frames} frames")
                self.finished = True
                if self.p["exit_at_end"]:
                    raise SystemExit(0)
                return None
        if not ok or frame is None:
            self.get_logger().error(f"camera {self.target!r} lost (no frame); reopening every "
                                    f"{self.p['reconnect_interval']:g} s")
            self.cap.release()
            self.cap = None
            self._next_open = time.monotonic() + self.p["reconnect_interval"]
            return None
        w, h = self.p["width"], self.p["height"]
        if (w or h) and self.kind != "demo" and (frame.shape[1], frame.shape[0]) != (w or frame.shape[1], h or frame.shape[0]):
            frame = cv2.resize(frame, (w or frame.shape[1], h or frame.shape[0]), interpolation=cv2.INTER_AREA)
        limit = self.p["max_width"]
        if limit and frame.shape[1] > limit:
            size = (limit, max(1, round(frame.shape[0] * limit / frame.shape[1])))
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        return frame

    def _tick(self):
        frame = self.read_frame()
        if frame is None:
            return
        stamp = self.get_clock().now().to_msg()  # capture time: latency is measured from here
        msg = bgr_to_image_msg(frame)
        msg.header.stamp = stamp
        msg.header.frame_id = self.p["frame_id"]
        self.pub.publish(msg)
        self.frames += 1
        self._published.append(time.monotonic())

    def diagnostics(self) -> DiagnosticStatus:
        rate = recent_rate(self._published)
        status = DiagnosticStatus(name=f"{self.get_name()}: camera", hardware_id=str(self.p["source"]))
        state = self.lifecycle_state
        if self._config_error is not None and self.pub is None:
            status.level, status.message = DiagnosticStatus.ERROR, f"configure failed: {self._config_error}"
        elif state != "active":
            status.level, status.message = DiagnosticStatus.OK, f"{state}: not publishing (lifecycle)"
        elif self.cap is None:
            status.level, status.message = DiagnosticStatus.ERROR, "camera lost or not opened; retrying"
        elif self.finished:
            status.level, status.message = DiagnosticStatus.OK, f"end of {self.kind}"
        elif not self._published or self._published[-1] < time.monotonic() - 5.0:
            status.level, status.message = DiagnosticStatus.WARN, "no frames in the last 5 s"
        else:
            status.level, status.message = DiagnosticStatus.OK, f"{rate:.1f} fps"
        values = {"lifecycle_state": state, "source": self.p["source"], "kind": self.kind, "frames_published": self.frames,
                  "open_failures": self.open_failures, "rate_hz": f"{rate:.2f}", "target_rate_hz": f"{self.rate:g}"}
        status.values = key_values(values)
        return status

    def destroy_node(self):
        self._stop()
        return super().destroy_node()


def _image_type():
    from sensor_msgs.msg import Image

    return Image


def main(args=None) -> int:
    # ValueError: unusable source or parameter
    return run_node("camera_node", CameraNode, (ValueError,), args)


if __name__ == "__main__":
    sys.exit(main())
