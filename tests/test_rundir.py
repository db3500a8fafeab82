"""Run-directory files survive interruption: atomic status, append-only metrics."""

from __future__ import annotations

import json

from alignsweep.results import rundir


def test_status_merges_and_replaces_atomically(tmp_path):
    rundir.write_status(tmp_path, state="running", step=3)
    rundir.write_status(tmp_path, step=4)
    status = rundir.read_status(tmp_path)
    assert status["state"] == "running" and status["step"] == 4
    assert [p.name for p in tmp_path.iterdir()] == [rundir.STATUS], "no temporary file may be left behind"


def test_an_interrupted_last_metrics_line_is_skipped(tmp_path):
    rundir.append_metrics(tmp_path, {"step": 0, "win_rate": 0.5})
    rundir.append_metrics(tmp_path, {"step": 6, "win_rate": float("nan")})
    with open(tmp_path / rundir.METRICS, "a") as fh:
        fh.write('{"step": 12, "win_ra')  # a writer killed mid-line
    rows = rundir.read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [0, 6]
    assert rows[1]["win_rate"] is None  # NaN is written as null: JSON has no NaN


def test_missing_files_read_as_empty(tmp_path):
    assert rundir.read_status(tmp_path) is None
    assert rundir.read_metrics(tmp_path) == []


def test_metric_rows_are_valid_json_lines(tmp_path):
    for step in range(3):
        rundir.append_metrics(tmp_path, {"step": step})
    lines = (tmp_path / rundir.METRICS).read_text().splitlines()
    assert [json.loads(l)["step"] for l in lines] == [0, 1, 2]
