"""What every stage's rule helpers share: the error a target or wildcard the config does not support
raises, the wildcard regex of a set of names, and the param value Snakemake does not record."""

from __future__ import annotations

import json
import re
from typing import Any



class WorkflowConfigError(ValueError):
    """A target or wildcard the config does not support; the message names the key."""


def _fail(message: str) -> None:
    raise WorkflowConfigError(f"workflow config: {message}")


def alternation(names) -> str:
    """A regex matching exactly these names (longest first, so no name matches a prefix)."""
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) or "(?!x)x"


class NotATrigger:
    """A param value Snakemake does not record (it records only builtin values: str, int, ...), so it
    plans no rerun: a weight setting added to the code after runs were made (lct.config.ADDED_SETTINGS),
    at the value those runs had. An added param string would make Snakemake rerun every experiment_config
    and, through it, retrain and re-score every finished run."""

    def __init__(self, key: str, value: Any) -> None:
        self.key, self.value = key, value

    def __repr__(self) -> str:
        return f"{self.key}={json.dumps(self.value)} (added setting, neutral)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NotATrigger) and (self.key, self.value) == (other.key, other.value)

    def __hash__(self) -> int:
        return hash((self.key, json.dumps(self.value)))
