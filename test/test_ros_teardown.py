"""fer_ros.ros.teardown.bounded: a teardown that hangs while holding the GIL (as Fast DDS's
participant deletion can, inside rclpy) still ends the process, with its stack and exit code 0;
a teardown that returns leaves nothing armed, unless the bound is to last through the exit."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from conftest import REPO

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX timers (Linux)")

SCRIPT = textwrap.dedent("""
    import ctypes, sys, time
    from fer_ros.ros.teardown import bounded
    with bounded(1.0, through_exit=sys.argv[1] == "exit-hang"):
        if sys.argv[1] == "hang":
            ctypes.PyDLL(None).sleep(30)  # C code that keeps the GIL, like rclpy's destroy calls
        print("teardown returned", flush=True)
    if sys.argv[1] == "exit-hang":  # a hang after the block, as in the interpreter's finalisation
        ctypes.PyDLL(None).sleep(30)
    time.sleep(2.5)  # past the bound: nothing may fire now
    sys.exit(3)
""")


def run(mode: str):
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], cwd=REPO, capture_output=True, text=True,
                         timeout=60, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    return out, time.monotonic() - start


def test_a_teardown_that_hangs_holding_the_gil_ends_with_its_stack_and_code_0():
    out, took = run("hang")
    assert out.returncode == 0, out.stderr
    assert took < 10, took  # not the 30 s sleep
    assert "Timeout (0:00:01)!" in out.stderr and "line 6 in <module>" in out.stderr, out.stderr
    assert "teardown returned" not in out.stdout


def test_a_teardown_that_returns_disarms_the_bound():
    out, _ = run("ok")
    assert out.returncode == 3, out.stderr
    assert out.stdout == "teardown returned\n" and out.stderr == "", out.stderr


def test_through_exit_also_bounds_what_hangs_after_the_block():
    out, took = run("exit-hang")
    assert out.returncode == 0, out.stderr
    assert took < 10, took
    assert out.stdout == "teardown returned\n"
