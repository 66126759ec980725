"""`fer-ros` command line: one entry point, one module per subcommand.

Each subcommand module defines `add_arguments(parser)` and `run(args) -> int`; they are
imported lazily so `fer-ros analyze` never pays for rclpy or torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
SUBCOMMANDS = {
    "analyze": ("fer_ros.perception.analyze", "detect faces and expressions in an image, video or folder"),
    "build-engine": ("fer_ros.perception.tensorrt_backend", "build a TensorRT engine from an ONNX model"),
    "launch": ("fer_ros.ros.launcher", "start the camera, expression and therapy nodes (no ros2 launch needed)"),
    "bag": ("fer_ros.bags.cli", "record, make, replay and evaluate rosbags"),
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="fer-ros", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] not in SUBCOMMANDS:
        args = parser.parse_args(argv)  # prints usage / errors for unknown commands
        parser.print_help()
        return 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(SUBCOMMANDS[name][0])
    sub_parser = argparse.ArgumentParser(prog=f"fer-ros {name}", description=SUBCOMMANDS[name][1])
    module.add_arguments(sub_parser)
    args = sub_parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
