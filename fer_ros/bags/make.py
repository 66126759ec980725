"""Making bags: from videos and FER-2013 splits, and ground truth added to recorded bags from
label files (rows by time range or frame number). ROS-free."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fer_ros import LABELS
from fer_ros.bags.io import BagReader, BagWriter, remove_bag
from fer_ros.bags.messages import (GROUND_TRUTH_TOPIC, IMAGE_TOPIC, IMAGE_TYPE, IMAGE_TYPES, STRING_TYPE, BagError,
                                   label_key, make_image, make_string, parse_label, stamp_to_ns, typestore)


# ------------------------------------------------------------------------- labels


@dataclass
class LabelTrack:
    """Ground-truth expression labels by time range or by frame number, from a CSV.

    Rows are `start_s,end_s,label` (seconds from the first frame; start inclusive, end
    exclusive) or `frame,label` (0-based frame index). A header row and `#` comments are
    allowed (also at the end of a line); labels are FaceExpression labels or their index in LABELS.
    Rows that no frame fell into are listed by `unmatched()`, so a range past the end of a bag
    (wrong units, the wrong file) is reported instead of silently ignored.
    """

    ranges: list[tuple[float, float, str]]
    frames: dict[int, str]
    _matched: set = field(default_factory=set, repr=False, compare=False)

    def label(self, frame_index: int, t_s: float) -> str | None:
        found = None
        if frame_index in self.frames:
            self._matched.add(("frame", frame_index))
            found = self.frames[frame_index]
        for i, (start, end, label) in enumerate(self.ranges):
            if start <= t_s < end:
                self._matched.add(("range", i))
                found = label if found is None else found
        return found

    def unmatched(self) -> list[str]:
        """The rows no frame matched so far, e.g. ['12.0-14.0 s happy', 'frame 900 sad']."""
        out = [f"{start:g}-{end:g} s {label}" for i, (start, end, label) in enumerate(self.ranges)
               if ("range", i) not in self._matched]
        return out + [f"frame {f} {label}" for f, label in sorted(self.frames.items())
                      if ("frame", f) not in self._matched]


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def read_labels(path) -> LabelTrack:
    """A LabelTrack from a CSV (see LabelTrack); BagError naming the file and row when malformed."""
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
        remove_bag(Path(out))
        raise BagError(f"no frames could be read from {video}")
    return _with_unmatched({"bag": str(out), "frames": n, "labelled": labelled, "fps": fps}, labels)


def load_fer2013(npz, split: str = "PublicTest") -> tuple[np.ndarray, np.ndarray]:
    """uint8 [N,48,48] images and int labels of one split of the FER-2013 npz (fer_ros.perception.fer2013)."""
    from fer_ros.perception.fer2013 import read_npz

    try:
        images, labels, _ = read_npz(npz, split)
    except FileNotFoundError:
        raise BagError(f"dataset {npz} does not exist") from None
    except ValueError as exc:
        raise BagError(str(exc)) from None
    return images, labels


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
    return _with_unmatched({"bag": str(out), "frames": index, "labelled": labelled, "skipped": skipped}, labels)


def _with_unmatched(summary: dict, labels: LabelTrack | None) -> dict:
    """The summary plus `unmatched_labels` (the label rows no frame fell into), when there are any."""
    rows = labels.unmatched() if labels is not None else []
    return {**summary, "unmatched_labels": rows} if rows else summary
