"""The project's expected failures: messages meant for a person, printed without a traceback."""

from __future__ import annotations


class CifarError(Exception):
    """An expected failure with a message meant for a person (bad input, bad download, ...).

    The CLI prints the message without a traceback and exits with ``exit_code``.
    """

    exit_code = 1


class ConfigError(CifarError):
    """pipelines.yaml (or a --set override) is wrong. Carries every problem at once."""

    exit_code = 2

    def __init__(self, problems: list[str], source: str = "pipelines.yaml"):
        self.problems = list(problems)
        self.source = source
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n{lines}")
