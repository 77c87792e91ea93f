"""Short versions of the reliability runs (benchmarks/load.py, benchmarks/crash.py) for CI.

A real ``cxrlabel serve`` process on loopback, real HTTP clients with think time, then the
database is checked: nothing acknowledged is lost, nothing is stored twice or half, no image
goes over its target, and the quality log replays to the stored state. The 5-minute runs with
200 annotators on SQLite and PostgreSQL are in docs/reliability.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import crash
import load

pytestmark = pytest.mark.timeout(300)


def _assert_nothing_lost(verify: dict) -> None:
    assert verify["acknowledged_judgments"] > 0
    assert verify["lost_judgments"] == 0 and verify["lost_pages"] == 0
    assert verify["half_stored_pages"] == 0
    assert verify["duplicate_judgments"] == 0
    assert verify["images_over_target"] == 0
    assert verify["replay_matched"], verify["replay_differences"]
    assert verify["double_submits_replayed"] == verify["double_submits"]


def test_load_40_annotators_30s_sqlite(tmp_path):
    args = load.parse_args(
        [
            "--data-dir",
            str(tmp_path / "data"),
            "--annotators",
            "40",
            "--seconds",
            "30",
            "--think-median-s",
            "2",
            "--no-think-share",
            "0.15",
            "--double-submit-share",
            "0.1",
            "--images",
            "800",
            "--gold",
            "150",
        ]
    )
    result = load.run(args)
    load.print_human(result)
    assert result["annotators_active"] == 40
    assert result["http_5xx"] == 0, result["errors"]
    # Network-level hiccups (a keep-alive connection closed as a request starts) are retried
    # with the same client id, as the browser does; no HTTP error of any kind is allowed.
    assert not [k for k in result["errors"] if ":http_" in k], result["errors"]
    assert result["latency"]["submit"]["count"] > 40
    _assert_nothing_lost(result["verify"])
    # Judgments in the database are exactly the acknowledged ones (no stored-but-unacked).
    assert result["verify"]["stored_judgments"] == result["verify"]["acknowledged_judgments"]
    assert result["ok"]


def test_kill_9_mid_load_loses_nothing_and_reservations_expire(tmp_path):
    args = crash.parse_args(
        [
            "--data-dir",
            str(tmp_path / "data"),
            "--annotators",
            "24",
            "--seconds",
            "42",
            "--kill-at",
            "6",
            "--down-s",
            "2",
            "--reservation-s",
            "12",
            "--walk-away-share",
            "0.25",
            "--think-median-s",
            "1.5",
            "--images",
            "240",
            "--gold",
            "120",
        ]
    )
    result = crash.run(args)
    assert result["killed_at_s"] and result["restarted_at_s"]
    assert result["http_5xx"] == 0, result["errors"]
    _assert_nothing_lost(result["verify"])
    reserved = result["reservations"]
    assert reserved["abandoned_pages"] > 0, "nobody held a page at the kill: test proves nothing"
    assert reserved["stuck"] == 0 and reserved["still_reserved_pages"] == 0, reserved
    assert reserved["served_again_after_expiry"] > 0
    assert result["ok"]
