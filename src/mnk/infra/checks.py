"""Small value checks shared by the options objects (plain Python: no numpy, no torch)."""

from __future__ import annotations

import numbers


def require(ok: bool, key: str, must: str, value) -> None:
    """Raise ValueError naming the config key when a check fails."""
    if not ok:
        raise ValueError(f"{key} must be {must}, got {value!r}")


def is_bool(value) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_"  # numpy's too


def is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not is_bool(value)


def is_number(value) -> bool:
    return is_int(value) or isinstance(value, numbers.Real) and not is_bool(value)


def as_list(value) -> list:
    """A config value that may be one item or a list of them, as a list."""
    return list(value) if isinstance(value, (list, tuple)) else [value]
