"""The Fast DDS transport setting (fer_ros.ros.dds): Fast DDS parses it, and a user's own choice
is kept by every launcher."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest

pytest.importorskip("rclpy", reason="rclpy not installed (run `make build`)")

from fer_ros.ros.dds import ENV_VAR, TRANSPORTS, large_data_env  # noqa: E402

PARTICIPANT = ("import rclpy; rclpy.init(); node = rclpy.create_node('dds_setting_check'); "
               "node.destroy_node(); rclpy.shutdown(); print('participant created')")


def participant_output(value: str) -> str:
    env = dict(os.environ, **{ENV_VAR: value, "ROS_DOMAIN_ID": str(random.randint(101, 200)), "RCUTILS_COLORIZED_OUTPUT": "0"})
    out = subprocess.run([sys.executable, "-c", PARTICIPANT], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout + out.stderr


def test_fast_dds_accepts_the_transport_setting():
    out = participant_output(TRANSPORTS)
    assert "participant created" in out and "Wrong value" not in out, out


def test_a_misspelt_setting_is_what_fast_dds_reports():
    """The check above can fail: Fast DDS names a value it cannot parse (and falls back to DEFAULT)."""
    assert "Wrong value" in participant_output(TRANSPORTS.replace("non_blocking", "non_blockin"))


def test_a_users_own_setting_is_kept():
    assert large_data_env({ENV_VAR: "DEFAULT"})[ENV_VAR] == "DEFAULT"
    assert large_data_env({})[ENV_VAR] == TRANSPORTS
