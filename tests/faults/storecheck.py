"""Consistency check of a store directory after a crash: what a restarted server would find."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from prompts_store import PromptStore
from prompts_store.store import VERSION_RE

ALLOWED_EXTRA = {"ACTIVE"}


@dataclass(frozen=True)
class StoreState:
    shas: dict[str, dict[int, str]]  # profile -> version -> sha256 of the file bytes
    active: dict[str, int | None]
    temp_files: int  # orphaned temp files (harmless: never read; counted so a leak is visible)


def check_store(root: Path, *, fingerprint: str | None = None) -> StoreState:
    """Every version loads and validates, sidecars agree with the bytes, ACTIVE names a version."""
    store = PromptStore(root)
    shas: dict[str, dict[int, str]] = {}
    active: dict[str, int | None] = {}
    temp_files = 0
    for profile in store.profiles():
        pdir = root / "profiles" / profile
        for path in pdir.iterdir():
            name = path.name
            if name.startswith(".tmp-"):
                temp_files += 1
                continue
            is_version = VERSION_RE.fullmatch(name) or VERSION_RE.fullmatch(name.replace(".json", ".safetensors"))
            assert is_version or name in ALLOWED_EXTRA, f"unexpected file {path}"
        shas[profile] = {}
        for version in store.versions(profile):
            _, artifact = store.get(profile, version, expected_fingerprint=fingerprint)  # raises if partial
            data = (pdir / f"v{version:06d}.safetensors").read_bytes()
            assert artifact.sha256 == hashlib.sha256(data).hexdigest()
            info = store.version_info(profile, version)
            assert (info.sha256, info.size) == (artifact.sha256, len(data)), f"sidecar of {profile} v{version}"
            shas[profile][version] = artifact.sha256
        active[profile] = store.active_version(profile)
        if (pdir / "ACTIVE").exists():
            assert active[profile] in shas[profile], f"ACTIVE of {profile} names a missing version"
    return StoreState(shas, active, temp_files)
