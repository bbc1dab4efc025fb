"""Run settings and their layers: built-ins < config file < command line < each record.

A config file is ``--config FILE``, else ``gpt-simple.toml`` in the working directory, else the
``[tool.gpt-simple]`` table of ``pyproject.toml`` there. It holds the run options below at the
top level, the same ``[model]`` and ``[generation]`` tables as a record, and ``[backend.NAME]``
tables of each backend's own options (validated against that backend's schema by the
session). A ``seed`` outside a record is a *run seed*: each record's seed is derived from it and
the record's position.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import attrs
import structlog

from gpt_simple_core.checkpoints.resolve import DEFAULT_MODEL
from gpt_simple_core.errors import ConfigError
from gpt_simple_core.protocol import Device
from gpt_simple_core.records.converter import structure_block
from gpt_simple_core.records.parse import parse_generation, parse_model
from gpt_simple_core.records.problems import Problem
from gpt_simple_core.records.schema import GenerationSpec, ModelSpec, Options, stack

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

log = structlog.get_logger(__name__)

CONFIG_FILE = "gpt-simple.toml"
PYPROJECT_TABLE = "gpt-simple"
CONTEXT_OVERFLOW = ("extrapolate", "truncate")


def _device(instance: Any, attribute: attrs.Attribute, value: str | None) -> None:
    """The syntax only: which device kinds exist is for the backends to declare."""
    if value is not None:
        Device(value)


def _positive(instance: Any, attribute: attrs.Attribute, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"must be >= 1, got {value}")


def _overflow(instance: Any, attribute: attrs.Attribute, value: str | None) -> None:
    if value is not None and value not in CONTEXT_OVERFLOW:
        raise ValueError(f"must be one of {', '.join(CONTEXT_OVERFLOW)}, got {value!r}")


@attrs.frozen(kw_only=True)
class RunOptions:
    """How the run executes (not per record)."""

    device: str | None = attrs.field(default=None, validator=_device)
    threads: int | None = attrs.field(default=None, validator=_positive)
    batch_size: int | None = attrs.field(default=None, validator=_positive)
    max_batch_tokens: int | None = attrs.field(default=None, validator=_positive)
    context_overflow: str | None = attrs.field(default=None, validator=_overflow)


@attrs.frozen(kw_only=True)
class Settings:
    """One layer of settings (config file or command line), or several stacked."""

    run: RunOptions = attrs.field(factory=RunOptions)
    model: ModelSpec = attrs.field(factory=ModelSpec)
    generation: GenerationSpec = attrs.field(factory=GenerationSpec)
    #: backend name -> its options from ``[backend.NAME]`` (not yet checked against a schema)
    backend_options: dict[str, Options] = attrs.field(factory=dict)
    source: str | None = None
    #: the config files this layer (or the layers stacked in it) was read from, lowest first:
    #: the plan shows them, so a forgotten ``[tool.gpt-simple]`` table is never silent
    config_files: tuple[str, ...] = ()

    def over(self, lower: Settings) -> Settings:
        """This layer stacked on ``lower`` (this one wins where it says something)."""
        options = dict(lower.backend_options)
        for name, mine in self.backend_options.items():
            options[name] = mine.over(options.get(name))
        return Settings(
            run=stack(lower.run, self.run),
            model=stack(lower.model, self.model),
            generation=stack(lower.generation, self.generation),
            backend_options=options,
            source=self.source or lower.source,
            config_files=lower.config_files
            + tuple(f for f in self.config_files if f not in lower.config_files),
        )

    @property
    def run_seed(self) -> int | None:
        return self.generation.seed


def find_config_file(explicit: Path | None, cwd: Path) -> tuple[Path, str | None] | None:
    """(file, table inside it) of the config in effect, or None."""
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"config file {explicit} does not exist")
        return explicit, (PYPROJECT_TABLE if explicit.name == "pyproject.toml" else None)
    if (cwd / CONFIG_FILE).is_file():
        return cwd / CONFIG_FILE, None
    pyproject = cwd / "pyproject.toml"
    if pyproject.is_file():
        try:
            data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            return None  # someone else's broken pyproject is not our business
        if PYPROJECT_TABLE in data.get("tool", {}):
            return pyproject, PYPROJECT_TABLE
    return None


def settings_from_mapping(data: Any, source: str) -> tuple[Settings, list[Problem]]:
    """Validate a config table (``model``, ``generation`` sub-tables, run options on top)."""
    if not isinstance(data, dict):
        return Settings(), [Problem(None, "", "config must be a table")]
    problems: list[Problem] = []
    model = ModelSpec()
    generation = GenerationSpec()
    top = {k: v for k, v in data.items() if k not in ("model", "generation", "backend")}
    run, found = structure_block(top, RunOptions, "", None)
    problems += found
    backend_options, found = _backend_tables(data.get("backend", {}), source)
    problems += found
    if "model" in data:
        parsed, found = parse_model(data["model"])
        model = parsed or model
        problems += found
    if "generation" in data:
        parsed_gen, found = parse_generation(data["generation"])
        problems += found
        if parsed_gen is not None:
            dtype = parsed_gen.dtype
            if dtype is not None and model.dtype is not None and model.dtype != dtype:
                message = f"{dtype} conflicts with model.dtype {model.dtype}"
                problems.append(Problem(None, "generation.dtype", message))
            if dtype is not None:
                model = attrs.evolve(model, dtype=model.dtype or dtype)
            generation = attrs.evolve(parsed_gen, dtype=None)
    settings = Settings(
        run=run or RunOptions(),
        model=model,
        generation=generation,
        backend_options=backend_options,
        source=source,
    )
    return settings, problems


def _backend_tables(raw: Any, source: str) -> tuple[dict[str, Options], list[Problem]]:
    """``[backend.NAME]`` tables: one table of options per backend name."""
    if not isinstance(raw, dict):
        return {}, [Problem(None, "backend", "must be a table of [backend.NAME] tables")]
    tables: dict[str, Options] = {}
    problems = []
    for name, values in raw.items():
        if isinstance(values, dict):
            tables[name] = Options.of(values, source)
        else:
            problems.append(Problem(None, f"backend.{name}", "must be a table of options"))
    return tables, problems


def load_config(explicit: Path | None, cwd: Path) -> Settings:
    """The config-file layer (empty when there is none); problems raise :class:`ConfigError`."""
    found = find_config_file(explicit, cwd)
    if found is None:
        log.debug(
            "no config file", looked_for=[CONFIG_FILE, f"pyproject.toml [tool.{PYPROJECT_TABLE}]"]
        )
        return Settings()
    path, table = found
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from None
    if table is not None:
        data = data.get("tool", {}).get(table, {})
    settings, problems = settings_from_mapping(data, str(path))
    where = f"{path} [tool.{table}]" if table else str(path)
    if problems:
        raise ConfigError("\n".join(p.render(where) for p in problems))
    # Settings from a file the user may not remember (a pyproject.toml table) change results:
    # say which file was read, and what it sets.
    log.info("config file read", file=where, sets=_what_it_sets(data))
    return attrs.evolve(settings, config_files=(str(path),))


def _what_it_sets(data: dict[str, Any]) -> list[str]:
    """The settings a config table sets, as dotted names (``generation.temperature``)."""
    names = []
    for key, value in data.items():
        if isinstance(value, dict) and key in ("model", "generation", "backend"):
            names += [f"{key}.{name}" for name in _what_it_sets(value)]
        else:
            names.append(key)
    return names


def with_default_model(settings: Settings) -> Settings:
    """``builtin:default`` as the default model when neither the command line nor the config
    names one (said on stderr at info level): a record naming its own model is unaffected."""
    if settings.model.path is not None:
        return settings
    log.info("no model given: records naming none use the embedded one", model=DEFAULT_MODEL)
    return attrs.evolve(settings, model=attrs.evolve(settings.model, checkpoint=DEFAULT_MODEL))
