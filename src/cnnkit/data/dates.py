"""Acquisition dates of an image time series: where they come from, their checks, and days for the network.

A series' dates are taken from the first of these sources that has them:

1. ``dates.json`` beside the series — in a per-date folder, a list (``["2024-04-02", "2024-05-11", ...]``); in
   the ``series/`` folder, an object naming each series (``{"field_01": ["20240402", ...], ...}``);
2. the **file names** of a per-date folder, each holding one date as ``YYYYMMDD`` or ``YYYY-MM-DD``
   (``S2_20240402_T31TCJ.tif``, ``2024-04-02.png``);
3. the **band descriptions** of a TIFF stack read through :mod:`cnnkit.rasters` (GDAL), each band's description
   holding the date of its band (``"20240402_B04"``; the bands of one date next to each other; in a stack of
   pages, page after page);
4. the stack's **TIFF tags**: a ``"dates"`` list in the JSON image description ``tifffile`` writes
   (``tifffile.imwrite(path, series, metadata={"dates": ["2024-04-02", ...]})``), or a ``dates`` metadata item
   (GDAL's ``TIFFTAG_GDAL_METADATA``: ``dataset.update_tags(dates="2024-04-02,2024-05-11")`` with rasterio);
5. otherwise **the order of the files** is the time axis: days ``0, 1, …, T − 1`` (``source = "file order"``,
   which :attr:`SeriesDates.time_axis` says in words for a log or a report).

Dates must increase strictly (a repeated or earlier date is refused, naming the file); a date that cannot be
parsed, a list of another length than the series, and a series of no date are refused too.

Days: the network's date encoding takes whole days since a reference date — by default January 1 of the first
date's year, so a season's days are its days of the year (and keep counting past December 31).

Examples:
    >>> dates = SeriesDates((date(2024, 4, 2), date(2024, 5, 11)), "file names")
    >>> dates.days().tolist(), dates.time_axis
    ([92, 131], 'acquisition dates (from file names)')
    >>> SeriesDates.file_order(3).days().tolist(), SeriesDates.file_order(3).time_axis
    ([0, 1, 2], 'the order of the files (no acquisition dates found)')
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from itertools import pairwise
from pathlib import Path

import torch
from torch import Tensor

from cnnkit.errors import CnnkitError, ShapeError

__all__ = ["DATE_SOURCES", "SeriesDates", "check_dates", "date_in_text", "dates_from_descriptions",
           "dates_from_json", "dates_from_names", "dates_from_tags", "parse_date", "series_dates"]

DATE_SOURCES = ("dates.json", "file names", "band descriptions", "TIFF tags", "file order")
"""Where a series' dates came from (:attr:`SeriesDates.source`), in the order they are looked for."""

_DATE = re.compile(r"(?<!\d)(\d{4})-(\d{2})-(\d{2})(?!\d)|(?<!\d)(\d{4})(\d{2})(\d{2})(?!\d)")


def parse_date(value: str | int, where: str) -> date:
    """``value`` (``"YYYY-MM-DD"``, ``"YYYYMMDD"`` or the integer ``YYYYMMDD``) as a date; else an error naming
    ``where`` (the file or entry it came from).

    Examples:
        >>> parse_date("2024-04-02", "x"), parse_date(20180924, "x")
        (datetime.date(2024, 4, 2), datetime.date(2018, 9, 24))
        >>> parse_date("2024-02-30", "dates.json[3]")
        Traceback (most recent call last):
        ...
        cnnkit.errors.ShapeError: dates.json[3]: cannot parse the date '2024-02-30' (expected YYYY-MM-DD or ...
    """
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    match = re.fullmatch(r"(\d{4})-(\d{2})-(\d{2})|(\d{4})(\d{2})(\d{2})", text or "")
    if match:
        parts = [int(v) for v in match.groups() if v is not None]
        try:
            return date(*parts)
        except ValueError:
            pass
    raise ShapeError(f"{where}: cannot parse the date {value!r} (expected YYYY-MM-DD or YYYYMMDD, a real day).")


def date_in_text(text: str, where: str) -> date | None:
    """The one date written in ``text`` (a file name, a band description) as ``YYYYMMDD`` or ``YYYY-MM-DD``;
    ``None`` if it holds none. Eight digits that are not a real day (an id) are no date; two different dates
    are an error naming ``where``.

    Examples:
        >>> date_in_text("S2_20240402_T31TCJ.tif", "f"), date_in_text("field_12345678.tif", "f")
        (datetime.date(2024, 4, 2), None)
    """
    found = set()
    for match in _DATE.finditer(text):
        parts = [int(v) for v in match.groups() if v is not None]
        try:
            found.add(date(*parts))
        except ValueError:
            continue
    if len(found) > 1:
        raise ShapeError(f"{where}: the name holds more than one date ({', '.join(sorted(map(str, found)))}); "
                         "expected one per date.")
    return found.pop() if found else None


