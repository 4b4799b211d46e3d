"""The project's expected failures: messages meant for a person, printed without a traceback."""

from __future__ import annotations

from tasks.core.guards_text import redact


class CifarError(Exception):
    """An expected failure with a message meant for a person (bad input, bad download, ...).

    The CLI prints the message without a traceback and exits with ``exit_code``. Credentials in
    a URL of the message (``user:pw@``, signature-like query values) are masked here, once for
    every error: a message reaches the terminal, the log and the flow run's state.
    """

    exit_code = 1

    def __init__(self, *args):
        if args and isinstance(args[0], str):
            args = (redact(args[0]), *args[1:])
        super().__init__(*args)


class ConfigError(CifarError):
    """pipelines.yaml (or a --set override) is wrong. Carries every problem at once."""

    exit_code = 2

    def __init__(self, problems: list[str], source: str = "pipelines.yaml"):
        self.problems = list(problems)
        self.source = source
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n{lines}")
