"""Parameter and QoS helpers shared by the fer_ros nodes.

Every parameter is declared with a description (so `ros2 param describe` documents it) and,
for numbers, an allowed range. QoS is configurable through parameters because mismatched
QoS between publisher and subscriber is the most common "no messages arrive" problem.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Any, Iterable

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy)

from fer_ros.ros.teardown import bounded

# Seconds a node may take to stop (its cleanup and the middleware's) before it exits anyway;
# under the launch file's sigterm_timeout, so a hung middleware never needs SIGKILL.
TEARDOWN_S = 10.0


@dataclass(frozen=True)
class Param:
    """One node parameter: name, default (its type fixes the parameter type), description,
    optional inclusive numeric range, and read_only (changing it needs a restart)."""

    name: str
    default: Any
    description: str
    range: tuple | None = None
    read_only: bool = False
    dynamic_typing: bool = False  # accept any type (e.g. `-p source:=0` arrives as an integer)


def descriptor(p: Param) -> ParameterDescriptor:
    d = ParameterDescriptor(description=p.description, read_only=p.read_only,
                            dynamic_typing=p.dynamic_typing)
    if p.range is not None:
        lo, hi = p.range
        if isinstance(p.default, bool):
            pass
        elif isinstance(p.default, int):
            d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=0)]
        elif isinstance(p.default, float):
            d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
    return d


def declare_params(node, params: Iterable[Param]) -> dict:
    """Declare all `params` on `node` and return {name: value} (overrides from YAML/CLI applied)."""
    params = list(params)
    node.declare_parameters("", [(p.name, p.default, descriptor(p)) for p in params])
    return {p.name: node.get_parameter(p.name).value for p in params}


def qos_params(prefix: str, reliability: str, depth: int, what: str) -> list[Param]:
    """The two parameters that make a QoS profile: `<prefix>.reliability` and `<prefix>.depth`."""
    return [
        Param(f"{prefix}.reliability", reliability,
              f"QoS reliability of {what}: 'best_effort' (sensor data: never waits for "
              f"retransmissions; a best_effort subscriber also accepts reliable publishers) or 'reliable'.",
              read_only=True),
        Param(f"{prefix}.depth", depth,
              f"QoS history depth (keep last N) of {what}; small values keep latency low.",
              range=(1, 1000), read_only=True),
    ]


def make_qos(reliability: str, depth: int) -> QoSProfile:
    """QoS profile (keep-last `depth`, volatile) from a reliability name; ValueError when unknown."""
    name = str(reliability).strip().lower().replace("-", "_")
    policies = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE,
                "system_default": ReliabilityPolicy.SYSTEM_DEFAULT}
    if name not in policies:
        raise ValueError(f"unknown QoS reliability {reliability!r}: use best_effort or reliable")
    if int(depth) < 1:
        raise ValueError(f"QoS depth must be >= 1, got {depth}")
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=int(depth),
                      reliability=policies[name], durability=DurabilityPolicy.VOLATILE)


def qos_from_params(values: dict, prefix: str) -> QoSProfile:
    """QoS profile from the values of `qos_params(prefix, ...)` returned by `declare_params`."""
    return make_qos(values[f"{prefix}.reliability"], values[f"{prefix}.depth"])


def recent_rate(times, window: float = 5.0) -> float:
    """Events per second over the last `window` seconds of monotonic `times` (0 with fewer than two)."""
    import time

    recent = [t for t in times if t > time.monotonic() - window]
    return (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 and recent[-1] > recent[0] else 0.0


def _cell(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    return repr(v) if isinstance(v, str) else str(v)


def describe_params(params: Iterable[Param], overrides: dict | None = None) -> str:
    """Markdown table of parameters from their declarations (the one source of the docs' tables):
    name, default, range, the value `overrides` (config/therapy.yaml) sets, description."""
    overrides = overrides or {}
    rows = ["| parameter | default | range | config/therapy.yaml | description |", "|---|---|---|---|---|"]
    for p in params:
        rng = f"{p.range[0]:g} – {p.range[1]:g}" if p.range is not None and not isinstance(p.default, bool) else ""
        cfg = f"`{_cell(overrides[p.name])}`" if p.name in overrides and overrides[p.name] != p.default else ""
        rows.append(f"| `{p.name}` | `{_cell(p.default)}` | {rng} | {cfg} | {p.description} |")
    return "\n".join(rows)


#: Table name -> (node = its section in config/therapy.yaml, module, list of Params); the tables
#: in docs/ros.md and docs/therapy.md are generated from these.
DOC_TABLES = {"expression_node": ("expression_node", "fer_ros.ros.expression_node", "PARAMS"),
              "camera_node": ("camera_node", "fer_ros.ros.camera_node", "PARAMS"),
              "hri_bridge": ("hri_bridge", "fer_ros.ros.hri_bridge", "PARAMS"),
              "dashboard_node": ("dashboard_node", "fer_ros.ros.dashboard_node", "PARAMS"),
              "therapy_node": ("therapy_node", "fer_ros.ros.therapy_node", "SESSION_PARAMS+NODE_PARAMS"),
              "therapy_node.phrases": ("therapy_node", "fer_ros.ros.therapy_node", "PHRASE_PARAMS")}


def doc_tables() -> dict[str, str]:
    """table name -> its generated parameter table (with config/therapy.yaml's values)."""
    import importlib

    from .node_set import default_config, load_config

    cfg = load_config(default_config())
    out = {}
    for table, (node, mod, lists) in DOC_TABLES.items():
        m = importlib.import_module(mod)
        out[table] = describe_params([p for name in lists.split("+") for p in getattr(m, name)], cfg.get(node, {}))
    return out


def write_doc_tables(paths) -> list[str]:
    """Replace the text between `<!-- params:NODE -->` and `<!-- /params:NODE -->` in each
    file with NODE's generated table; returns the nodes whose table changed."""
    tables, changed = doc_tables(), []
    for path in paths:
        text = open(path).read()
        for node, table in tables.items():
            start, end = f"<!-- params:{node} -->", f"<!-- /params:{node} -->"
            if start in text and end in text:
                a, b = text.index(start) + len(start), text.index(end)
                new = f"\n{table}\n"
                if text[a:b] != new:
                    text = text[:a] + new + text[b:]
                    changed.append(node)
        open(path, "w").write(text)
    return changed


class AutostartLifecycleNode(LifecycleNode):
    """A lifecycle node that can configure and activate itself (its `autostart` parameter: for
    `ros2 run` and `fer-ros launch`); on_configure stores what went wrong in `_config_error`."""

    _config_error: Exception | None = None

    def autostart(self) -> None:
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            raise self._config_error or RuntimeError("configure failed (see log)")
        self.trigger_activate()

    @property
    def lifecycle_state(self) -> str:
        """'unconfigured', 'inactive', 'active', 'finalized' (or a transition's name)."""
        return self._state_machine.current_state[1]


def run_node(name: str, make_node, config_errors: tuple = (ValueError,), args=None,
             finished=None) -> int:
    """The `main()` of every fer_ros node: init, build, spin until Ctrl-C or shutdown.

    A configuration mistake (one of `config_errors` raised while building the node) is one
    clear line on stderr and exit code 2, not a traceback. `finished(node)`, checked between
    callbacks, lets a node decide itself when it is done. Call it only as a process's main: once
    it is stopping, the process ends within TEARDOWN_S (teardown.bounded, through_exit).
    """
    import faulthandler
    import sys

    import rclpy
    from rclpy.executors import ExternalShutdownException

    # `kill -USR1 <pid>` prints every thread's Python stack to stderr: the way to see where a
    # node that does not stop (or does not answer) is waiting, without stopping it.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    # Installed before rclpy.init, which chains its own SIGINT handler to this one.
    interrupted = []
    signal.signal(signal.SIGINT, _interrupt_once(interrupted))
    rclpy.init(args=args)
    node = None
    try:
        node = make_node()
        if finished is None:
            rclpy.spin(node)
        else:
            while rclpy.ok() and not finished(node):
                rclpy.spin_once(node, timeout_sec=0.1)
    except (KeyboardInterrupt, SystemExit, ExternalShutdownException):
        pass
    except config_errors as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    except Exception:  # noqa: BLE001
        # The Ctrl-C's KeyboardInterrupt can surface from inside rclpy's C++ as another error
        # (while a message was being taken: "RuntimeError: Unable to convert call argument").
        if not interrupted and rclpy.ok():
            raise
    finally:
        # The node's own cleanup, then the middleware's, which may hang (see teardown.py), and
        # the end of the process, where the garbage collector deletes the DDS participant.
        with bounded(TEARDOWN_S, through_exit=True):
            if node is not None:
                node.destroy_node()
            rclpy.try_shutdown()
        # Python resets SIGINT to the default (die, exit code -2) while it finalises, unless it is
        # ignored: a late second Ctrl-C must not turn a clean stop into a kill.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return 0


def _interrupt_once(seen: list):
    """SIGINT handler raising KeyboardInterrupt the first time only (recorded in `seen`). A
    terminal Ctrl-C reaches every process of the group and `ros2 launch` forwards it again, so
    each node gets SIGINT twice; the second must not interrupt destroy_node() (traceback, exit
    code -2)."""

    def handler(signum, frame):
        if not seen:
            seen.append(signum)
            raise KeyboardInterrupt

    return handler


def stop_logger(node):
    """The logger for a node's last words in destroy_node(): its own while the context is up; after
    Ctrl-C, one of the same name + ".stop" that writes to the console only, because /rosout is gone
    with the context (the node's own logger would add "Failed to publish log message to rosout")."""
    import rclpy.logging

    return node.get_logger() if node.context.ok() else rclpy.logging.get_logger(node.get_logger().name + ".stop")


def publish_diagnostics_every(node, period: float, make_status) -> None:
    """Publish `make_status()` (a DiagnosticStatus) on /diagnostics every `period` seconds."""
    from diagnostic_msgs.msg import DiagnosticArray

    pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)

    def publish():
        msg = DiagnosticArray(status=[make_status()])
        msg.header.stamp = node.get_clock().now().to_msg()
        pub.publish(msg)

    node.create_timer(period, publish)


def key_values(values: dict) -> list:
    """{name: value} -> diagnostic_msgs/KeyValue list (values as strings)."""
    from diagnostic_msgs.msg import KeyValue

    return [KeyValue(key=k, value=str(v)) for k, v in values.items()]


if __name__ == "__main__":  # python -m fer_ros.ros.params docs/ros.md docs/therapy.md
    import sys

    print("regenerated:", ", ".join(write_doc_tables(sys.argv[1:])) or "nothing (up to date)")
