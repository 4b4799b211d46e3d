"""The suite's own rule (tests/conftest.py): a test that starts a process is marked, so that
`make test-fast` runs only tests that start none. Checked on a throwaway suite that uses the
real conftest, run by pytest in a process of its own."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"


@pytest.mark.subprocess
def test_an_unmarked_test_that_starts_a_process_fails_naming_it(pytester):
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makeini("[pytest]\nmarkers =\n    subprocess: starts processes\n")
    pytester.makepyfile(test_spawns="""
        import os, subprocess, sys
        import pytest

        @pytest.fixture
        def child():
            return subprocess.run([sys.executable, "-c", "print('from a fixture')"])

        def test_runs_a_command():
            subprocess.run([sys.executable, "-c", "pass"], check=True)

        def test_forks():
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)

        def test_starts_one_in_a_fixture(child):
            pass

        @pytest.mark.subprocess
        def test_marked(child):
            subprocess.run([sys.executable, "-c", "pass"], check=True)

        def test_starts_none():
            import platform
            platform.architecture()  # runs `file`: the library's own detail, not the test's
    """)
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly")
    res.assert_outcomes(passed=2, failed=3)
    out = res.stdout.str()
    for name in ("test_runs_a_command", "test_forks", "test_starts_one_in_a_fixture"):
        assert f"test_spawns.py::{name} started a process" in out, out
    assert "os.fork()" in out and "print('from a fixture')" in out
    assert "mark it @pytest.mark.subprocess" in out


@pytest.mark.subprocess
def test_each_xdist_worker_trains_in_slots_of_its_own(pytester, tmp_path):
    """Workers inherit the controller's environment; a slot folder made once was shared, and one
    worker's training held the slot another worker's kill -9 test expected to be free."""
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makeini("[pytest]\nmarkers =\n    subprocess: starts processes\n")
    seen = tmp_path / "seen"
    seen.mkdir()
    body = f"""
        import os, pathlib

        def test_where():
            who = os.environ.get("PYTEST_XDIST_WORKER", "none")
            pathlib.Path({str(seen)!r}, who + "-" + str(os.getpid())).write_text(os.environ["CIFAR_SLOT_DIR"])
    """
    pytester.makepyfile(**{f"test_w{i}": body for i in range(4)})
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly", "-n", "2",
                                        "--dist", "loadfile")
    res.assert_outcomes(passed=4)
    by_worker = {f.name.split("-")[0]: f.read_text() for f in seen.iterdir()}
    assert len(by_worker) == 2, by_worker
    assert len(set(by_worker.values())) == 2, by_worker
    assert os.environ["CIFAR_SLOT_DIR"] not in by_worker.values()
