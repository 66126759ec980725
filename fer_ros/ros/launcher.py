"""`fer-ros launch therapy`: start the therapy node set without `ros2 launch`.

Same nodes, YAML and remappings as launch/therapy.launch.py (both come from
fer_ros.ros.node_set). Each node runs as its own process; its output goes to the terminal
(prefixed with the node name) and to <output>/<node>.log. With --record the annotated
video (annotated.mp4) and every FaceExpressionArray (expressions.jsonl) are saved there too.
Stops on Ctrl-C, after --duration seconds, or when a node exits.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

from . import node_set
from .dds import QuietReader, clean_zombie_shm, large_data_env


def add_arguments(parser):
    parser.add_argument("what", nargs="?", default="therapy", choices=["therapy"],
                        help="node set to start (only 'therapy')")
    parser.add_argument("--config", default=None, help="parameter YAML (default: the package's config/therapy.yaml)")
    for name, (default, description) in node_set.LAUNCH_ARGUMENTS.items():
        parser.add_argument("--" + name.replace("_", "-"), dest=name, default=None,
                            help=f"{description} (default: the config's value, else {default!r})")
    parser.add_argument("--nodes", default=None,
                        help="comma-separated subset of " + ",".join(s.name for s in node_set.NODES))
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--output", default=None, help="folder for logs and recordings (default: runs/therapy-<time>)")
    parser.add_argument("--record", action="store_true",
                        help="save the annotated video and the expressions (JSON lines) in the output folder")
    parser.add_argument("--log-level", default=None, help="ROS log level of the nodes (debug, info, warn, error)")


def plan(config, values: dict, nodes=None) -> list[tuple[node_set.NodeSpec, list[str]]]:
    """[(spec, argv)] of the processes to start; argv runs the node's module with this Python."""
    out = []
    for spec in node_set.NODES:
        if nodes and spec.name not in nodes:
            continue
        if spec.condition and not node_set.is_true(values[spec.condition]):
            continue
        out.append((spec, [sys.executable, "-m", spec.module] + node_set.ros_args(spec, config, values)))
    return out


def _pump(name: str, stream, log_path: Path):
    with open(log_path, "w", buffering=1) as log:
        for line in iter(stream.readline, ""):
            log.write(line)
            sys.stdout.write(f"[{name}] {line}")
            sys.stdout.flush()


