"""CSV exports never hand a spreadsheet a formula (OWASP CSV injection)."""

from __future__ import annotations

import csv
import io

import pytest

from engine.csv_export import neutralise, write_csv


@pytest.mark.parametrize("cell", ["=1+2", "+13125550100", "-2+3", "@SUM(A1)", "\t=1",
                                  "\r=1", "=HYPERLINK(\"http://x.example\",\"click\")"])
def test_a_cell_starting_like_a_formula_gets_a_quote_in_front(cell: str) -> None:
    assert neutralise(cell) == "'" + cell


@pytest.mark.parametrize("cell", ["P1001", "2026-11-02T15:00:00Z", "a=b", "", " =1", None, -3,
                                  2.5])
def test_other_cells_are_left_alone(cell: object) -> None:
    assert neutralise(cell) == cell


def test_write_csv_neutralises_every_cell_and_keeps_the_columns() -> None:
    out = io.StringIO()
    write_csv(out, ("id", "name", "note"),
              [{"id": 1, "name": "=cmd|' /C calc'!A0", "note": None},
               {"id": -2, "name": "Ana", "note": "@risk"}])
    assert out.getvalue().splitlines()[0] == "id,name,note"
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert rows == [{"id": "1", "name": "'=cmd|' /C calc'!A0", "note": ""},
                    {"id": "-2", "name": "Ana", "note": "'@risk"}]