def check_dates(dates: Sequence[date], names: Sequence[str], where: str) -> tuple[date, ...]:
    """``dates`` if there is at least one and they increase strictly; else an error naming ``where`` and the
    files (or entries) ``names`` of the two dates at fault."""
    if not dates:
        raise ShapeError(f"{where}: a series needs at least one date. Received none.")
    for i in range(1, len(dates)):
        if dates[i] <= dates[i - 1]:
            rule = "repeats" if dates[i] == dates[i - 1] else "goes backwards from"
            raise ShapeError(f"{where}: the dates must increase. {names[i]} ({dates[i]}) {rule} {names[i - 1]} "
                             f"({dates[i - 1]}).")
    return tuple(dates)


def dates_from_names(paths: Sequence[Path], where: str) -> tuple[date, ...] | None:
    """The dates in the names of a folder's per-date files (in name order), or ``None`` if no name holds one.

    Raises:
        ShapeError: some names hold a date and others do not (naming the first without), or the dates repeat
            or go backwards (naming both files).
    """
    found = [date_in_text(p.name, str(p)) for p in paths]
    if all(d is None for d in found):
        return None
    missing = [p for p, d in zip(paths, found) if d is None]
    if missing:
        raise ShapeError(f"{where}: every file name must hold its date (YYYYMMDD or YYYY-MM-DD) when one does. "
                         f"{missing[0].name} holds none.")
    return check_dates(found, [p.name for p in paths], where)


def dates_from_descriptions(descriptions: Sequence[str | None], bands: int | None,
                            where: str) -> tuple[date, ...] | None:
    """The dates in a stack's band descriptions, one per group of ``bands`` consecutive bands (``None`` if no
    description holds a date). Without ``bands``, consecutive bands with the same date are one date.

    Examples:
        >>> dates_from_descriptions(["20240402_B4", "20240402_B8", "20240511_B4", "20240511_B8"], None, "s.tif")
        (datetime.date(2024, 4, 2), datetime.date(2024, 5, 11))
    """
    found = [date_in_text(d, f"{where} band {i + 1}") if d else None for i, d in enumerate(descriptions)]
    if all(d is None for d in found):
        return None
    missing = [i + 1 for i, d in enumerate(found) if d is None]
    if missing:
        raise ShapeError(f"{where}: every band description must hold its date when one does; band {missing[0]} "
                         f"({descriptions[missing[0] - 1]!r}) holds none.")
    if bands is None:
        groups = [found[0]] + [d for prev, d in pairwise(found) if d != prev]
        bands = len(found) // len(groups)
    if bands < 1 or len(found) % bands:
        raise ShapeError(f"{where}: {len(found)} bands are not whole dates of {bands} bands each.")
    dates = []
    for start in range(0, len(found), bands):
        group = set(found[start:start + bands])
        if len(group) != 1:
            raise ShapeError(f"{where}: bands {start + 1}–{start + bands} are one date but their descriptions hold "
                             f"{', '.join(sorted(map(str, group)))}.")
        dates.append(group.pop())
    return check_dates(dates, [f"bands {s + 1}–{s + bands}" for s in range(0, len(found), bands)], where)


def dates_from_tags(tags: dict[str, str], where: str) -> tuple[date, ...] | None:
    """The dates a stack's TIFF tags list (``tags`` as GDAL gives them: :attr:`cnnkit.rasters.Stack.tags`): the
    ``"dates"`` list of a JSON image description (``tifffile.imwrite(..., metadata={"dates": [...]})``), else a
    ``dates`` metadata item (a JSON list, or dates separated by commas or spaces); ``None`` if there is neither.

    Examples:
        >>> dates_from_tags({"TIFFTAG_IMAGEDESCRIPTION": '{"shape": [2, 3, 8, 8], "dates": ["2024-04-02", 20240511]}'},
        ...                 "s.tif")
        (datetime.date(2024, 4, 2), datetime.date(2024, 5, 11))
        >>> dates_from_tags({"dates": "2024-04-02, 2024-03-01"}, "s.tif")
        Traceback (most recent call last):
        ...
        cnnkit.errors.ShapeError: s.tif: the dates must increase. TIFF tag dates[1] (2024-03-01) goes backwards from \
TIFF tag dates[0] (2024-04-02).
    """
    listed = None
    text = tags.get("TIFFTAG_IMAGEDESCRIPTION", "")
    if text.lstrip().startswith("{"):
        try:
            described = json.loads(text)
        except (ValueError, RecursionError):
            described = None
        if isinstance(described, dict) and "dates" in described:
            listed = described["dates"]
            if not isinstance(listed, list):
                raise ShapeError(f"{where}: the image description's \"dates\" must be a list of dates (YYYY-MM-DD or "
                                 f"YYYYMMDD). Received {type(listed).__name__}.")
    item = next((tags[k] for k in ("dates", "DATES") if k in tags), None)
    if listed is None and item is not None:
        try:
            listed = json.loads(item) if item.lstrip().startswith("[") else None
        except (ValueError, RecursionError):
            listed = None
        if not isinstance(listed, list):
            listed = [v for v in re.split(r"[,\s]+", item) if v]
    if listed is None:
        return None
    names = [f"TIFF tag dates[{i}]" for i in range(len(listed))]
    return check_dates([parse_date(v, f"{where}: {n}") for v, n in zip(listed, names)], names, where)


