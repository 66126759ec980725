"""The layers of docs/CONTRACTS.md hold on the import graph: nothing imports upward, no import
circles between modules, no module in fer_ros/ over 500 lines."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "fer_ros"

# layer -> the fer_ros layers it may import (besides itself and fer_ros/__init__)
ALLOWED = {
    "perception": set(),
    "therapy": set(),
    "bags": {"perception", "ros"},
    "ros": {"perception", "therapy", "dashboard"},
    "dashboard": {"therapy"},
    "cli": {"perception", "ros", "bags", "therapy"},
}
# Third-party roots a layer must never import (lazily or not).
FORBIDDEN = {"perception": {"training", "rclpy", "rosbags"}, "therapy": {"training", "rclpy", "cv2", "onnxruntime"},
             "bags": {"training"}, "ros": {"training"}, "cli": {"training"},
             "dashboard": {"training", "rclpy", "cv2", "onnxruntime"}}
MAX_LINES = 500


def modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        yield name, path


def layer_of(name: str) -> str | None:
    parts = name.split(".")
    if len(parts) >= 2 and parts[1] in ("perception", "ros", "therapy", "bags", "dashboard"):
        return parts[1]
    if name == "fer_ros.cli":
        return "cli"
    return None


def imports_of(name: str, path: Path) -> set[str]:
    """Every module `path` imports, top-level or inside functions, as absolute names."""
    tree = ast.parse(path.read_text())
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)  # `from pkg import module`
    return out


def test_no_layer_imports_upward_or_forbidden_packages():
    names = dict(modules())
    bad = []
    for name, path in names.items():
        layer = layer_of(name)
        if layer is None:
            continue
        for imp in imports_of(name, path):
            root = imp.split(".")[0]
            if root in FORBIDDEN[layer]:
                bad.append(f"{name} imports {imp}")
            if root != "fer_ros" or imp.startswith("fer_ros.msg"):
                continue
            target = layer_of(imp) if imp in names or imp.rsplit(".", 1)[0] in names else layer_of(imp)
            if target and target != layer and target not in ALLOWED[layer]:
                bad.append(f"{name} ({layer}) imports {imp} ({target})")
    assert not bad, "\n".join(bad)


def test_no_import_circles():
    names = dict(modules())
    graph = {}
    for name, path in names.items():
        deps = set()
        for imp in imports_of(name, path):
            while imp and imp not in names:
                imp = imp.rsplit(".", 1)[0] if "." in imp else ""
            if imp and imp != name and imp != "fer_ros":
                deps.add(imp)
        graph[name] = deps
    state, cycles = {}, []

    def visit(n, stack):
        state[n] = 1
        for d in graph[n]:
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack + [d])
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n, [n])
    assert not cycles, "\n".join(cycles)


def test_no_module_over_500_lines():
    long = {name: n for name, path in modules() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, long
