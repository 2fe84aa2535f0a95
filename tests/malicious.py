"""A checkpoint that would run code if loaded unsafely: unpickling it writes a marker file."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch


class WritesAFile:
    """A pickle payload: unpickling it calls exec, which writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def malicious_checkpoint(path: Path, marker: Path, zipped: bool) -> Path:
    """A checkpoint whose loading with weights_only=False would write ``marker``."""
    payload = {"model": WritesAFile(marker), "epoch": 1}
    if zipped:
        torch.save(payload, path, pickle_protocol=2)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    return path
