"""The example's own tool and metric: plain functions, nothing imported from lightning_nat.

The tool gets the text the model wrote inside ``convert[...]`` and returns the observation
text. It may raise: the agent turns exceptions into ``Error: ...`` observations and stops
a call that runs past the task's ``tool_timeout``.
"""

from __future__ import annotations

import re

# factor to the base unit of each dimension (metre, kilogram, litre, second)
_UNITS = {
    "length": {"m": 1.0, "km": 1000.0, "cm": 0.01, "mm": 0.001, "mi": 1609.344, "ft": 0.3048, "in": 0.0254,
               "yd": 0.9144},
    "mass": {"kg": 1.0, "g": 0.001, "lb": 0.45359237, "oz": 0.028349523125},
    "volume": {"l": 1.0, "ml": 0.001, "gal": 3.785411784, "cup": 0.2365882365},
    "time": {"s": 1.0, "min": 60.0, "h": 3600.0, "day": 86400.0},
}
_ALIASES = {"meter": "m", "meters": "m", "metre": "m", "metres": "m", "kilometer": "km", "kilometers": "km",
            "kilometres": "km", "mile": "mi", "miles": "mi", "foot": "ft", "feet": "ft", "inch": "in", "inches": "in",
            "yard": "yd", "yards": "yd", "kilogram": "kg", "kilograms": "kg", "gram": "g", "grams": "g",
            "pound": "lb", "pounds": "lb", "lbs": "lb", "ounce": "oz", "ounces": "oz", "liter": "l", "liters": "l",
            "litre": "l", "litres": "l", "gallon": "gal", "gallons": "gal", "cups": "cup", "hour": "h", "hours": "h",
            "minute": "min", "minutes": "min", "second": "s", "seconds": "s", "days": "day"}
_TEMPERATURE = {"c", "f", "k", "celsius", "fahrenheit", "kelvin"}
_QUERY = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*([A-Za-z]+)\s+(?:to|in)\s+([A-Za-z]+)\s*$")


def _unit(name: str) -> tuple[str, str]:
    key = _ALIASES.get(name.lower(), name.lower())
    for dimension, units in _UNITS.items():
        if key in units:
            return dimension, key
    raise ValueError(f"unknown unit '{name}'")


def _temperature(value: float, src: str, dst: str) -> float:
    kelvin = {"c": value + 273.15, "f": (value - 32) * 5 / 9 + 273.15, "k": value}[src[0]]
    return {"c": kelvin - 273.15, "f": (kelvin - 273.15) * 9 / 5 + 32, "k": kelvin}[dst[0]]


def convert(query: str) -> str:
    """Converts a quantity between units, written like '5 km to mi' (length, mass, volume, time, temperature).

    Args:
        query: the quantity and the target unit, as '<number> <unit> to <unit>', e.g. '5 km to mi'
    """
    match = _QUERY.match(query)
    if not match:
        raise ValueError("write the query as '<number> <unit> to <unit>', e.g. '5 km to mi'")
    value, src, dst = float(match.group(1)), match.group(2), match.group(3)
    if src.lower() in _TEMPERATURE and dst.lower() in _TEMPERATURE:
        result = _temperature(value, src.lower(), dst.lower())
    else:
        (dim_a, a), (dim_b, b) = _unit(src), _unit(dst)
        if dim_a != dim_b:
            raise ValueError(f"cannot convert {dim_a} ({src}) to {dim_b} ({dst})")
        result = value * _UNITS[dim_a][a] / _UNITS[dim_b][b]
    return f"{match.group(1)} {src} = {result:.6g} {dst}"


_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


def close_enough(prediction: str | None, gold: object) -> tuple[bool, float]:
    """Reward: the first number of the answer within 1 % of the gold one; score: 1 - relative error (floored at 0)."""
    found = _NUMBER.search(prediction or "")
    if found is None:
        return False, 0.0
    value, target = float(found.group().replace(",", "")), float(gold)  # type: ignore[arg-type]
    error = abs(value - target) / max(abs(target), 1e-9)
    return error <= 0.01, max(0.0, 1.0 - error)
