"""The package metadata matches the code: package.xml declares what the nodes import,
CMakeLists.txt builds every message and installs every executable of the node set."""

from __future__ import annotations

import re
import sys

import pytest

from conftest import REPO

from fer_ros.ros import node_set

ROS_MODULES = {"rclpy", "sensor_msgs", "std_msgs", "diagnostic_msgs", "std_srvs", "rcl_interfaces",
               "ament_index_python", "builtin_interfaces", "launch", "launch_ros"}


def imported_top_level(paths) -> set:
    names = set()
    for path in paths:
        for m in re.finditer(r"^\s*(?:from|import)\s+([A-Za-z_]\w*)", path.read_text(), re.M):
            names.add(m.group(1))
    return names


def test_package_xml_is_valid_and_declares_every_ros_import():
    catkin_pkg = pytest.importorskip("catkin_pkg.package", reason="catkin_pkg not installed")
    package = catkin_pkg.parse_package(str(REPO / "package.xml"))
    package.validate()
    assert package.package_format == 3 and package.name == "fer_ros"
    declared = {d.name for d in package.build_depends + package.exec_depends + package.buildtool_depends}
    used = imported_top_level(list((REPO / "fer_ros").glob("*.py")) + [REPO / "launch" / "therapy.launch.py"])
    missing = (used & ROS_MODULES) - declared
    assert not missing, f"package.xml does not declare {sorted(missing)}"


def test_cmake_builds_every_message_and_installs_every_executable():
    cmake = (REPO / "CMakeLists.txt").read_text()
    for msg in sorted((REPO / "msg").glob("*.msg")):
        assert f'"msg/{msg.name}"' in cmake, f"{msg.name} is not in rosidl_generate_interfaces"
    for spec in node_set.NODES:
        assert f'"{spec.executable}={spec.module}"' in cmake, f"{spec.executable} is not installed"
    assert "install(DIRECTORY launch config" in cmake


def test_installed_executables_are_on_the_venv_path():
    """After `make build` the node executables and fer-ros sit next to this Python (skips in a
    source-only environment)."""
    bindir = REPO / ".venv" / "bin"
    if not (bindir / "fer-ros").exists() or not sys.executable.startswith(str(REPO / ".venv")):
        pytest.skip("not running from this checkout's .venv after `make build`")
    for name in [s.executable for s in node_set.NODES] + ["fer-ros"]:
        exe = bindir / name
        assert exe.is_file() and exe.stat().st_mode & 0o111, name
        assert exe.read_text().startswith(f"#!{REPO / '.venv' / 'bin' / 'python'}")
        assert (REPO / ".venv" / "lib" / "fer_ros" / name).is_file()  # where `ros2 run` looks
