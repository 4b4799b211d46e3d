"""The error a broken data contract raises: every failed check with its detail and hint, at once."""

from typing import Any

from tasks.core.errors import CifarError


class DataValidationError(CifarError):
    """The prepared data broke the contract. ``failures``: one dict per failed check."""

    def __init__(self, failures: list[dict[str, Any]], where: str = "dataset"):
        self.failures = failures
        lines = [f"{where}: {len(failures)} validation check(s) failed:"]
        for failure in failures:
            line = f"  - {failure['name']}: {failure['detail']}"
            if failure.get("hint"):
                line += f"\n      hint: {failure['hint']}"
            lines.append(line)
        lines.append("Nothing was trained on this data. Fix the data (or the preparation code) and "
                     "rerun; `cifar data PIPELINE` shows the full validation summary.")
        super().__init__("\n".join(lines))
