"""Consistency check of a store directory after a crash: what a restarted server would find."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from spul.prompts_store import PromptStore
from spul.prompts_store.store import VERSION_RE

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
            is_version = VERSION_RE.fullmatch(name) or VERSION_RE.fullmatch(
                name.replace(".json", ".safetensors")
            )
            assert is_version or name in ALLOWED_EXTRA, f"unexpected file {path}"
        shas[profile] = {}
        for version in store.versions(profile):
            _, artifact = store.get(profile, version, expected_fingerprint=fingerprint)  # raises if partial
            data = (pdir / f"v{version:06d}.safetensors").read_bytes()
            assert artifact.sha256 == hashlib.sha256(data).hexdigest()
            info = store.version_info(profile, version)
            assert (info.sha256, info.size) == (artifact.sha256, len(data)), (
                f"sidecar of {profile} v{version}"
            )
            shas[profile][version] = artifact.sha256
        active[profile] = store.active_version(profile)
        if (pdir / "ACTIVE").exists():
            assert active[profile] in shas[profile], f"ACTIVE of {profile} names a missing version"
    temp_files += sum(1 for _ in (root / "staging").glob(".tmp-*"))  # uploads killed before publishing
    return StoreState(shas, active, temp_files)


@dataclass
class Journal:
    """What a writer was told (acknowledged) and what it had in flight when it was killed.

    After a crash the store must hold every version known so far with the same bytes, and each
    profile's ACTIVE must be the last acknowledged one, or the in-flight operation's target.
    """

    versions: dict[str, dict[int, str]]  # acknowledged or observed: must never disappear
    active: dict[str, int | None]
    in_flight: tuple[str, str, int | None] | None = None  # (op, profile, target version)
    kills_mid_op: int = 0

    @classmethod
    def from_state(cls, state: StoreState) -> Journal:
        return cls({p: dict(v) for p, v in state.shas.items()}, dict(state.active))

    def begin(self, op: str, profile: str, version: int | None = None) -> None:
        self.in_flight = (op, profile, version)

    def put_done(self, profile: str, version: int, sha256: str, *, active: bool) -> None:
        self.versions.setdefault(profile, {})[version] = sha256
        if active:
            self.active[profile] = version
        self.in_flight = None

    def activate_done(self, profile: str, version: int) -> None:
        self.active[profile] = version
        self.in_flight = None

    def reconcile(self, state: StoreState) -> None:
        """Assert the crashed store agrees with the journal, then adopt it as the new truth."""
        for profile, versions in self.versions.items():
            for version, sha in versions.items():
                assert state.shas.get(profile, {}).get(version) == sha, f"lost acked {profile} v{version}"
        for profile, actual in state.active.items():
            allowed = {self.active.get(profile)}
            if self.in_flight is not None and self.in_flight[1] == profile:
                op, _, target = self.in_flight
                unacked = set(state.shas[profile]) - set(self.versions.get(profile, {}))
                allowed |= {target} if op == "activate" else unacked
            assert actual in allowed, f"{profile}: ACTIVE={actual}, expected one of {allowed}"
        self.kills_mid_op += self.in_flight is not None
        self.versions = {p: dict(v) for p, v in state.shas.items()}
        self.active = dict(state.active)
        self.in_flight = None

    def replay(self, lines: list[str]) -> None:
        """Apply a writer's JSON-lines log; a torn last line (killed mid-write) counts as not acked."""
        for line in lines:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            op, profile = entry["op"], entry["profile"]
            if op.startswith("begin-"):
                self.begin(op.removeprefix("begin-"), profile, entry.get("version"))
            elif op == "put":
                self.put_done(profile, entry["version"], entry["sha256"], active=entry["active"])
            else:
                self.activate_done(profile, entry["version"])