def dates_from_json(path: Path, key: str | None, where: str) -> tuple[date, ...] | None:
    """The dates listed in ``path`` (a ``dates.json``): a list (``key`` is ``None``: the file is the series'
    own), or under ``key`` in an object (the file is its folder's); ``None`` if the object has no entry for ``key``.

    Raises:
        CnnkitError: the file is not JSON of that form (naming it).
        ShapeError: an entry that is not a date, or dates that do not increase.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CnnkitError(f"Could not read {path}: {err}. Expected a JSON list of dates, or an object of lists by "
                          "series name.") from err
    if key is not None:
        if not isinstance(data, dict):
            raise CnnkitError(f"{path} beside several series must be an object of date lists by series name "
                              f"({{{key!r}: [...]}}). Received {type(data).__name__}.")
        if key not in data:
            return None
        data, label = data[key], f"{path}[{key!r}]"
    else:
        label = str(path)
    if not isinstance(data, list):
        raise CnnkitError(f"{label} must be a list of dates (YYYY-MM-DD or YYYYMMDD). Received "
                          f"{type(data).__name__}.")
    names = [f"{label}[{i}]" for i in range(len(data))]
    return check_dates([parse_date(v, n) for v, n in zip(data, names)], names, where)


@dataclass(frozen=True)
class SeriesDates:
    """The acquisition dates of one series and where they came from.

    Attributes:
        dates: One date per step, increasing; ``None`` when the series has none (``source == "file order"``).
        source: One of :data:`DATE_SOURCES`.
        steps: The number of steps when there are no dates (else ``len(dates)``).
    """

    dates: tuple[date, ...] | None
    source: str
    steps: int | None = None

    @classmethod
    def file_order(cls, steps: int) -> SeriesDates:
        """A series of ``steps`` dates without acquisition dates: its files' order is the time axis."""
        return cls(None, "file order", steps)

    def __len__(self) -> int:
        return len(self.dates) if self.dates is not None else int(self.steps or 0)

    @property
    def time_axis(self) -> str:
        """What the time axis is, in words (for a log line or a report)."""
        if self.dates is None:
            return "the order of the files (no acquisition dates found)"
        return f"acquisition dates (from {self.source})"

    def days(self, reference: date | None = None) -> Tensor:
        """``(T,)`` int64 whole days since ``reference`` (default: January 1 of the first date's year); ``0 … T−1``
        without dates."""
        if self.dates is None:
            return torch.arange(len(self), dtype=torch.int64)
        reference = reference or date(self.dates[0].year, 1, 1)
        return torch.tensor([(d - reference).days for d in self.dates], dtype=torch.int64)


def series_dates(entry: Path, steps: int, *, files: Sequence[Path] = (),
                 descriptions: tuple[date, ...] | None = None, tags: tuple[date, ...] | None = None) -> SeriesDates:
    """The dates of the series at ``entry`` (a per-date folder, or a stack file), of ``steps`` dates, from the
    first source that has them (the module documentation lists them).

    Args:
        entry: The folder or the stack.
        steps: The series' number of dates (the dates found must be as many).
        files: A folder's per-date files, in the order they were read.
        descriptions: The dates already read from a stack's band descriptions (:func:`dates_from_descriptions`).
        tags: The dates already read from a stack's TIFF tags (:func:`dates_from_tags`).

    Raises:
        ShapeError: dates that cannot be parsed, repeat or go backwards, or are not ``steps`` many (naming the file).
    """
    where = str(entry)
    found, source = None, "dates.json"
    own, beside = entry / "dates.json", entry.parent / "dates.json"
    if entry.is_dir() and own.is_file():
        found = dates_from_json(own, None, where)
    elif beside.is_file():
        found = dates_from_json(beside, entry.name if entry.is_dir() else entry.stem, where)
    if found is None and files:
        found, source = dates_from_names(files, where), "file names"
    if found is None and descriptions is not None:
        found, source = descriptions, "band descriptions"
    if found is None and tags is not None:
        found, source = tags, "TIFF tags"
    if found is None:
        return SeriesDates.file_order(steps)
    if len(found) != steps:
        raise ShapeError(f"{where}: {len(found)} dates from {source} for a series of {steps} dates.")
    return SeriesDates(found, source)