class Recorder:
    """In-process subscriber writing annotated.mp4 and expressions.jsonl. A subscription that
    hears nothing while a publisher is known is made anew (dds.QuietReader), as in the
    expression node."""

    RESUBSCRIBE_AFTER = 5.0

    def __init__(self, folder: Path, values: dict):
        import rclpy
        import rclpy.executors
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        from fer_ros.msg import FaceExpressionArray

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("fer_ros_recorder", context=self.context)
        self.folder, self.writer, self.frames, self.results = folder, None, 0, 0
        self.closing = False
        self.annotated_topic = values["annotated_topic"]
        self.publishers_seen = {}  # topic -> most publishers counted at once
        self.nodes_seen = set()
        self.jsonl = open(folder / "expressions.jsonl", "w", buffering=1)
        self._qos = QoSProfile(depth=30, reliability=ReliabilityPolicy.RELIABLE)
        self._topics = {values["annotated_topic"]: (Image, self._on_image),
                        values["expressions_topic"]: (FaceExpressionArray, self._on_faces)}
        self._subs, self._quiet = {}, {t: QuietReader(self.RESUBSCRIBE_AFTER) for t in self._topics}
        for topic in self._topics:
            self._subscribe(topic)
        self.node.create_timer(1.0, self._check_input)
        self.executor = rclpy.executors.SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self):
        # A failing callback must not end the recording silently: report it and keep spinning.
        while not self.closing and self.context.ok():
            try:
                self.executor.spin()
            except Exception as exc:
                if not self.closing and self.context.ok():  # else: shutting down, the loop ends
                    print(f"fer-ros launch: recorder callback failed: {exc!r}", file=sys.stderr, flush=True)

    def _subscribe(self, topic: str):
        msg_type, callback = self._topics[topic]

        def heard(msg):
            self._quiet[topic].received(time.monotonic())
            callback(msg)

        self._subs[topic] = self.node.create_subscription(msg_type, topic, heard, self._qos)
        self._quiet[topic].subscribed(time.monotonic())

    def _check_input(self):
        self.nodes_seen.update(n for n in self.node.get_node_names() if n != self.node.get_name())
        for topic, quiet_reader in self._quiet.items():
            count = self.node.count_publishers(topic)
            self.publishers_seen[topic] = max(count, self.publishers_seen.get(topic, 0))
            quiet = quiet_reader.quiet(time.monotonic())
            if quiet and count:
                self.node.destroy_subscription(self._subs[topic])
                self._subscribe(topic)
                quiet_reader.renewed(time.monotonic())
                print(f"fer-ros launch: recorder: nothing on {topic} for {quiet:.0f} s although a publisher is "
                      f"known: subscribed again ({quiet_reader.count} time(s) so far)", file=sys.stderr, flush=True)

    @property
    def resubscriptions(self) -> int:
        return sum(q.count for q in self._quiet.values())

    def _on_image(self, msg):
        import cv2

        from .image import image_msg_to_bgr

        try:
            frame = image_msg_to_bgr(msg)
        except ValueError:
            return
        if self.writer is None:
            path = self.folder / "annotated.mp4"
            self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0,
                                          (frame.shape[1], frame.shape[0]))
            self.size = (frame.shape[1], frame.shape[0])
        if (frame.shape[1], frame.shape[0]) == self.size:
            self.writer.write(frame)
            self.frames += 1

    def _on_faces(self, msg):
        from fer_ros.perception.pipeline import stamp_seconds

        self.results += 1
        self.jsonl.write(json.dumps({
            "stamp": stamp_seconds(msg.header.stamp), "frame_id": msg.header.frame_id,
            "faces": [{"face_id": f.face_id, "box": [f.box.x_offset, f.box.y_offset, f.box.width, f.box.height],
                       "expression": f.expression, "confidence": round(float(f.confidence), 4)}
                      for f in msg.faces]}) + "\n")

    def close(self):
        import rclpy

        self.closing = True
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self.thread.join(timeout=2.0)
        if self.writer is not None:
            self.writer.release()
        self.jsonl.close()


