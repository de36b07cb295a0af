"""Reading ``conf/``: the YAML files of the config groups, ``key=value`` overrides, and the
composition of an experiment's config from them (:func:`compose_raw`), checked against the
schema of :mod:`pipeline.config.schema`.

An experiment file (``conf/experiment/<name>.yaml``) names one file per config group in its
``defaults`` block (``data``, ``model``) and overrides anything below it. Command-line overrides
come last, as ``key=value`` (dotted keys, YAML values) or ``group=choice`` to pick another file of
a group (``model=mlp``, ``data=synthetic``, ``strategy=[naive]``). Every error is one
``ConfigError`` line naming the key or the file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from pipeline.config.paths import REPO_ROOT, PathsConfig
from pipeline.config.schema import ExperimentConfig
from pipeline.config.validation import check_values
from pipeline.errors import ConfigError

CONF_DIR = Path(os.environ.get("PIPELINE_CONF_DIR", REPO_ROOT / "conf"))


def config_groups() -> tuple[str, ...]:
    """The config groups: the folders of ``conf/`` named like a section of the schema
    (``data/``, ``model/``); a file of one is picked by name (``model=mlp``). A new folder
    ``conf/optim/`` would be a group with no code changed."""
    hints = get_type_hints(ExperimentConfig)
    sections = {name for name, t in hints.items() if isinstance(t, type) and is_dataclass(t)}
    return tuple(sorted(d.name for d in CONF_DIR.iterdir() if d.is_dir() and d.name in sections))


def compose_paths(overrides: Sequence[str] = ()) -> PathsConfig:
    """The ``paths`` section alone, for commands that take no experiment (``paths.<key>=...``
    overrides; any other key is refused).

    Raises:
        ConfigError: an unknown key or a bad value (one line).
    """
    bad = [o for o in overrides if not o.startswith("paths.")]
    if bad:
        raise ConfigError(f"override '{bad[0]}': this command takes only paths.<key>=<value>")
    dotlist = [o[len("paths.") :] for o in overrides]
    obj = build(OmegaConf.structured(PathsConfig), dotlist, "paths", PathsConfig)
    obj.check()
    return obj


def available(group: str) -> list[str]:
    """Names of the YAML files of a config group folder (``experiment``, ``model``...), those
    of its sub-folders as ``<folder>/<name>`` (``best/<study>``, what ``make best`` writes)."""
    folder = CONF_DIR / group
    return sorted(
        p.relative_to(folder).with_suffix("").as_posix()
        for p in folder.rglob("*.yaml")
        if p.is_file()
    )


def config_file(group: str, name: str) -> Path:
    """``conf/<group>/<name>.yaml``; ``name`` may name a sub-folder (``best/<study>``).

    Raises:
        ConfigError: a name that leads out of the group's folder (``../x``, ``/etc/x``): a
            config name picks a file of ``conf/``, never any file of the machine.
    """
    folder = CONF_DIR / group
    # normpath, not resolve: `..` is refused, a symlinked conf/ folder still works
    path = Path(os.path.normpath(folder / f"{name}.yaml"))
    if not name or Path(name).is_absolute() or not path.is_relative_to(folder):
        raise ConfigError(f"{group} '{name}': not a file of conf/{group}/")
    return path


def load_yaml(group: str, name: str) -> DictConfig:
    path = config_file(group, name)
    if not path.is_file():
        choices = ", ".join(available(group)) or "none"
        raise ConfigError(
            f"conf/{group}/{name}.yaml: no such {group} config (available: {choices})"
        )
    try:
        loaded = OmegaConf.load(path)
    except Exception as e:  # yaml.YAMLError and friends: report the file, not a traceback
        raise ConfigError(
            f"conf/{group}/{name}.yaml: not valid YAML ({str(e).splitlines()[0]})"
        ) from e
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"conf/{group}/{name}.yaml: must hold a mapping at top level")
    return loaded


def describe(e: OmegaConfBaseException) -> str:
    """One line out of OmegaConf's multi-line error messages."""
    key = getattr(e, "full_key", None) or "?"
    if isinstance(e, ConfigKeyError | ConfigAttributeError):
        return f"unknown key '{key}'"
    if isinstance(e, MissingMandatoryValue):
        return f"missing value for '{key}'"
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    return f"{key}: {first}" if isinstance(e, ValidationError) else first


T = TypeVar("T")


def build(cfg: DictConfig, dotlist: Sequence[str], source: str, schema: type[T]) -> T:
    """``key=value`` overrides merged into ``cfg``, then the typed object of ``schema``.

    Raises:
        ConfigError: an unknown key or a wrong type, one line prefixed with ``source``.
    """
    try:
        cfg = merge(cfg, parse_dotlist(dotlist, source), source)
        obj = OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except OmegaConfBaseException as e:
        raise ConfigError(f"{source}: {describe(e)}") from e
    assert isinstance(obj, schema)
    return obj


