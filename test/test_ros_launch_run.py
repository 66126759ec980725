"""The real launchers, run as processes: `ros2 launch fer_ros therapy.launch.py` (launch,
launch_ros and ros2cli installed from $FER_SHARED/vendor by `make build`; skipped without them)
and `fer-ros launch therapy`. Checks that the nodes come up, arguments and remaps apply, the
lifecycle expression node is activated and can be deactivated with `ros2 lifecycle set`, the
REP-155 bridge publishes, and a terminal Ctrl-C (SIGINT to the whole process group) stops every
node with exit code 0 and no traceback.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

from conftest import REPO, shared_dir

rclpy = pytest.importorskip("rclpy", reason="rclpy not installed (run `make build`)")
pytest.importorskip("fer_ros.msg", reason="fer_ros messages not built (run `make build`)")
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402

from fer_ros.msg import FaceExpressionArray  # noqa: E402
from fer_ros.ros import node_set  # noqa: E402
from fer_ros.ros.dds import large_data_env  # noqa: E402

BIN = Path(sys.executable).parent
# Outside the other ROS tests' domains and Linux's ephemeral port range (see test_ros_launch).
DOMAIN = random.randint(224, 232)  # test_ros_launch uses 215-223
large_data_env()  # the probe, like the nodes
EXPRESSIONS = "/launch_test/expressions"


def _ros2_launch_missing() -> str:
    if not (shared_dir() / "vendor").is_dir():
        return f"no {shared_dir() / 'vendor'} (the launch/ros2cli sources); `ros2 launch` is not installed"
    if not (BIN / "ros2").exists() or importlib.util.find_spec("launch_ros") is None:
        return "launch/ros2cli from $FER_SHARED/vendor not installed: run `make build`"
    return ""


need_ros2_launch = pytest.mark.skipif(bool(_ros2_launch_missing()), reason=_ros2_launch_missing() or "-")


def env():
    e = dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN),
             PYTHONUNBUFFERED="1", RCUTILS_COLORIZED_OUTPUT="0", PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    e["AMENT_PREFIX_PATH"] = sys.prefix  # where `make build` put fer_ros and the vendored packages
    e["PYTHONPATH"] = str(REPO) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


class Running:
    """A launcher in its own process group (like a terminal's foreground job), output collected."""

    def __init__(self, cmd, sigint_ignored: bool = False):
        ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True, preexec_fn=ignore)
        self.lines = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stdout.readline, "")),
                                       daemon=True)
        self.reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 90.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if re.search(pattern, self.output):
                return
            time.sleep(0.2)
        raise AssertionError(f"{pattern!r} not in the output within {timeout} s:\n{self.output[-6000:]}")

    def ctrl_c(self, timeout: float = 30.0) -> int:
        """SIGINT to the whole process group, as a terminal's Ctrl-C does. If the launcher is
        still running after `timeout` s, every process left in the group is asked for its
        threads' stacks (SIGUSR1, see params.run_node) and the failure shows them."""
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            left = self.node_pids()
            self.thread_stacks(left)
            raise AssertionError(f"still running {timeout} s after Ctrl-C: pids {left}\n{self.output[-12000:]}")
        finally:
            self.stop()

    def node_pids(self) -> list[int]:
        """The launched nodes still running (ros2 launch and fer-ros launch log each one's pid)."""
        pids = re.findall(r"process started with pid \[(\d+)\]|fer-ros launch: \w+ started \(pid (\d+)\)", self.output)
        return [pid for pid in (int("".join(m)) for m in pids) if Path(f"/proc/{pid}").exists()]

    def thread_stacks(self, pids=None) -> str:
        """Every node's Python thread stacks (SIGUSR1, see params.run_node), as they appear in
        the output 2 s later; for failure messages."""
        before = len(self.output)
        self._signal_nodes(signal.SIGUSR1, pids)
        time.sleep(2.0)
        return "thread stacks:\n" + self.output[before:][-12000:]

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._signal_nodes(signal.SIGKILL)  # fer-ros launch's nodes run in their own sessions: not left behind
        self.reader.join(timeout=5)

    def _signal_nodes(self, sig, pids=None):
        for pid in self.node_pids() if pids is None else pids:
            try:
                os.kill(pid, sig)
            except OSError:  # it ended meanwhile
                pass


@contextlib.contextmanager
def probe(name: str = "launch_test_probe"):
    """A node of the test's own, in its own context (its own DDS participant), spinning."""
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=DOMAIN)
    node = rclpy.create_node(name, context=context)
    executor = rclpy.executors.SingleThreadedExecutor(context=context)
    executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    try:
        yield node
    finally:
        executor.shutdown(timeout_sec=2)
        node.destroy_node()
        rclpy.try_shutdown(context=context)