def run(args) -> int:
    config = Path(args.config) if args.config else node_set.default_config()
    if not config.is_file():
        print(f"fer-ros launch: config file not found: {config}", file=sys.stderr)
        return 2
    values = node_set.argument_defaults(config)
    values.update({k: getattr(args, k) for k in node_set.LAUNCH_ARGUMENTS if getattr(args, k, None) is not None})
    for spec in node_set.NODES:
        if spec.condition:
            try:
                node_set.is_true(values[spec.condition])
            except ValueError as exc:
                print(f"fer-ros launch: --{spec.condition.replace('_', '-')}: {exc}", file=sys.stderr)
                return 2
    try:
        grace = float(values["sigterm_timeout"])
    except ValueError:
        print(f"fer-ros launch: --sigterm-timeout: not a number: {values['sigterm_timeout']!r}", file=sys.stderr)
        return 2
    wanted = set(args.nodes.split(",")) if args.nodes else None
    if wanted and wanted - {s.name for s in node_set.NODES}:
        print(f"fer-ros launch: unknown node(s) {sorted(wanted - {s.name for s in node_set.NODES})}", file=sys.stderr)
        return 2
    folder = Path(args.output or Path("runs") / datetime.now().strftime("therapy-%Y%m%d-%H%M%S")).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    if args.session_log_dir is None:  # keep everything of this run in one folder
        values["session_log_dir"] = str(folder / "therapy_sessions")

    # Images between processes: the nodes and this process' recorder must share the transport
    # (a participant with the default transports does not discover LARGE_DATA ones).
    env = dict(large_data_env())
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("RCUTILS_COLORIZED_OUTPUT", "0")
    # Children import fer_ros from where this one came from (checkout or install).
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")

    def interrupt(signum, frame):  # SIGTERM/SIGHUP: stop the nodes like Ctrl-C (they run in their own sessions)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)
    # Also SIGINT, explicitly: a launcher started in the background of a script inherits SIGINT ignored,
    # and Python then installs no KeyboardInterrupt for it, so `kill -INT` would leave the nodes running
    # (ros2 launch, and each node's run_node, also install their own SIGINT handler).
    signal.signal(signal.SIGINT, interrupt)
    print(f"fer-ros launch therapy: config {config}; output folder {folder}")
    if zombies := clean_zombie_shm():
        print(f"removed {zombies} shared-memory files of Fast DDS participants that died earlier")
    procs, pumps = [], []
    for spec, argv in plan(config, values, wanted):
        if importlib.util.find_spec(spec.module) is None:
            print(f"fer-ros launch: skipping {spec.name}: module {spec.module} is not installed", file=sys.stderr)
            continue
        if args.log_level:
            argv = argv + ["--log-level", args.log_level]
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)  # Ctrl-C goes to us; we stop the nodes in order
        t = threading.Thread(target=_pump, args=(spec.name, proc.stdout, folder / f"{spec.name}.log"), daemon=True)
        t.start()
        procs.append((spec.name, proc))
        pumps.append(t)
        print(f"fer-ros launch: {spec.name} started (pid {proc.pid})")
    recorder = Recorder(folder, values) if args.record else None

    rc, reason = 0, "finished"
    deadline = time.monotonic() + args.duration if args.duration else None
    try:
        while True:
            dead = [(n, p.returncode) for n, p in procs if p.poll() is not None]
            if dead:
                name, code = dead[0]
                reason, rc = f"{name} exited with code {code}", (0 if code == 0 else 1)
                break
            if deadline and time.monotonic() >= deadline:
                reason = f"duration of {args.duration:g} s reached"
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        reason = "interrupted"
    print(f"fer-ros launch: stopping ({reason})")
    for _, proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
    stop_by = time.monotonic() + grace
    for name, proc in procs:
        for sig, wait in ((signal.SIGTERM, stop_by - time.monotonic()), (signal.SIGKILL, 5.0)):
            try:
                proc.wait(timeout=max(wait, 0.1))
                break
            except subprocess.TimeoutExpired:
                print(f"fer-ros launch: {name} did not stop in time: sending {sig.name}", file=sys.stderr)
                if sig == signal.SIGTERM:  # first, where it hangs: every thread's stack (params.run_node)
                    os.killpg(proc.pid, signal.SIGUSR1)
                    time.sleep(1.0)
                os.killpg(proc.pid, sig)
        proc.wait()
        # A node that did not stop cleanly on SIGINT is a bug worth seeing (and a failed run).
        print(f"fer-ros launch: {name} exited with code {proc.returncode}")
        if proc.returncode != 0:
            rc = 1
    for t in pumps:
        t.join(timeout=2)
    if recorder is not None:
        recorder.close()
        again = f" ({recorder.resubscriptions} resubscription(s))" if recorder.resubscriptions else ""
        print(f"fer-ros launch: recorded {recorder.frames} annotated frames, {recorder.results} results{again}")
        if recorder.frames == 0:
            seen = recorder.publishers_seen.get(recorder.annotated_topic, 0)
            why = "a publisher was known" if seen else \
                f"no publisher of it was found; nodes seen: {', '.join(sorted(recorder.nodes_seen)) or 'none'}"
            print(f"fer-ros launch: warning: no annotated image arrived on {recorder.annotated_topic} ({why}); "
                  "no annotated.mp4 written", file=sys.stderr)
    print(f"fer-ros launch: logs{' and recordings' if recorder else ''} in {folder}")
    return rc