def parse_dotlist(items: Sequence[str], source: str) -> DictConfig:
    """``key=value`` strings (YAML values) as a config; the one that does not parse is named.

    Raises:
        ConfigError: a value that is not valid YAML, or a malformed key.
    """
    parsed: Any = OmegaConf.create()
    for item in items:
        try:
            parsed = OmegaConf.merge(parsed, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as e:
            raise ConfigError(f"{source} '{item}': {describe(e)}") from e
        except Exception as e:  # yaml's own errors: "optim.lr=[1,"
            raise ConfigError(f"{source} '{item}': not a valid key=value (YAML value)") from e
    assert isinstance(parsed, DictConfig)
    return parsed


def merge(base: DictConfig, layer: Any, source: str) -> DictConfig:
    try:
        merged = OmegaConf.merge(base, layer)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{source}: {describe(e)}") from e
    assert isinstance(merged, DictConfig)
    return merged


def split_overrides(overrides: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """Split ``group=choice`` selections from ``key=value`` overrides."""
    choices: dict[str, Any] = {}
    dotlist: list[str] = []
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}': expected key=value")
        if key in config_groups() or key == "strategy":
            try:
                parsed = OmegaConf.from_dotlist([item])[key]
            except OmegaConfBaseException as e:
                raise ConfigError(f"override '{item}': {describe(e)}") from e
            except Exception as e:  # yaml's own errors: "strategy=[ewc,"
                raise ConfigError(f"override '{item}': not valid YAML") from e
            if key == "strategy":  # strategy=ewc is strategy=[ewc]
                parsed = list(parsed) if isinstance(parsed, ListConfig) else [parsed]
            choices[key] = parsed
        else:
            dotlist.append(item)
    return choices, dotlist


#: The keys a strategy's YAML file may hold: what only the YAML can say. Its defaults live in
#: its ``Params`` dataclass (one place), never here.
STRATEGY_FILE_KEYS = ("description", "search")


def strategy_file(name: str) -> DictConfig:
    """``conf/strategy/<name>.yaml``: the strategy's ``description`` and ``search`` ranges.

    Raises:
        ConfigError: no such file, bad YAML, or a key other than those two.
    """
    node = load_yaml("strategy", name)
    unknown = sorted({str(k) for k in node} - set(STRATEGY_FILE_KEYS))
    if unknown:
        hint = " (defaults live in the strategy's Params dataclass)" if "params" in unknown else ""
        raise ConfigError(f"conf/strategy/{name}.yaml: unknown key '{unknown[0]}'{hint}")
    search = node.get("search")
    if search is not None and not isinstance(search, DictConfig):
        raise ConfigError(f"conf/strategy/{name}.yaml: search must be a mapping")
    return node


def compose_raw(experiment: str, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Compose and check an experiment's config, its strategies' hyperparameters left as given.

    This is the config layer alone; every caller wants :func:`pipeline.experiment.compose`,
    which also parses and checks the strategies.

    Args:
        experiment: name of a file in ``conf/experiment/`` (without ``.yaml``).
        overrides: ``key=value`` or ``group=choice`` strings, applied last.

    Raises:
        ConfigError: unknown key, wrong type, bad value or missing file (one line).
    """
    body = load_yaml("experiment", experiment)
    choices, dotlist = split_overrides(overrides)
    defaults = body.pop("defaults", None) or {}
    if not isinstance(defaults, DictConfig):
        raise ConfigError(f"conf/experiment/{experiment}.yaml: defaults must be a mapping")
    cfg = OmegaConf.structured(ExperimentConfig)
    groups = config_groups()
    for key, default in defaults.items():
        group = str(key)
        if group not in groups:
            raise ConfigError(
                f"conf/experiment/{experiment}.yaml: unknown group '{group}' "
                f"in defaults (groups: {', '.join(groups)})"
            )
        choice = choices.pop(group, default)
        cfg = merge(cfg, {group: load_yaml(str(group), str(choice))}, f"conf/{group}/{choice}.yaml")
    for group in [g for g in groups if g in choices]:
        choice = choices.pop(group)
        cfg = merge(cfg, {group: load_yaml(group, str(choice))}, f"conf/{group}/{choice}.yaml")
    cfg = merge(cfg, {"name": experiment}, "name")
    cfg = merge(cfg, body, f"conf/experiment/{experiment}.yaml")
    if "strategy" in choices:
        cfg.strategy = choices["strategy"]
    cfg = merge(cfg, parse_dotlist(dotlist, "override"), "override")
    try:
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(describe(e)) from e
    assert isinstance(obj, ExperimentConfig)
    check_values(obj)
    return obj


#: Keys of configs written before the ``paths`` section existed; where things live is the
#: reader's business (its own ``paths``), so a saved config's old locations are dropped.
_LEGACY_KEYS = (("data", "root"), ("tracking", "store"))


def from_dict_raw(tree: dict[str, Any]) -> ExperimentConfig:
    """Rebuild and re-check a config saved with :func:`to_dict` (e.g. inside a checkpoint),
    its strategies left as saved (see :func:`compose_raw`)."""
    tree = {k: dict(v) if isinstance(v, dict) else v for k, v in tree.items()}
    for section, key in _LEGACY_KEYS:
        if isinstance(tree.get(section), dict):
            tree[section].pop(key, None)
    try:
        obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ExperimentConfig), tree))
    except OmegaConfBaseException as e:
        raise ConfigError(describe(e)) from e
    assert isinstance(obj, ExperimentConfig)
    check_values(obj)
    return obj
