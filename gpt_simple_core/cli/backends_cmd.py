"""``gpt-simple backends``: what is installed, what it runs, and whether it can run now."""

from __future__ import annotations

import argparse
import functools
import json
from importlib.metadata import packages_distributions, version
from typing import Any

from gpt_simple_core import plugin_manager
from gpt_simple_core.protocol import Backend

HELP = "list installed backends: package, version, formats, dtypes, devices, dependencies"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("backends", help=HELP, description=HELP + ".")
    parser.add_argument("--json", action="store_true", help="print JSON")
    return parser


@functools.cache
def _distributions() -> dict[str, list[str]]:
    return packages_distributions()


def _package(backend: Backend) -> tuple[str, str | None]:
    top = type(backend).__module__.split(".", 1)[0]
    names = _distributions().get(top)
    if not names:
        return top, None
    return names[0], version(names[0])


def describe(backend: Backend) -> dict[str, Any]:
    """One backend as ``gpt-simple backends --json`` prints it."""
    package, package_version = _package(backend)
    missing = backend.missing_dependencies()
    described = {
        "name": backend.name,
        "package": package,
        "version": package_version,
        "formats": dict(backend.formats),
        "priority": backend.priority,
        "dtypes": list(backend.dtypes),
        "devices": list(backend.devices),
        "dependencies": "ok" if not missing else f"missing: {', '.join(missing)}",
    }
    if not missing:
        described.update(backend.describe_runtime())
    return described


def run(args: argparse.Namespace) -> int:
    backends = [describe(b) for b in plugin_manager.get_backends().values()]
    broken = dict(plugin_manager.plugin_errors)
    if args.json:
        print(json.dumps({"backends": backends, "plugin_errors": broken}, indent=2))
        return 0
    if not backends:
        print("no backends installed (pip install 'gpt-simple-inference[torch]')")
    for b in backends:
        formats = ", ".join(f"{f} ({mode})" for f, mode in b["formats"].items())
        print(f"{b['name']}: {b['package']} {b['version'] or ''}".rstrip())
        print(f"  formats: {formats}; priority {b['priority']}")
        print(f"  dtypes: {', '.join(b['dtypes'])}; devices: {', '.join(b['devices'])}")
        print(f"  dependencies: {b['dependencies']}")
        for key in sorted(
            set(b)
            - {
                "name",
                "package",
                "version",
                "formats",
                "priority",
                "dtypes",
                "devices",
                "dependencies",
            }
        ):
            print(f"  {key}: {b[key]}")
    for name, error in broken.items():
        print(f"{name}: failed to load: {error}")
    return 0
