"""Builds a handler module into a gridfn component with componentize-py::

    python -m gridfn.build moderation_router -p handlers/python/moderation-router -o moderation-router.wasm

``MODULE`` is the Python module holding the ``@handler`` function, found on
the ``-p`` paths (default: the current directory). The component targets a
WIT world shipped in this package (gridfn's ``gridfn:handler@0.1.1`` plus
``wasi:http/outgoing-handler``): ``batch-handler`` when the module has a
``@batch_handler`` (the module is imported here, under this CPython, to
see), ``handler`` otherwise. It holds CPython, the standard library, the
gridfn package and the handler. Needs ``pip install gridfn[build]``.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

WIT = Path(__file__).parent / "wit"
WORLD = "gridfn:python/handler@0.1.0"
BATCH_WORLD = "gridfn:python/batch-handler@0.1.0"


def world_of(module: str, paths: list[str]) -> str:
    """The world ``module`` exports: :data:`BATCH_WORLD` when it has a
    ``@batch_handler``. Imports it, as componentize-py will (its
    module-level code runs either way)."""
    sys.path[:0] = [str(Path(path).resolve()) for path in paths]
    world_class = getattr(importlib.import_module(module), "WitWorld", None)
    return BATCH_WORLD if hasattr(world_class, "handle_batch") else WORLD


def command(module: str, paths: list[str], output: str, world: str = WORLD) -> list[str]:
    """The componentize-py command line that builds ``module`` for ``world``."""
    package_root = str(Path(__file__).parent.parent)
    python_paths = [arg for path in [*paths, package_root] for arg in ("-p", path)]
    script = "from componentize_py import script; import sys; sys.exit(script())"
    return [
        sys.executable, "-c", script,
        "-q", "-d", str(WIT), "-w", world,
        "componentize", module, *python_paths, "-o", output,
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gridfn.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("module", help="the Python module with the @handler function")
    parser.add_argument("-p", "--path", action="append", default=[], help="where to find it and its dependencies")
    parser.add_argument("-o", "--output", required=True, help="the component to write (.wasm)")
    args = parser.parse_args(argv)
    try:
        import componentize_py  # noqa: F401
    except ImportError:
        print("gridfn.build needs componentize-py: pip install 'gridfn[build]'", file=sys.stderr)
        return 2
    paths = args.path or ["."]
    return subprocess.call(command(args.module, paths, args.output, world_of(args.module, paths)))


if __name__ == "__main__":
    sys.exit(main())
