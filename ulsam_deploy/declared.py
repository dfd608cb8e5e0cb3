"""Options declared with their rules: a field annotated ``Annotated[int | None, Flag("--opt-level", ge=0, le=5)]``
says its flag, range and choices where it is defined, and :func:`check_flags` turns a broken rule into the one
sentence every command uses ("--opt-level must be from 0 to 5, not 7."). The CLI declares the same ranges to
Typer; these rules hold for library callers too. Rules between fields stay in the options' ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass

from ulsam_deploy.errors import UserError


@dataclass(frozen=True)
class Flag:
    name: str
    ge: float | None = None
    le: float | None = None
    choices: tuple | None = None


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _range_text(flag: Flag) -> str:
    if flag.ge is not None and flag.le is not None:
        return f"from {_number(flag.ge)} to {_number(flag.le)}"
    return f"at least {_number(flag.ge)}" if flag.ge is not None else f"at most {_number(flag.le)}"


def check_flags(options) -> None:
    """Check every ``Flag``-annotated field of the dataclass instance ``options`` (each item of a tuple field)."""
    hints = typing.get_type_hints(type(options), include_extras=True)
    for field in dataclasses.fields(options):
        flag = next((m for m in getattr(hints.get(field.name), "__metadata__", ()) if isinstance(m, Flag)), None)
        value = getattr(options, field.name)
        if flag is None or value is None:
            continue
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if flag.choices is not None and item not in flag.choices:
                raise UserError(f"{flag.name} must be one of {', '.join(map(str, flag.choices))}, not '{item}'.")
            if flag.ge is None and flag.le is None:
                continue
            bad = isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item) or \
                (flag.ge is not None and item < flag.ge) or (flag.le is not None and item > flag.le)
            if bad:
                raise UserError(f"{flag.name} must be {_range_text(flag)}, not {item}.")


__all__ = ["Flag", "check_flags"]