@pytest.fixture(scope="module")
def ros():
    with probe() as node:
        yield node


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """`ros2 launch fer_ros therapy.launch.py` with the demo source, an argument, a remap and hri."""
    installed = Path(sys.prefix) / "share" / "fer_ros" / "launch" / "therapy.launch.py"
    assert installed.read_text() == (REPO / "launch" / "therapy.launch.py").read_text(), "run `make build`"
    logs = tmp_path_factory.mktemp("sessions")
    run = Running([str(BIN / "ros2"), "launch", "fer_ros", "therapy.launch.py", "source:=demo",
                   "backend:=onnxruntime", f"expressions_topic:={EXPRESSIONS}", f"session_log_dir:={logs}",
                   "hri:=true"])
    try:
        yield run
    finally:
        run.stop()


def node_report(output: str) -> str:
    """For a failure message: what each launched node's threads wait on (kernel wchan) and the
    TCP connections with unsent or unread bytes, so a stalled transport shows up in CI logs."""
    lines = []
    for name, pid in re.findall(r"\[INFO\] \[(\w+)-\d+\]: process started with pid \[(\d+)\]", output):
        try:
            waits = sorted(Path(t, "wchan").read_text() or "-" for t in Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            lines.append(f"{name} [{pid}]: gone")
            continue
        lines.append(f"{name} [{pid}]: threads waiting on " + ", ".join(
            f"{w} x{waits.count(w)}" for w in sorted(set(waits))))
    try:
        ss = subprocess.run(["ss", "-tnp"], capture_output=True, text=True, timeout=10).stdout.splitlines()
        lines += [f"tcp {line}" for line in ss[1:] if line.split()[1:3] != ["0", "0"]] or ["tcp: no queued bytes"]
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    return "\n".join(lines)


def stall_report(ros, launched) -> str:
    """Why a probe got no expressions: what the nodes say they did (their /diagnostics, as the
    probe receives them), whether a new participant (`ros2 topic echo --once`, another process)
    receives the topic, and node_report. Tells "not publishing" from "not delivered to the probe"."""
    from diagnostic_msgs.msg import DiagnosticArray

    lines = []
    diags = collect(ros, DiagnosticArray, "/diagnostics", 8.0, until=lambda m: len(m) >= 4)
    latest = {s.name: s for m in diags for s in m.status}
    lines += [f"{name}: {s.message}; " + ", ".join(f"{kv.key}={kv.value}" for kv in s.values)
              for name, s in sorted(latest.items())] or ["no /diagnostics reached the probe in 8 s"]
    try:
        echo = subprocess.run([str(BIN / "ros2"), "topic", "echo", "--once", "--no-daemon", EXPRESSIONS,
                               "fer_ros/msg/FaceExpressionArray"], env=env(), capture_output=True, text=True,
                              timeout=30)
        lines.append(f"`ros2 topic echo --once {EXPRESSIONS}` in a new process: exit {echo.returncode}, "
                     f"{len(echo.stdout)} characters received")
    except subprocess.TimeoutExpired:
        lines.append(f"`ros2 topic echo --once {EXPRESSIONS}` in a new process: nothing in 30 s")
    lines.append(f"probe sees {ros.count_publishers(EXPRESSIONS)} publisher(s) of {EXPRESSIONS}")
    return "\n".join(lines + [node_report(launched.output), launched.thread_stacks()])


def collect(node, msg_type, topic, seconds, until=None):
    """Messages on `topic` during `seconds` after discovery, or fewer when `until(messages)` is
    true earlier (the machine may be loaded: wait for what is asked, not for a fixed time)."""
    got = []
    sub = node.create_subscription(msg_type, topic, got.append, QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    deadline = time.monotonic() + 30
    while node.count_publishers(topic) == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # let the first frames (model warm-up) and messages already on the way pass
    got.clear()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not (until and until(got)):
        time.sleep(0.05)
    node.destroy_subscription(sub)
    return list(got)


@need_ros2_launch
def test_show_args_lists_every_argument_with_its_description():
    out = subprocess.run([str(BIN / "ros2"), "launch", "fer_ros", "therapy.launch.py", "--show-args"],
                         env=env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    for name, (_, description) in {"config": (None, "parameter YAML"), **node_set.LAUNCH_ARGUMENTS}.items():
        block = re.search(rf"'{name}':\n\s+(.+)", out.stdout)
        assert block, f"{name} not listed:\n{out.stdout}"
        assert block.group(1).startswith(description.split(":")[0]), (name, block.group(1))


def _nodes_seen(node, want: set, seconds: float) -> set:
    deadline = time.monotonic() + seconds
    while True:
        names = set(node.get_node_names())
        if want <= names or time.monotonic() > deadline:
            return names
        time.sleep(0.5)


@need_ros2_launch
def test_ros2_launch_starts_the_nodes_with_arguments_remaps_and_an_active_expression_node(ros, launched):
    launched.wait_for(r"\[expression_node[^\]]*\].*active: expressions from")
    want = {"camera_node", "expression_node", "therapy_node", "hri_bridge"}
    names = _nodes_seen(ros, want, 30)
    with contextlib.ExitStack() as stack:
        if not want <= names:
            # Fast DDS (3.2, LARGE_DATA) now and then never matches two participants (seen once here:
            # this probe and a live hri_bridge, for 60 s; docs/ros.md). A new participant is matched
            # afresh; a node that did not start stays missing.
            ros = stack.enter_context(probe("launch_test_probe_2"))
            names = _nodes_seen(ros, want, 40)
        assert want <= names, f"{names}\n{node_report(launched.output)}\n{launched.thread_stacks()}"
        _check_the_running_set(ros, launched)


def _check_the_running_set(ros, launched):
    results = collect(ros, FaceExpressionArray, EXPRESSIONS, 30.0, until=lambda r: len(r) >= 20)  # remapped
    assert len(results) >= 20, f"{len(results)} results in 30 s\n{stall_report(ros, launched)}"
    assert sum(len(r.faces) == 1 for r in results) >= 0.8 * len(results)  # the demo's one face
    assert ros.count_publishers("/faces/expressions") == 0
    from diagnostic_msgs.msg import DiagnosticArray

    def expression_status(messages):
        return [s for m in messages for s in m.status if s.name.startswith("expression_node")]

    diags = expression_status(collect(ros, DiagnosticArray, "/diagnostics", 20.0, until=expression_status))
    values = {kv.key: kv.value for kv in diags[-1].values}
    assert values["backend"] == "onnxruntime" and values["lifecycle_state"] == "active"  # argument applied

    from hri_msgs.msg import Expression, IdsList

    tracked = collect(ros, IdsList, "/humans/faces/tracked", 20.0, until=lambda m: len(m) >= 5 and m[-1].ids)
    ids = {i for m in tracked for i in m.ids}
    assert tracked and ids and all(re.fullmatch(r"f[1-9][0-9]*", i) for i in ids), \
        f"ids {ids} in {len(tracked)} /humans/faces/tracked messages in 20 s\n{stall_report(ros, launched)}"
    face = next(m.ids[0] for m in reversed(tracked) if m.ids)
    expressions = collect(ros, Expression, f"/humans/faces/{face}/expression", 20.0, until=len)
    assert expressions and expressions[-1].expression in {
        "angry", "disgusted", "scared", "happy", "sad", "surprised", "neutral"}
    assert 0.0 < expressions[-1].confidence <= 1.0 and -1 <= expressions[-1].valence <= 1


@pytest.mark.slow
@need_ros2_launch
def test_ros2_launch_expressions_at_29_hz_or_more(ros, launched):
    launched.wait_for(r"active: expressions from")
    results = collect(ros, FaceExpressionArray, EXPRESSIONS, 10.0)
    stamps = [r.header.stamp.sec + r.header.stamp.nanosec * 1e-9 for r in results]
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    print(f"/faces/expressions under ros2 launch: {rate:.1f} Hz over {len(stamps)} results")
    assert rate >= 29.0, f"{rate:.1f} Hz"


def ros2_lifecycle(*args, timeout=45):
    cmd = [str(BIN / "ros2"), "lifecycle", args[0], "--no-daemon", "--spin-time", "5", "/expression_node", *args[1:]]
    try:
        return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout).stdout
    except subprocess.TimeoutExpired:  # a service request lost under load: the caller checks the state
        return ""


def lifecycle_set(transition, state):
    """`ros2 lifecycle set /expression_node <transition>` until `ros2 lifecycle get` says `state`."""
    for _ in range(3):
        out = ros2_lifecycle("set", transition)
        if "Transitioning successful" in out or not out:
            if ros2_lifecycle("get").startswith(state):
                return
    raise AssertionError(f"`ros2 lifecycle set /expression_node {transition}` did not reach {state}: {out}")


@need_ros2_launch
def test_ros2_lifecycle_set_deactivates_the_expression_node(ros, launched):
    launched.wait_for(r"active: expressions from")
    lifecycle_set("deactivate", "inactive")
    assert collect(ros, FaceExpressionArray, EXPRESSIONS, 2.0) == []
    lifecycle_set("activate", "active")
    assert len(collect(ros, FaceExpressionArray, EXPRESSIONS, 30.0, until=lambda r: len(r) >= 10)) >= 10, \
        stall_report(ros, launched)


def status_lost_by_launch(out: str) -> dict[str, int]:
    """{node: pid} whose exit status launch lost to CPython gh-87744 (fixed in 3.13): launch
    forwards the Ctrl-C with Popen.send_signal, which polls first and so can reap a node that has
    already stopped on the terminal's SIGINT; asyncio's child watcher then finds no child, logs
    "Unknown child process pid P" and reports exit code 255. Only that exact pair counts."""
    unknown = set(re.findall(r"Unknown child process pid (\d+), will report returncode 255", out))
    died = re.findall(r"\[ERROR\] \[(\w+)-\d+\]: process has died \[pid (\d+), exit code 255\b", out)
    return {name: int(pid) for name, pid in died if pid in unknown}


def test_status_lost_by_launch_counts_only_the_pair_asyncio_and_launch_log():
    # Lines as a CI run printed them (7 Dec), plus a node that really died with code 255.
    out = ("[INFO] [camera_node-1]: sending signal 'SIGINT' to process[camera_node-1]\n"
           "Unknown child process pid 25330, will report returncode 255\n"
           "[ERROR] [camera_node-1]: process has died [pid 25330, exit code 255, cmd '/x/camera_node'].\n"
           "[ERROR] [therapy_node-3]: process has died [pid 25334, exit code 255, cmd '/x/therapy_node'].\n")
    assert status_lost_by_launch(out) == {"camera_node": 25330}


@need_ros2_launch
def test_ctrl_c_stops_every_node_of_ros2_launch_cleanly(launched):
    """Each node gets SIGINT twice (from the terminal and from launch): all exit with code 0."""
    launched.wait_for(r"active: expressions from")
    before = node_report(launched.output)  # the nodes' state just before the Ctrl-C, for a failure
    rc = launched.ctrl_c()
    out = launched.output
    assert rc == 0, out[-6000:]
    started = set(re.findall(r"\[INFO\] \[(\w+)-\d+\]: process started", out))
    assert {"camera_node", "expression_node", "therapy_node", "hri_bridge"} <= started, started
    lost = status_lost_by_launch(out)
    for name in started:
        if name in lost:  # CPython gh-87744: its exit code is unknowable; it must have ended
            assert not Path(f"/proc/{lost[name]}").exists(), f"{name} still running:\n{out[-6000:]}"
            warnings.warn(f"{name}'s exit status was read by launch's own send_signal (CPython gh-87744)")
            continue
        assert re.search(rf"\[INFO\] \[{name}-\d+\]: process has finished cleanly", out), \
            f"{name}:\n{out[-6000:]}\nbefore Ctrl-C:\n{before}"
    assert "Traceback" not in out, out[-6000:]
    assert len(re.findall("process has died", out)) == len(lost), out[-6000:]
    if "Timeout (0:00:" in out:  # a node's teardown hit its bound (fer_ros.ros.teardown): say where
        warnings.warn(f"a node's teardown was cut short:\n{out[-6000:]}")


def test_ctrl_c_stops_every_node_of_fer_ros_launch_cleanly(tmp_path):
    # Started with SIGINT ignored, as a script's background job is (`fer-ros launch ... &`): the
    # launcher must still stop on it, as ros2 launch does. A launcher that left this to Python's
    # default handler ran on for the whole session (a fresh-clone run started with `&`, 6 Dec).
    run = Running([sys.executable, "-m", "fer_ros.cli", "launch", "therapy", "--output", str(tmp_path / "run"),
                   "--backend", "onnxruntime", "--nodes", "camera_node,expression_node,therapy_node"],
                  sigint_ignored=True)
    try:
        run.wait_for(r"\[expression_node\].*active: expressions from")
        time.sleep(1.0)
        assert len(run.node_pids()) == 3, run.output  # so that a hang would show the nodes' stacks
        rc = run.ctrl_c()
    finally:
        run.stop()
    out = run.output
    assert rc == 0, out[-6000:]
    for name in ("camera_node", "expression_node", "therapy_node"):
        assert f"fer-ros launch: {name} exited with code 0" in out, out[-6000:]
    assert "Traceback" not in out, out[-6000:]
    # The session was running: its log's place is the therapy node's last words, on the console
    # alone, since /rosout went with the context (params.stop_logger).
    assert "session ended; log in" in out and "Failed to publish log message to rosout" not in out, out[-6000:]
