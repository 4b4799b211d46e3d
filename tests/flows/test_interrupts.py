"""How a signalled command ends (flows/interrupts.py): the line it prints and its exit code."""

from __future__ import annotations

import signal

import pytest

from flows import interrupts


def test_the_line_names_the_innermost_step_a_signal_stopped():
    with pytest.raises(KeyboardInterrupt):
        with interrupts.doing("the download stage (fetch-archive)"):
            with interrupts.doing("the train stage (train-model)"):
                raise KeyboardInterrupt
    line = interrupts.message("cifar run smoke", signal.SIGINT)
    assert line.startswith("interrupted by SIGINT (Ctrl-C): the train stage (train-model) stopped")
    assert "marked Crashed" in line and "Run the same command again" in line
    interrupts._stopped.clear()


def test_a_server_command_names_itself():
    assert interrupts.message("cifar reports", signal.SIGTERM) == "interrupted by SIGTERM: cifar reports stopped"


def test_exit_codes_follow_the_signal():
    assert interrupts.exit_code(signal.SIGINT) == 130 and interrupts.exit_code(signal.SIGTERM) == 143


def test_signals_are_recognised_whoever_raised_them():
    class TerminationSignal(BaseException):  # Prefect's, raised by its SIGTERM handler in a flow
        def __init__(self, signum):
            self.signal = signum

    assert interrupts.signal_of(KeyboardInterrupt()) == signal.SIGINT
    assert interrupts.signal_of(interrupts.Interrupted(signal.SIGHUP)) == signal.SIGHUP
    assert interrupts.signal_of(TerminationSignal(signal.SIGTERM)) == signal.SIGTERM
    assert interrupts.signal_of(ValueError("x")) is None


def test_a_temporary_api_that_does_not_start_is_explained_and_stopped():
    from flows.embedded import _start
    from tasks.core.errors import CifarError

    class SlowServer:  # what Prefect's SubprocessASGIServer raises on a machine too busy to start it
        stopped = False

        def launch(self):
            pass

        def wait_ready(self, timeout):
            raise RuntimeError("Timed out while attempting to connect to the temporary Prefect API server.")

        def stop(self):
            self.stopped = True

    server = SlowServer()
    with pytest.raises(CifarError) as err:
        _start(server)
    text = str(err.value)
    assert server.stopped and "did not answer within" in text and "load average" in text
    assert "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in text and "prefect server start" in text
