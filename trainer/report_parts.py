"""A report's finished parts on disk, so a rerun with the same arguments resumes instead of recomputing.

    OUT/parts/key.json      what the parts were computed from: data digest, base-model fingerprint,
                            budgets, prompt artifact digest
    OUT/parts/<name>.json   one finished part (a scored method, a sweep point), written atomically

A part is read back only while ``key.json`` matches the current run; when the data, model or
budgets change, the old parts are removed and everything is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spul.jsonsafe import json_safe
from spul.trainer.data import UnlearningData

log = logging.getLogger(__name__)

FORMAT = 1
KEY_FILE = "key.json"


class ReportParts:
    """Finished parts of one report under ``root``, valid for ``key``."""

    def __init__(self, root: Path, key: Mapping[str, Any]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.key = json.loads(json.dumps(json_safe({"format": FORMAT, **key})))
        key_path = self.root / KEY_FILE
        stored = _read(key_path)
        if stored != self.key:
            stale = [p for p in self.root.glob("*.json") if p.name != KEY_FILE]
            if stale:
                log.info("%d finished parts in %s were made from other data, model or budgets: recomputing",
                         len(stale), self.root)
            for path in stale:
                path.unlink()
            _write(key_path, self.key)
        self.resumed = sorted(p.stem for p in self.root.glob("*.json") if p.name != KEY_FILE)
        if self.resumed:
            log.info("resuming: %d finished parts found in %s", len(self.resumed), self.root)

    def get(self, name: str) -> dict[str, Any] | None:
        return _read(self._path(name))

    def put(self, name: str, value: Mapping[str, Any]) -> dict[str, Any]:
        """Write one finished part; returns it as read back (JSON types)."""
        data = json.loads(json.dumps(json_safe(value)))
        _write(self._path(name), data)
        return data

    def _path(self, name: str) -> Path:
        return self.root / (re.sub(r"[^A-Za-z0-9._=-]+", "_", name) + ".json")


def data_digest(data: UnlearningData) -> str:
    """sha256 over the metadata and every row of every split (any storage format)."""
    digest = hashlib.sha256(json.dumps(json_safe(data.meta.to_dict()), sort_keys=True).encode())
    for split, rows in data.splits.items():
        digest.update(split.encode())
        for row in rows:
            digest.update(json.dumps([row.id, row.prompt, row.answer, row.entity]).encode())
    return digest.hexdigest()


def file_digest(path: Path | None) -> str | None:
    return None if path is None else hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _read(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # missing, or cut short by a crash: recompute it
    return value if isinstance(value, dict) else None


def _write(path: Path, value: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # a reader sees the whole part or none of it
