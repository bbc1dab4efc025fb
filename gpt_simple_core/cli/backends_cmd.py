"""``gpt-simple backends``: what is installed, what it runs, and whether it can run now."""

from __future__ import annotations

import argparse
import json
from typing import Any

from gpt_simple_core.install import install_command
from gpt_simple_core.protocol import PLUGIN_API, Backend
from gpt_simple_core.registry import Registry

HELP = "list installed backends and formats: package, version, dtypes, devices, dependencies"
SHOWN = ("name", "package", "version", "formats", "priority", "dtypes", "devices")
#: keys printed on lines of their own; every other key is a runtime fact, printed as is
LISTED = ("quantizations", "context_overflow", "options", "dependencies")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("backends", help=HELP, description=HELP + ".")
    parser.add_argument("--json", action="store_true", help="print JSON")
    return parser


def describe(backend: Backend, registry: Registry) -> dict[str, Any]:
    """One backend as ``gpt-simple backends --json`` prints it."""
    source = registry.sources.get(backend.name)
    missing = backend.missing_dependencies()
    described = {
        "name": backend.name,
        "package": (source.distribution if source else None) or type(backend).__module__,
        "version": source.version if source else None,
        "formats": dict(backend.formats),
        "priority": backend.priority,
        "dtypes": list(backend.dtypes),
        "devices": list(backend.devices),
        "quantizations": list(backend.quantizations),
        "context_overflow": list(backend.context_overflow),
        "options": _options_schema(backend),
        "dependencies": "ok"
        if not missing
        else f"missing: {', '.join(missing)} ({registry.install_hint(backend)})",
    }
    if not missing:
        described.update(backend.describe_runtime())
    return described


def _options_schema(backend: Backend) -> dict[str, str] | None:
    """Option name -> its default, as text (None: the backend takes no options)."""
    import attrs

    if backend.Options is None:
        return None
    return {f.name: repr(f.default) for f in attrs.fields(backend.Options)}


def run(args: argparse.Namespace, registry: Registry) -> int:
    backends = [describe(b, registry) for b in registry.backends.values()]
    formats = {name: f.description for name, f in registry.formats.items()}
    broken = dict(registry.plugin_errors)
    if args.json:
        print(
            json.dumps(
                {
                    "plugin_api": PLUGIN_API,
                    "backends": backends,
                    "formats": formats,
                    "plugin_errors": broken,
                },
                indent=2,
            )
        )
        return 0
    if not backends:
        print(f"no backends installed ({install_command('gpt-simple-inference', 'torch')})")
    for b in backends:
        runs = ", ".join(f"{f} ({mode})" for f, mode in b["formats"].items())
        print(f"{b['name']}: {b['package']} {b['version'] or ''}".rstrip())
        print(f"  formats: {runs}; priority {b['priority']}")
        print(f"  dtypes: {', '.join(b['dtypes'])}; devices: {', '.join(b['devices'])}")
        if b["quantizations"]:
            print(f"  quantizations (model.quantize): {', '.join(b['quantizations'])}")
        print(f"  context overflow: {', '.join(b['context_overflow'])}")
        if b["options"]:
            print("  options: " + ", ".join(f"{k} (default {v})" for k, v in b["options"].items()))
        print(f"  dependencies: {b['dependencies']}")
        for key in sorted(set(b) - {*SHOWN, *LISTED}):
            print(f"  {key}: {b[key]}")
    if formats:
        print("formats:")
        for name, description in formats.items():
            print(f"  {name}: {description}")
    for name, error in broken.items():
        print(f"{name}: failed to load: {error}")
    return 0
