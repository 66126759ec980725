"""`fer-ros bag`: make, record, label, replay and evaluate rosbag2 bags (see docs/bags.md).

    fer-ros bag from-video session.mp4 --labels session.csv -o session_bag
    fer-ros bag from-dataset ../shared/data/fer2013.npz --split PublicTest -o fer_test_bag
    fer-ros bag record -o live_bag                      # camera, expressions, therapy topics
    fer-ros bag label live_bag --labels live.csv -o live_labelled
    fer-ros bag replay session_bag -o session_out [--rate 1.0 | --fast] [-p detector:=whole]
    fer-ros bag evaluate session_out --report session_eval
    fer-ros bag info session_out

This module is only the command line; the work is in fer_ros.bags.io (reading, writing),
.make (bags from videos, datasets, label files), .record, .replay and .evaluation.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path

from fer_ros.bags import make
from fer_ros.bags.io import BagReader
from fer_ros.bags.messages import IMAGE_TOPIC, STORAGES, BagError
from fer_ros.bags.record import DEFAULT_RECORD_TOPICS, record
from fer_ros.bags.replay import parse_params, replay

# --------------------------------------------------------------------------- CLI


def _size(text: str):
    try:
        w, h = (int(v) for v in text.lower().split("x"))
        if w <= 0 or h <= 0:
            raise ValueError
        return w, h
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 640x480, not {text!r}") from None


def _rate(text: str):
    if text.lower() in ("fast", "max", "0"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"rate must be a number or 'fast', not {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("rate must be > 0 (or 'fast')")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bag_command", metavar="ACTION", required=True)

    def common(p, default_storage: str | None = "mcap"):
        p.add_argument("--storage", choices=STORAGES, default=default_storage,
                       help="rosbag2 storage (default: %(default)s)" if default_storage
                       else "rosbag2 storage (default: that of the input bag)")
        p.add_argument("--overwrite", action="store_true", help="replace the output bag if it exists")

    p = sub.add_parser("from-video", help="bag of images from a video file, with optional labels")
    p.add_argument("video", type=Path)
    p.add_argument("-o", "--output", type=Path, help="output bag folder (default: <video name>_bag)")
    p.add_argument("--labels", type=Path, help="CSV: rows start_s,end_s,label (seconds from the first frame, "
                   "end exclusive) or frame,label (0-based); labels by name or index")
    p.add_argument("--fps", type=float, help="frame rate of the stamps (default: the video's)")
    p.add_argument("--size", type=_size, help="letterbox frames to WxH, e.g. 640x480 (keeps face shapes)")
    p.add_argument("--loops", type=int, default=1, help="play the video N times in a row")
    p.add_argument("--max-frames", type=int)
    p.add_argument("--frame-id", default="camera")
    common(p)

    p = sub.add_parser("from-dataset", help="bag of FER-2013 images with one label each")
    p.add_argument("npz", type=Path, help="FER-2013 npz (shared/data/fer2013.npz)")
    p.add_argument("-o", "--output", type=Path, help="output bag folder (default: fer2013_<split>_bag)")
    p.add_argument("--split", default="PublicTest")
    p.add_argument("--fps", type=float, default=30.0, help="image rate (default: %(default)s)")
    p.add_argument("--encoding", choices=("mono8", "bgr8"), default="mono8")
    p.add_argument("--limit", type=int, help="only the first N images")
    p.add_argument("--frame-id", default="camera")
    common(p)

    p = sub.add_parser("record", help="record live topics into a bag")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--topics", nargs="+", default=list(DEFAULT_RECORD_TOPICS),
                   help="topics to record (default: camera, expressions, diagnostics, therapy and robot topics)")
    p.add_argument("--duration", type=float, help="stop after S seconds (default: Ctrl-C)")
    common(p)

    p = sub.add_parser("label", help="copy a recorded bag adding ground-truth labels from a CSV")
    p.add_argument("bag", type=Path)
    p.add_argument("--labels", type=Path, required=True, help="CSV as for from-video; times are seconds "
                   "from the first image's stamp, frames count images")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--image-topic", default=IMAGE_TOPIC)
    common(p, None)

    p = sub.add_parser("replay", help="run a bag's images through the expression node, write its outputs")
    p.add_argument("bag", type=Path)
    p.add_argument("-o", "--output", type=Path, help="output bag folder (default: <bag>_replay)")
    speed = p.add_mutually_exclusive_group()
    speed.add_argument("--rate", type=_rate, default=1.0,
                       help="factor of the recorded speed, or 'fast' (default: %(default)s)")
    speed.add_argument("--fast", action="store_true",
                       help="as fast as the node keeps up (in-process, every frame processed)")
    p.add_argument("--detector", help="shorthand for -p detector:=NAME (e.g. 'whole' for pre-cropped faces)")
    p.add_argument("-p", "--param", action="append", default=[], metavar="NAME:=VALUE",
                   help="expression node parameter override (repeatable)")
    p.add_argument("--params-file", type=Path, help="ROS 2 parameters YAML (expression_node section)")
    p.add_argument("--external", action="store_true",
                   help="publish to an expression node that is already running instead of starting one")
    p.add_argument("--image-topic", default=IMAGE_TOPIC,
                   help="image topic in the bag (published to the node's image_topic, default %(default)s)")
    p.add_argument("--keep-images", action="store_true", help="also write the restamped images")
    p.add_argument("--annotated", action="store_true",
                   help="also write /faces/image_annotated (boxes, ids, expressions drawn on the frames)")
    p.add_argument("--record", action="append", default=[], metavar="TOPIC",
                   help="real-time mode: also record this topic, e.g. /faces/image_annotated (repeatable)")
    p.add_argument("--max-frames", type=int)
    p.add_argument("--evaluate", type=Path, metavar="DIR", help="then evaluate and write the report to DIR")
    common(p, None)

    p = sub.add_parser("evaluate", help="score /faces/expressions against the ground-truth labels")
    p.add_argument("bag", type=Path)
    p.add_argument("--report", type=Path, help="folder for evaluation.json/.md and confusion_matrix.png "
                   "(default: <bag>_eval)")
    p.add_argument("--json", action="store_true", help="print the JSON instead of the markdown summary")
    p.add_argument("--no-labels", action="store_true",
                   help="bag without ground truth (e.g. a live recording): rate, faces found and latency only")

    p = sub.add_parser("info", help="topics, counts and provenance of a bag")
    p.add_argument("bag", type=Path)


def _print_evaluation(bag_path, report_dir, as_json: bool = False, labels: bool = True) -> dict:
    from fer_ros.bags import evaluation

    result = evaluation.evaluate_bag(bag_path) if labels else evaluation.evaluate_bag_outputs(bag_path)
    paths = evaluation.write_report(result, report_dir)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print(evaluation.markdown(result), end="")
        print("\nreport: " + "  ".join(paths.values()))
    return result


def run(args) -> int:
    try:
        return _run(args)
    except KeyboardInterrupt:
        out = getattr(args, "output", None)
        print(f"fer-ros bag {args.bag_command}: interrupted" + (f"; what was written is in {out}" if out else ""),
              file=sys.stderr)
        return 130
    except BagError as exc:
        print(f"fer-ros bag {args.bag_command}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"fer-ros bag {args.bag_command}: error: {exc}", file=sys.stderr)
        return 1


def _stop_on_sigterm() -> None:
    """`kill` (SIGTERM) ends record/replay like Ctrl-C: the bag is closed and stays readable."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def _warn_unmatched(summary: dict, labels) -> None:
    """Label rows that no frame fell into: outside the bag's time range, or the wrong units or file."""
    rows = summary.get("unmatched_labels") or []
    if rows:
        shown = ", ".join(rows[:5]) + (f" and {len(rows) - 5} more" if len(rows) > 5 else "")
        print(f"warning: {len(rows)} row(s) of {labels} matched no frame (outside the bag's "
              f"{summary['frames']} frames?): {shown}", file=sys.stderr)


