"""The dataset catalogue: one file per dataset, found by reading this package.

Each module here (other than :mod:`~pipeline.catalogue.spec`) registers one dataset, or the
variants of one (CIFAR-100's fine and coarse labels), with
:func:`~pipeline.catalogue.spec.register_dataset`. :func:`datasets` imports them all once, so a
new dataset is one new file: ``make data``, the config's choices and the tasks find it.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from functools import cache

from pipeline.catalogue.spec import REGISTRY, DatasetSpec, Format, register_dataset

__all__ = ["DatasetSpec", "Format", "dataset", "datasets", "register_dataset"]


@cache
def _read_package() -> None:
    for module in pkgutil.iter_modules(__path__):
        if module.name != "spec":
            importlib.import_module(f"{__name__}.{module.name}")


def datasets() -> Mapping[str, DatasetSpec]:
    """Every dataset of the catalogue, by name (sorted)."""
    _read_package()
    return dict(sorted(REGISTRY.items()))


def dataset(name: str) -> DatasetSpec:
    """The dataset called ``name``.

    Raises:
        KeyError: no dataset of the catalogue has that name.
    """
    _read_package()
    return REGISTRY[name]
