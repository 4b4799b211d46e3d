"""flows/cron.py: a schedule is checked by Prefect's rules without importing Prefect, and gives the
answers Prefect's own ``CronSchedule`` gives (what `cifar serve` builds)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from flows.cron import _prefect_problems, schedule_problems

CASES = [
    ("0 3 * * 1", "UTC"), ("*/15 * * * *", "Europe/Paris"), ("@daily", "UTC"), ("0 0 1 jan mon", "UTC"),
    ("0 3 * * 1", ""), ("0 3 * * 1", None), ("0 0 29 2 *", "Asia/Tokyo"), ("0 0 * * 1-5", "America/New_York"),
    ("61 * * * *", "UTC"), ("not a cron", "UTC"), ("", "UTC"), ("* * * *", "UTC"), ("0 3 * * 8", "UTC"),
    ("H * * * *", "UTC"), ("R 3 * * *", "UTC"), ("0 h * * *", "UTC"), ("0 3 * * 1", "Mars/Olympus"),
    ("0 3 * * 1", "utc"), ("61 * * * *", "Mars/Olympus"), ("0 3 * * 1 2020", "UTC"), ("0 0 L * *", "UTC"),
]


@pytest.mark.parametrize(("cron", "timezone"), CASES)
def test_the_same_answers_as_prefects_own_validator(cron, timezone):
    assert schedule_problems(cron, timezone) == _prefect_problems(cron, timezone)


@pytest.mark.subprocess
def test_checking_a_schedule_imports_no_prefect():
    code = ("import sys; from flows.cron import schedule_problems; "
            "bad = schedule_problems('61 * * * *', 'Mars/Olympus'); "
            "assert [k for k, _ in bad] == ['cron', 'timezone'], bad; "
            "assert schedule_problems('0 3 * * 1', 'UTC') == []; "
            "assert 'prefect' not in sys.modules, 'prefect imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
