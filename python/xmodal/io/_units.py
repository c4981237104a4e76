"""Units of NGFF axes: the UDUNITS-2 length and time unit names NGFF allows, common spellings of
them (:func:`ngff_unit`), and conversion between length units (:func:`convert_length`)."""

from __future__ import annotations

#: Metres per NGFF (UDUNITS-2) length unit.
LENGTH_UNITS = {
    "yoctometer": 1e-24, "zeptometer": 1e-21, "attometer": 1e-18, "femtometer": 1e-15, "picometer": 1e-12,
    "angstrom": 1e-10, "nanometer": 1e-9, "micrometer": 1e-6, "millimeter": 1e-3, "centimeter": 1e-2,
    "decimeter": 1e-1, "meter": 1.0, "hectometer": 1e2, "kilometer": 1e3, "megameter": 1e6, "gigameter": 1e9,
    "terameter": 1e12, "petameter": 1e15, "exameter": 1e18, "zettameter": 1e21, "yottameter": 1e24,
    "inch": 0.0254, "foot": 0.3048, "yard": 0.9144, "mile": 1609.344, "parsec": 3.0856775814913673e16,
}
#: Seconds per NGFF time unit.
TIME_UNITS = {
    "yoctosecond": 1e-24, "zeptosecond": 1e-21, "attosecond": 1e-18, "femtosecond": 1e-15,
    "picosecond": 1e-12, "nanosecond": 1e-9, "microsecond": 1e-6, "millisecond": 1e-3, "centisecond": 1e-2,
    "decisecond": 1e-1, "second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0,
}


def ngff_unit(units: str | None) -> str | None:
    """``units`` as an NGFF (UDUNITS-2) length unit name: a name of
    :data:`LENGTH_UNITS` as it is, a common spelling ("um", "µm", "micron", "nm")
    as that name; None stays None. ValueError naming ``units`` for anything else."""
    from .._validation import describe
    from ._tiff import unit_name

    if units is None:
        return None
    name = units.strip().lower() if isinstance(units, str) else None
    name = name if name in LENGTH_UNITS else unit_name(name)
    if name not in LENGTH_UNITS:
        raise ValueError(f"units: expected an NGFF length unit such as 'micrometer' or 'nanometer' (or 'um', "
                         f"'nm'), got {describe(units)}")
    return name


def convert_length(values, unit: str | None, to: str | None) -> list[float]:
    """``values`` in length ``unit`` expressed in ``to`` (both NGFF names, see :data:`LENGTH_UNITS`);
    unchanged when either is None, unknown or they are equal."""
    values = [float(v) for v in values]
    if unit == to or unit not in LENGTH_UNITS or to not in LENGTH_UNITS:
        return values
    factor = LENGTH_UNITS[unit] / LENGTH_UNITS[to]
    return [float(f"{v * factor:.12g}") for v in values]
