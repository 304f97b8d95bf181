"""The ``bonemet:`` namespace of the Dask config, merged from the package's ``bonemet.yaml``."""

from __future__ import annotations

import os
from typing import Any

import dask.config
import yaml

_DEFAULTS_FILE = os.path.join(os.path.dirname(__file__), "bonemet.yaml")

with open(_DEFAULTS_FILE, encoding="utf-8") as _f:
    _DEFAULTS = yaml.safe_load(_f)

dask.config.update_defaults(_DEFAULTS)


def get(key: str, default: Any = None) -> Any:
    """A ``bonemet.`` config value: ``get("memory-budget")``, ``get("cluster.n-workers")``."""
    return dask.config.get(f"bonemet.{key}", default=default)


def memory_budget_bytes() -> int:
    """The per-worker memory budget in bytes (config ``bonemet.memory-budget``)."""
    from dask.utils import parse_bytes

    value = get("memory-budget")
    try:
        return int(parse_bytes(value))
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"bonemet.memory-budget={value!r} is not a size; set it like '4GiB' or 4294967296"
        ) from err
