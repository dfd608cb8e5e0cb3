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
    """A flag's name and rules: inclusive (``ge``, ``le``) or exclusive (``gt``, ``lt``) bounds, or ``choices``;
    ``why`` is said after the range ("--batch-size must be at least 2 (BatchNorm needs two samples), not 1.")."""

    name: str
    ge: float | None = None
    le: float | None = None
    choices: tuple | None = None
    gt: float | None = None
    lt: float | None = None
    why: str | None = None

    @property
    def bounded(self) -> bool:
        return any(b is not None for b in (self.ge, self.le, self.gt, self.lt))


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _range_text(flag: Flag) -> str:
    if flag.ge is not None and flag.le is not None:
        text = f"from {_number(flag.ge)} to {_number(flag.le)}"
    else:
        low = (f"at least {_number(flag.ge)}" if flag.ge is not None else
               f"greater than {_number(flag.gt)}" if flag.gt is not None else None)
        high = (f"at most {_number(flag.le)}" if flag.le is not None else
                f"less than {_number(flag.lt)}" if flag.lt is not None else None)
        text = " and ".join(t for t in (low, high) if t)
    return f"{text} ({flag.why})" if flag.why else text


def _outside(flag: Flag, item) -> bool:
    if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item):
        return True
    return ((flag.ge is not None and item < flag.ge) or (flag.le is not None and item > flag.le)
            or (flag.gt is not None and item <= flag.gt) or (flag.lt is not None and item >= flag.lt))


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
                shown = f"'{item}'" if isinstance(item, str) else item
                raise UserError(f"{flag.name} must be one of {', '.join(map(str, flag.choices))}, not {shown}.")
            if flag.bounded and _outside(flag, item):
                raise UserError(f"{flag.name} must be {_range_text(flag)}, not {item}.")


__all__ = ["Flag", "check_flags"]
