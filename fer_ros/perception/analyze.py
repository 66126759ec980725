"""`fer-ros analyze PATH [--json OUT] [--annotate OUT]`: faces and expressions in an image,
a video or a folder of them, without ROS.

JSON: {"model", "backend", "detector", "inputs": [{"path", "kind", "width", "height", "fps",
"frames": [{"frame", "time_s", "faces": [FaceResult.to_dict(), ...]}]}]}.
--annotate writes the annotated image/video (a folder of them for a folder input). An image
result may carry "warnings" (e.g. a truncated JPEG), also printed to stderr.
A summary goes to stdout; user mistakes give a one-line error and a non-zero exit code.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
VIDEO_EXT = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}


#: Short spellings kept from before the options came from `settings.SETTINGS`.
_ALIASES = {"model_path": ("--model",)}


def _dest(name: str) -> str:
    return "setting_" + name.replace(".", "__")


def add_arguments(parser) -> None:
    """The input/output options, then one option per pipeline setting (`settings.SETTINGS`:
    the expression node's parameters, same names, defaults and ranges, except `OFFLINE`)."""
    import argparse

    from .settings import OFFLINE, SETTINGS

    parser.add_argument("path", help="an image, a video, or a folder of images/videos")
    parser.add_argument("--json", metavar="OUT", help="write per-frame results as JSON to OUT ('-' = stdout)")
    parser.add_argument("--annotate", metavar="OUT",
                        help="write the annotated image/video to OUT (a folder when PATH is a folder)")
    parser.add_argument("--stride", type=int, default=1, help="analyze every Nth video frame (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    group = parser.add_argument_group(
        "pipeline settings", "the expression node's parameters (docs/ros.md); offline analysis scans every "
        "frame in full and runs nothing in the background (" + ", ".join(f"{k}={v}" for k, v in OFFLINE.items())
        + ") so its results do not depend on timing")
    for s in SETTINGS:
        default = OFFLINE.get(s.name, s.default)
        kw = dict(dest=_dest(s.name), default=default,
                  help=s.description.replace("%", "%%") + " (default: %(default)s)")
        if isinstance(default, bool):
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw.update(type=type(default), metavar=s.name.split(".")[-1].upper())
            if s.choices:
                kw.update(choices=s.choices, metavar=None)
        group.add_argument(s.flag, *_ALIASES.get(s.name, ()), **kw)


def setting_values(args) -> dict:
    """{setting name: value} from parsed `add_arguments` options."""
    from .settings import SETTINGS

    return {s.name: getattr(args, _dest(s.name)) for s in SETTINGS}


def _error(msg: str) -> int:
    print(f"fer-ros analyze: error: {msg}", file=sys.stderr)
    return 2


def _kind(path: Path) -> str | None:
    ext = path.suffix.lower()
    return "image" if ext in IMAGE_EXT else "video" if ext in VIDEO_EXT else None


def collect_inputs(path: Path) -> list[tuple[Path, str]]:
    """(file, kind) pairs for a file or the media files of a folder (sorted, not recursive)."""
    if path.is_dir():
        return [(p, _kind(p)) for p in sorted(path.iterdir()) if p.is_file() and _kind(p)]
    return [(path, _kind(path) or "video")]  # unknown suffix: let OpenCV try it as a video


def _annotated_path(out: Path, src: Path, kind: str, many: bool) -> Path:
    if many or out.is_dir():
        out.mkdir(parents=True, exist_ok=True)
        return out / (src.name if kind == "image" else src.stem + ".mp4")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def jpeg_truncated(path: Path) -> bool:
    """A JPEG whose last scan has no end-of-image marker after it: OpenCV decodes such a file
    without complaint and fills the missing rows with gray, where no face can be found."""
    if path.suffix.lower() not in (".jpg", ".jpeg"):
        return False
    try:
        data = path.read_bytes()
    except OSError:
        return False
    # Entropy-coded data never holds FF DA / FF D9 (byte stuffing), so the main image's last scan
    # (an EXIF thumbnail's come before it) ends at the first FF D9 after the last FF DA.
    return data.find(b"\xff\xd9", max(data.rfind(b"\xff\xda"), 0)) < 0


def analyze_image(pipe, path: Path, annotate_to: Path | None) -> dict:
    """One image's faces; "warnings" lists what makes the result doubtful (e.g. a truncated file)."""
    import cv2

    from .annotate import draw_results

    frame = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if frame is None or frame.size == 0:
        raise ValueError(f"cannot read image {path} (not an image, or corrupt)")
    warnings = []
    if jpeg_truncated(path):
        warnings.append(f"{path} is truncated (no JPEG end marker): only its top part was decoded, "
                        "so faces in the rest are missed")
    if frame.dtype != "uint8":  # 16-bit PNG/TIFF: scale to 8 bit
        frame = cv2.convertScaleAbs(frame, alpha=255.0 / max(1, int(frame.max())))
    pipe.reset(restart_ids=True)  # each file is its own scene: ids from 1
    results = pipe.process(frame)
    if annotate_to is not None:
        try:
            ok = cv2.imwrite(str(annotate_to), draw_results(frame, results))
        except cv2.error:
            ok = False
        if not ok:
            raise ValueError(f"cannot write the annotated image {annotate_to} (unknown extension or bad folder?)")
    item = {"path": str(path), "kind": "image", "width": frame.shape[1], "height": frame.shape[0], "fps": None,
            "frames": [{"frame": 0, "time_s": 0.0, "faces": [r.to_dict() for r in results]}]}
    return {**item, "warnings": warnings} if warnings else item


def analyze_video(pipe, path: Path, annotate_to: Path | None, stride: int = 1, progress: bool = True) -> dict:
    import cv2
    from tqdm import tqdm

    from .annotate import draw_results

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ValueError(f"cannot open {path} as an image or a video (unsupported format or corrupt)")
    fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    fps = fps if 1.0 <= fps <= 1000.0 else 30.0  # some containers report 0 or nonsense
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    writer, frames, width, height = None, [], 0, 0
    pipe.reset(restart_ids=True)  # each file is its own scene: ids from 1
    try:
        with tqdm(total=total, unit="frame", desc=path.name, disable=not progress, leave=False) as bar:
            index = 0
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                bar.update(1)
                if index % stride == 0 and frame is not None and frame.size:
                    height, width = frame.shape[:2]
                    t = index / fps
                    results = pipe.process(frame, stamp=t)
                    frames.append({"frame": index, "time_s": round(t, 4), "faces": [r.to_dict() for r in results]})
                    if annotate_to is not None:
                        if writer is None:
                            fourcc = cv2.VideoWriter_fourcc(*("MJPG" if annotate_to.suffix.lower() == ".avi" else "mp4v"))
                            writer = cv2.VideoWriter(str(annotate_to), fourcc, fps / stride, (width, height))
                            if not writer.isOpened():
                                raise ValueError(f"cannot write the annotated video {annotate_to} "
                                                 "(use a .mp4 or .avi name)")
                        writer.write(draw_results(frame, results))
                index += 1
    finally:
        cap.release()
        if writer is not None:
            writer.release()
    if index == 0:
        raise ValueError(f"cannot read any frame from {path} (not an image or a video, or corrupt)")
    return {"path": str(path), "kind": "video", "width": width, "height": height, "fps": fps, "frames": frames}


def summary(item: dict) -> str:
    name = Path(item["path"]).name
    frames = item["frames"]
    if item["kind"] == "image":
        faces = frames[0]["faces"]
        body = ", ".join(f"#{f['face_id']} {f['expression']} {f['confidence']:.2f} at {tuple(f['box'])}" for f in faces)
        return f"{name}: {len(faces)} face(s)" + (f": {body}" if faces else "")
    with_faces = sum(1 for f in frames if f["faces"])
    per_id: dict[int, Counter] = {}
    for f in frames:
        for face in f["faces"]:
            per_id.setdefault(face["face_id"], Counter())[face["expression"]] += 1
    ids = ", ".join(f"#{i} mostly {c.most_common(1)[0][0]} ({sum(c.values())} frames)" for i, c in sorted(per_id.items()))
    return f"{name}: {len(frames)} frames analysed, faces in {with_faces}" + (f"; {ids}" if ids else "")


def run(args) -> int:
    path = Path(args.path)
    if not path.exists():
        return _error(f"no such file or folder: {path}")
    if args.stride < 1:
        return _error("--stride must be >= 1")
    inputs = collect_inputs(path)
    if not inputs:
        return _error(f"no images or videos in {path} (looked for {', '.join(sorted(IMAGE_EXT | VIDEO_EXT))})")

    from .settings import build_pipeline

    values = setting_values(args)
    if values["detector"] == "yunet" and not values["detector.model"]:
        return _error("--detector yunet needs --detector-model PATH/face_detection_yunet_*.onnx")
    try:
        pipe = build_pipeline(values)
    except (FileNotFoundError, ValueError, TypeError) as exc:
        return _error(str(exc))

    annotate = Path(args.annotate) if args.annotate else None
    many = path.is_dir()
    items, failed = [], 0
    for src, kind in inputs:
        try:
            out = _annotated_path(annotate, src, kind, many) if annotate else None
        except OSError as exc:  # e.g. a parent that is a file: the same for every input
            return _error(f"cannot write the annotated output to {annotate}: {exc.strerror or exc}")
        try:
            if kind == "image":
                item = analyze_image(pipe, src, out)
            else:
                item = analyze_video(pipe, src, out, args.stride, progress=not args.quiet)
        except ValueError as exc:
            failed += 1
            print(f"fer-ros analyze: {'warning' if many else 'error'}: {exc}", file=sys.stderr)
            continue
        items.append(item)
        for warning in item.get("warnings", ()):
            print(f"fer-ros analyze: warning: {warning}", file=sys.stderr)
        if not args.quiet and args.json != "-":
            print(summary(item))
    if args.json:
        doc = {"model": str(pipe.classifier.model_path), "backend": pipe.classifier.backend,
               "detector": getattr(pipe.detector, "name", type(pipe.detector).__name__), "inputs": items}
        text = json.dumps(doc, indent=1)
        if args.json == "-":
            print(text)
        else:
            try:
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).write_text(text)
            except OSError as exc:
                return _error(f"cannot write {args.json}: {exc.strerror or exc}")
    if not items:
        if many:  # the per-file warnings scroll by; say plainly that nothing was analysed
            print(f"fer-ros analyze: error: none of the {len(inputs)} image/video files in {path} "
                  "could be read", file=sys.stderr)
        return 1
    return 1 if failed and not many else 0
