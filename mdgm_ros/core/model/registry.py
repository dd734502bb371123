"""The family registry: name -> :class:`~.family.Family`. The concrete families (``mdgm_ros.core.families``)
register themselves when the core is imported; code asks the registry, never a family's module.
"""
from __future__ import annotations

from typing import Any


class FamilyError(ValueError):
    """A family refuses a request (e.g. inference from a subset it has no network for), or no family has
    the name asked for."""


# name -> mdgm_ros.core.model.family.Family (not imported: the registry sits below the interface and the
# model, which both ask it)
FAMILIES: dict[str, Any] = {}


def register_family(family: Any, replace: bool = False) -> Any:
    """Add ``family`` to the registry (``replace``: overwrite a family of the same name)."""
    if family.name in FAMILIES and not replace:
        raise ValueError(f"a family named {family.name!r} is already registered")
    if family.default_fusion not in family.fusions:
        raise ValueError(f"family {family.name!r}: default fusion {family.default_fusion!r} not in {family.fusions}")
    FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Any:
    """The registered family ``name``; :class:`FamilyError` naming the registered ones otherwise."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise FamilyError(f"unknown model family {name!r} (registered: {', '.join(FAMILIES)})") from None
