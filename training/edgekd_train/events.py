"""JSON-lines events: the contract with the Rust ``edge-kd distill`` front end.

One JSON object per line on the event stream (stdout), flushed at once, and a copy in
``OUT/events.jsonl``. Only rank 0 of a DDP run emits. Non-finite floats become null because
NaN/Infinity are not JSON and would break the reader.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import IO, Any


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


class Emitter:
    def __init__(self, stream: IO[str], enabled: bool = True):
        self.stream = stream
        self.enabled = enabled
        self.copy: IO[str] | None = None
        self.backlog: list[str] = []  # events emitted before OUT exists

    def open_copy(self, path: Path) -> None:
        if not self.enabled:
            return
        self.copy = open(path, "a", encoding="utf-8")
        for line in self.backlog:
            self.copy.write(line + "\n")
        self.backlog.clear()
        self.copy.flush()

    def __call__(self, event: dict) -> None:
        if not self.enabled:
            return
        line = json.dumps(_clean(event), ensure_ascii=False, allow_nan=False)
        self.stream.write(line + "\n")
        self.stream.flush()
        if self.copy is not None:
            self.copy.write(line + "\n")
            self.copy.flush()
        else:
            self.backlog.append(line)

    def close(self) -> None:
        if self.copy is not None:
            self.copy.close()
            self.copy = None
