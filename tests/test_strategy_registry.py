"""Strategy metadata lives once: defaults in the Params dataclass, description and search ranges
in the YAML, name, role and raw-data use on the class. Checked over every registered strategy,
and a new strategy shown to be one file and one YAML."""

import dataclasses
import inspect
import shutil
import subprocess
import sys
import textwrap
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.runs import accepted_scenario

from pipeline.config.compose import CONF_DIR, STRATEGY_FILE_KEYS, available, strategy_file
from pipeline.config.paths import REPO_ROOT
from pipeline.experiment import compose
from pipeline.strategies import REGISTRY, Role, Strategy, default_order, with_role
from pipeline.sweep.config import strategy_search


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_the_yaml_says_only_what_only_the_yaml_can_say(name: str) -> None:
    node = strategy_file(name)
    assert set(node) <= set(STRATEGY_FILE_KEYS)
    assert isinstance(node.get("description"), str) and node["description"]
    params = REGISTRY[name].Params()
    fields = {f.name for f in dataclasses.fields(params)}
    for key, search in strategy_search(name).items():
        param = key.split(".")[-1]
        assert param in fields, f"{name}: search range for unknown parameter {param}"
        default = getattr(params, param)
        assert search.contains(default), f"{name}: default {param}={default} outside its range"


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_composing_fills_the_dataclass_defaults_once(name: str) -> None:
    scenario = accepted_scenario(name)
    cfg = compose("synthetic_forgetting", [f"strategy=[{name}]", f"scenario={scenario}"])
    assert cfg.strategies == {name: REGISTRY[name].Params()}  # parsed objects, defaults filled


def test_every_strategy_file_belongs_to_a_registered_strategy() -> None:
    assert set(available("strategy")) == set(REGISTRY)


def test_roles_order_the_default_comparison() -> None:
    (baseline,) = with_role(Role.BASELINE)
    (reference,) = with_role(Role.REFERENCE)
    order = default_order()
    assert order[:2] == [baseline, reference]
    assert sorted(order) == sorted(REGISTRY)  # every strategy, gpm included
    keeps = [REGISTRY[n].keeps_raw_data for n in order[2:]]
    assert keeps == sorted(keeps)  # methods that keep no raw data come first
    assert compose("synthetic_forgetting", ["strategy=[]"]).strategy == [baseline]


def _functions(cls: type) -> Iterator[tuple[str, Callable[..., Any]]]:
    """The functions a class defines itself (those behind its static and class methods and
    properties included), by name; dunder methods left out (``__init__`` overrides nothing)."""
    for name, attr in vars(cls).items():
        if name.startswith("__"):
            continue
        if isinstance(attr, staticmethod | classmethod):
            yield name, attr.__func__
        elif isinstance(attr, property) and attr.fget is not None:
            yield name, attr.fget
        elif inspect.isfunction(attr):
            yield name, attr


def _strategy_classes(cls: type) -> list[type]:
    """A registered strategy and its strategy bases, up to (not including) ``Strategy``."""
    return [c for c in cls.__mro__ if issubclass(c, Strategy) and c is not Strategy]


def _params_type(cls: type) -> object:
    """The type argument of the nearest parametrised strategy base (``Strategy[X]``,
    ``AnchorStrategy[X]``, ``Rehearsal[X]``) that is a class, else ``None``."""
    for c in cls.__mro__:
        for base in vars(c).get("__orig_bases__", ()):
            origin = typing.get_origin(base)
            if isinstance(origin, type) and issubclass(origin, Strategy):
                (arg,) = typing.get_args(base)
                if isinstance(arg, type):
                    return arg
    return None


def test_every_hook_a_strategy_overrides_says_so() -> None:
    """``@override`` (typing_extensions: ``__override__ = True``) on every method a strategy or
    its strategy base defines that a base class already has; mypy's explicit-override check
    holds the same rule statically."""
    missing, checked = [], set()
    for cls in REGISTRY.values():
        for c in _strategy_classes(cls):
            bases = c.__mro__[1:]
            for name, fn in _functions(c):
                if any(hasattr(b, name) for b in bases):
                    checked.add(f"{c.__name__}.{name}")
                    if not getattr(fn, "__override__", False):
                        missing.append(f"{c.__module__}.{c.__qualname__}.{name}")
    assert not missing, f"overrides without @override: {sorted(set(missing))}"
    hooks = {n for n, _ in _functions(Strategy)}
    assert {"penalty", "on_task_end", "check_config", "state_dict"} <= hooks
    assert len(checked) >= 40  # the check sees the hooks (not vacuously true)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_params_are_typed_by_the_generic_base(name: str) -> None:
    """Each strategy names its hyperparameter dataclass as the type argument of its base, that
    class is its ``Params``, and no ``params`` of a method of its hierarchy is ``Any``."""
    cls = REGISTRY[name]
    params = _params_type(cls)
    assert params is not None and params is not Any, f"{name}: Strategy[...] has no concrete type"
    assert isinstance(params, type) and dataclasses.is_dataclass(params)
    assert cls.Params is params
    for c in [*_strategy_classes(cls), Strategy]:
        for fname, fn in _functions(c):
            annotation = fn.__annotations__.get("params")
            if "params" in inspect.signature(fn).parameters:
                assert annotation not in (None, "Any", Any), f"{c.__name__}.{fname}: {annotation}"
        init = vars(c).get("__init__")
        if init is not None:
            assert init.__annotations__.get("params") not in (None, "Any", Any), c.__name__


