"""Request parameters, one parser for every transport: native gRPC and REST, the Open Inference Protocol's both.

Values arrive typed (JSON, protobuf, OIP parameters) or as text (multipart form fields, KServe's gRPC
client, which has no double parameter). The same value gives the same answer or the same error on
every protocol:

* a number is an int, a float or a numeric string, finite; a boolean is not a number;
* an integer is a number without a fraction (``3`` and ``3.0`` and ``"3"``, not ``2.5``);
* a boolean is true/false, or the text true/false/1/0/yes/no;
* a list of integers is a list, one integer, or the text ``"0,2"`` or ``"[0, 2]"``.

The task modules turn parameters into their settings (``DetectionRequests.selection``...), which
check the ranges; this module only checks types.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from kubeinfer.runtime.errors import invalid_argument

TRUE = ("true", "1", "yes")
FALSE = ("false", "0", "no")


class Parameters:
    """Typed reads of one request's parameters, each failure an INVALID_ARGUMENT naming the parameter."""

    def __init__(self, values: Mapping[str, Any] | None = None) -> None:
        self.values = {name: value for name, value in (values or {}).items() if value is not None}

    def __repr__(self) -> str:
        return f"Parameters({self.values!r})"

    def check_known(self, accepted: Iterable[str], where: str) -> None:
        """INVALID_ARGUMENT naming any parameter not in ``accepted``."""
        accepted = tuple(accepted)
        unknown = sorted(set(self.values) - set(accepted))
        if unknown:
            raise invalid_argument(f"unknown parameter(s) {unknown} for {where}; accepted: {list(accepted)}")

    def number(self, name: str) -> float | None:
        value = self.values.get(name)
        if value is None:
            return None
        return _number(name, value)

    def integer(self, name: str) -> int | None:
        value = self.values.get(name)
        if value is None:
            return None
        return _integer(name, value)

    def boolean(self, name: str) -> bool | None:
        value = self.values.get(name)
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
            return value.strip().lower() in TRUE
        raise invalid_argument(f"parameter {name!r} must be true or false, got {_shown(value)}")

    def integers(self, name: str) -> tuple[int, ...]:
        value = self.values.get(name)
        if value is None or value == "":
            return ()
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except ValueError:
                    raise invalid_argument(
                        f"parameter {name!r} must be a list of integers, got {_shown(value)}") from None
            else:
                value = [part for part in text.split(",") if part.strip()]
        elif not isinstance(value, list | tuple):
            value = [value]
        if not isinstance(value, list | tuple):
            raise invalid_argument(f"parameter {name!r} must be a list of integers, got {_shown(value)}")
        return tuple(_integer(name, item, listed=True) for item in value)


def _shown(value: Any) -> str:
    """A value as the error message shows it: the same whether it came typed (JSON, protobuf) or as text."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value)
        except (TypeError, ValueError):
            text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise invalid_argument(f"parameter {name!r} must be a number, got {_shown(value)}")
    if isinstance(value, int):
        number = float(value) if abs(value) < 2**63 else math.inf
    elif isinstance(value, float):
        number = value
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise invalid_argument(f"parameter {name!r} must be a number, got {_shown(value)}") from None
    else:
        raise invalid_argument(f"parameter {name!r} must be a number, got {_shown(value)}")
    if not math.isfinite(number):
        raise invalid_argument(f"parameter {name!r} must be finite, got {_shown(value)}")
    return number


def _integer(name: str, value: Any, listed: bool = False) -> int:
    what = "a list of integers" if listed else "an integer"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise invalid_argument(f"parameter {name!r} must be {what}, got {_shown(value)}")
    if isinstance(value, str):
        try:
            number = _number(name, value)
        except Exception:
            raise invalid_argument(f"parameter {name!r} must be {what}, got {_shown(value)}") from None
    else:
        number = _number(name, value)
    if not number.is_integer():
        raise invalid_argument(f"parameter {name!r} must be {what}, got {_shown(value)}")
    return int(number)


def check_range(name: str, value: float, low: float, high: float) -> float:
    """``value`` if within [low, high]; INVALID_ARGUMENT naming ``name`` otherwise (NaN is never within)."""
    if not low <= value <= high:
        raise invalid_argument(f"{name} must be in [{low}, {high}], got {value}")
    return value
