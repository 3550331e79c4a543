"""Acquisition dates from each source (file names, band descriptions, dates.json), against dates written by hand, and
the refusals: dates that repeat, go backwards, cannot be parsed, a series of no date — each naming the file."""

from __future__ import annotations

import json
import pickle
from datetime import date

import pytest
import torch

from cnnkit.data.dates import (
    SeriesDates,
    date_in_text,
    dates_from_descriptions,
    dates_from_json,
    dates_from_names,
    parse_date,
    series_dates,
)
from cnnkit.data.series import SeriesItem
from cnnkit.errors import CnnkitError, ShapeError


def test_parse_date_and_dates_in_names():
    assert parse_date("2024-04-02", "x") == parse_date("20240402", "x") == parse_date(20240402, "x") == date(2024, 4, 2)
    for bad in ("2024-13-01", "2024/04/02", "240402", 3.5, True, None):
        with pytest.raises(ShapeError, match=r"f\.json\[2\]: cannot parse the date"):
            parse_date(bad, "f.json[2]")
    assert date_in_text("S2A_MSIL2A_20230715T103031_N0509.tif", "f") == date(2023, 7, 15)
    assert date_in_text("2024-04-02.png", "f") == date(2024, 4, 2)
    assert date_in_text("field_12.tif", "f") is None
    assert date_in_text("tile_99999999.tif", "f") is None  # eight digits that are not a day: an id
    with pytest.raises(ShapeError, match=r"a\.tif: the name holds more than one date"):
        date_in_text("20240402_20240511.tif", "a.tif")


def test_dates_from_names_in_order_and_refusals(tmp_path):
    names = [tmp_path / n for n in ("S2_20240402.tif", "S2_2024-05-11.tif", "S2_20240620.tif")]
    assert dates_from_names(names, "f") == (date(2024, 4, 2), date(2024, 5, 11), date(2024, 6, 20))
    assert dates_from_names([tmp_path / "a.tif", tmp_path / "b.tif"], "f") is None
    with pytest.raises(ShapeError, match=r"field: the dates must increase\. b_20240402\.tif \(2024-04-02\) repeats "
                                         r"a_20240402\.tif"):
        dates_from_names([tmp_path / "a_20240402.tif", tmp_path / "b_20240402.tif"], "field")
    with pytest.raises(ShapeError, match=r"b_20240301\.tif \(2024-03-01\) goes backwards from a_20240402\.tif"):
        dates_from_names([tmp_path / "a_20240402.tif", tmp_path / "b_20240301.tif"], "field")
    with pytest.raises(ShapeError, match=r"field: every file name must hold its date .* b\.tif holds none"):
        dates_from_names([tmp_path / "a_20240402.tif", tmp_path / "b.tif"], "field")


def test_dates_from_descriptions():
    described = ["20240402 B04", "20240402 B08", "2024-05-11 B04", "2024-05-11 B08", "20240620 B04", "20240620 B08"]
    expected = (date(2024, 4, 2), date(2024, 5, 11), date(2024, 6, 20))
    assert dates_from_descriptions(described, None, "s.tif") == expected
    assert dates_from_descriptions(described, 2, "s.tif") == expected
    assert dates_from_descriptions(["B04", None], None, "s.tif") is None
    with pytest.raises(ShapeError, match=r"s\.tif: bands 1–3 are one date but their descriptions hold"):
        dates_from_descriptions(described, 3, "s.tif")
    with pytest.raises(ShapeError, match=r"s\.tif: every band description must hold its date .* band 2 \('B08'\)"):
        dates_from_descriptions(["20240402 B04", "B08"], None, "s.tif")


def test_dates_json_and_series_dates(tmp_path):
    series = tmp_path / "series"
    (series / "field_02").mkdir(parents=True)
    (series / "dates.json").write_text(json.dumps({"field_01": ["2024-04-02", 20240511], "field_03": ["20240402"]}))
    assert dates_from_json(series / "dates.json", "field_01", "f") == (date(2024, 4, 2), date(2024, 5, 11))
    assert dates_from_json(series / "dates.json", "other", "f") is None
    found = series_dates(series / "field_01.tif", 2)
    assert (found.source, found.days().tolist()) == ("dates.json", [92, 131])  # days since January 1, 2024 (leap)
    assert found.days(date(2024, 4, 1)).tolist() == [1, 40]
    with pytest.raises(ShapeError, match=r"field_03\.tif: 1 dates from dates\.json for a series of 4 dates"):
        series_dates(series / "field_03.tif", 4)
    # a per-date folder: its own dates.json (a list) before its file names
    files = [series / "field_02" / n for n in ("a_20240101.png", "b_20240102.png")]
    assert series_dates(series / "field_02", 2, files=files).source == "file names"
    (series / "field_02" / "dates.json").write_text(json.dumps(["2024-03-01", "2024-02-01"]))
    with pytest.raises(ShapeError, match=r"field_02: the dates must increase\. .*dates\.json\[1\] \(2024-02-01\) goes "
                                         r"backwards"):
        series_dates(series / "field_02", 2, files=files)
    (series / "field_02" / "dates.json").write_text(json.dumps(["2024-03-01", "March 2"]))
    with pytest.raises(ShapeError, match=r"dates\.json\[1\]: cannot parse the date 'March 2'"):
        series_dates(series / "field_02", 2, files=files)
    (series / "field_02" / "dates.json").write_text(json.dumps([]))
    with pytest.raises(ShapeError, match="field_02: a series needs at least one date"):
        series_dates(series / "field_02", 2, files=files)
    (series / "field_02" / "dates.json").write_text("{not json")
    with pytest.raises(CnnkitError, match=r"Could not read .*field_02/dates\.json"):
        series_dates(series / "field_02", 2, files=files)
    (series / "dates.json").write_text(json.dumps(["2024-03-01"]))
    with pytest.raises(CnnkitError, match=r"dates\.json beside several series must be an object"):
        series_dates(series / "field_01.tif", 1)
    plain = series_dates(tmp_path / "elsewhere.tif", 3)
    assert plain == SeriesDates.file_order(3) and plain.days().tolist() == [0, 1, 2]
    assert plain.time_axis == "the order of the files (no acquisition dates found)"


def test_series_items_keep_their_days_through_pickle():
    item = SeriesItem((torch.zeros(2, 1, 2, 2), torch.ones(2, 2, 2, dtype=torch.bool), torch.zeros(2, 2)),
                      days=torch.tensor([3, 9]))
    copy = pickle.loads(pickle.dumps(item))
    assert len(copy) == 3 and copy.days.tolist() == [3, 9] and torch.equal(copy[1], item[1])
