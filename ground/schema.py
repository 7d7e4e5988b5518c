"""The base of every validated document (plans, technique configs): pydantic models that forbid unknown
fields, are frozen, take no look-alike values (`true` is not a number, "3" is not an integer) and no
NaN or infinity unless a field says so.

Strict mode accepts only tuples for tuple fields; YAML and JSON give lists, so tuple fields are declared
with `Tuple` below, which turns a list into a tuple before the strict check.
"""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict


def _list_to_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def Tuple(item_type):  # noqa: N802 - reads like the type it builds: Tuple(float) = tuple[float, ...]
    """A tuple field that accepts the list YAML and JSON give."""
    return Annotated[tuple[item_type, ...], BeforeValidator(_list_to_tuple)]


def Pair(item_type):  # noqa: N802
    return Annotated[tuple[item_type, item_type], BeforeValidator(_list_to_tuple)]