def _run(args) -> int:
    cmd = args.bag_command
    if cmd in ("record", "replay"):
        _stop_on_sigterm()
    if cmd == "from-video":
        out = args.output or Path(f"{args.video.stem}_bag")
        s = make.video_to_bag(args.video, out, labels=args.labels, fps=args.fps, size=args.size, loops=args.loops,
                              max_frames=args.max_frames, storage=args.storage, frame_id=args.frame_id,
                              overwrite=args.overwrite)
        print(f"wrote {s['bag']}: {s['frames']} frames at {s['fps']:g} fps, {s['labelled']} labelled")
        _warn_unmatched(s, args.labels)
    elif cmd == "from-dataset":
        out = args.output or Path(f"fer2013_{args.split}_bag")
        s = make.dataset_to_bag(args.npz, out, split=args.split, fps=args.fps, encoding=args.encoding,
                                limit=args.limit, storage=args.storage, frame_id=args.frame_id,
                                overwrite=args.overwrite)
        print(f"wrote {s['bag']}: {s['frames']} {args.encoding} images at {s['fps']:g} fps, one label each\n"
              f"replay with: fer-ros bag replay {s['bag']} --fast (the bag asks for the whole-image detector)")
    elif cmd == "record":
        s = record(args.output, topics=args.topics, duration=args.duration, storage=args.storage,
                   overwrite=args.overwrite)
        print(f"wrote {s['bag']}: " + (", ".join(f"{t} {n}" for t, n in s["messages"].items()) or "no messages"))
    elif cmd == "label":
        s = make.label_bag(args.bag, args.output, args.labels, topic=args.image_topic, storage=args.storage,
                           overwrite=args.overwrite)
        broken = f" ({s['skipped']} undecodable images skipped)" if s["skipped"] else ""
        print(f"wrote {s['bag']}: {s['labelled']} of {s['frames']} images labelled{broken}")
        _warn_unmatched(s, args.labels)
    elif cmd == "replay":
        params = parse_params(args.param, args.params_file)
        if args.detector:
            params["detector"] = args.detector
        rate = None if args.fast else args.rate
        out = args.output or Path(f"{str(args.bag).rstrip('/')}_replay")
        s = replay(args.bag, out, rate=rate, params=params, external=args.external, image_topic=args.image_topic,
                   keep_images=args.keep_images, extra_topics=args.record, storage=args.storage,
                   overwrite=args.overwrite, max_frames=args.max_frames, annotated=args.annotated)
        fps = f", {s['fps']:.1f} frames/s" if s.get("fps") else ""
        print(f"wrote {s['bag']}: {s['outputs']} outputs for {s['frames_in']} frames ({s['mode']}{fps}), "
              f"{s['labelled']} labels")
        if args.evaluate:
            _print_evaluation(out, args.evaluate, labels=s["labelled"] > 0)
    elif cmd == "evaluate":
        report = args.report or Path(f"{str(args.bag).rstrip('/')}_eval")
        _print_evaluation(args.bag, report, args.json, labels=not args.no_labels)
    elif cmd == "info":
        with BagReader(args.bag) as bag:
            span = (bag.end_time - bag.start_time) / 1e9 if bag.counts else 0.0
            print(f"{args.bag}: {bag.storage}, {sum(bag.counts.values())} messages over {span:.2f} s")
            print(bag.describe())
            for k, v in bag.info.items():
                print(f"  {k}: {v}")
    return 0