def test_params_must_be_the_dataclass_the_base_names() -> None:
    @dataclasses.dataclass
    class A:
        x: int = 0

    @dataclasses.dataclass
    class B:
        y: int = 0

    class Derived(Strategy[A]):
        pass

    assert Derived.Params is A
    with pytest.raises(TypeError, match="Params = B"):

        class Disagrees(Strategy[A]):
            Params = B

    with pytest.raises(TypeError, match="not a dataclass"):

        class NotADataclass(Strategy[int]):
            pass


NEW_STRATEGY = '''
"""A throw-away strategy: a pull of every weight towards zero."""

from dataclasses import dataclass

from typing_extensions import override

from pipeline.strategies.base import Strategy, register


@dataclass
class ShrinkParams:
    """Hyperparameters of Shrink.

    Attributes:
        scale: weight of the penalty ``scale * sum_i theta_i^2``.
    """

    scale: float = 0.01


@register
class Shrink(Strategy[ShrinkParams]):
    name = "shrink"

    def __init__(self, params: ShrinkParams) -> None:
        super().__init__(params)
        self.steps = 0

    @override
    def penalty(self, model, batch, logits):
        self.steps += 1
        return self.params.scale * sum((p**2).sum() for p in model.parameters())

    @override
    def state_dict(self):
        return {"steps": self.steps}

    @override
    def load_state_dict(self, state):
        self.steps = state["steps"]
'''

NEW_YAML = """\
description: pull every weight towards zero
search:
  scale: {type: float, low: 1.0e-4, high: 1.0, log: true}
"""

CHECK = """
import sys
from pipeline import checkpoints, runfiles
from pipeline.cli import main
from pipeline.compare import default_strategies
from pipeline.experiment import compose
from pipeline.sweep.config import compose_sweep
from pipeline.sweep.space import search_space
from pipeline.store import Store
from pipeline.tracking import Run

store = sys.argv[1]
assert "shrink" in default_strategies()
cfg = compose("synthetic_forgetting", ["strategy=[shrink]", "strategies.shrink.scale=0.5"])
assert cfg.strategies["shrink"].scale == 0.5
space = search_space(["shrink"], compose_sweep("default"))
assert "strategies.shrink.scale" in space
tiny = [
    "trainer.epochs=1",
    "trainer.max_batches=2",
    "trainer.progress_bar=false",
    "tracking.figures=false",
]
argv = ["run", "synthetic_forgetting", "strategy=[shrink]", f"paths.store={store}", *tiny]
assert main(argv) == 0
client = Store.at(store).client()
(run,) = client.search_runs([client.get_experiment_by_name("synthetic_forgetting").experiment_id])
r = Run.get(Store.at(store), run.info.run_id)
with runfiles.scratch_dir() as tmp:
    module = checkpoints.fetch_checkpoint(r, checkpoints.latest_checkpoints(r)[1], tmp).module
assert module.strategies[0].steps == 4, module.strategies[0].steps
print("shrink ok")
"""


def test_a_new_strategy_is_one_file_and_one_yaml(tmp_path: Path) -> None:
    """Copy the package and the configs, add exactly two files, and the new strategy composes,
    is compared by default, is searchable, runs, and round-trips through its checkpoints."""
    repo = tmp_path / "repo"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO_ROOT / "pipeline", repo / "pipeline", ignore=ignore)
    shutil.copytree(CONF_DIR, repo / "conf", ignore=ignore)
    (repo / "pipeline" / "strategies" / "shrink.py").write_text(NEW_STRATEGY)
    (repo / "conf" / "strategy" / "shrink.yaml").write_text(NEW_YAML)
    script = tmp_path / "check.py"
    script.write_text(textwrap.dedent(CHECK))
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "mlruns")],
        cwd=repo,
        env={"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and "shrink ok" in done.stdout, done.stdout + done.stderr[-3000:]
