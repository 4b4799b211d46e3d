"""The suite's own rule (tests/conftest.py): a test that starts a process is marked, so that
`make test-fast` runs only tests that start none. Checked on a throwaway suite that uses the
real conftest, run by pytest in a process of its own."""

from __future__ import annotations

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
