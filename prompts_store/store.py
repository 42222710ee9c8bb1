"""A versioned store of prompt artifacts on local disk.

Layout (one directory per profile, one immutable file per version)::

    ROOT/profiles/<id>/v000003.safetensors   artifact bytes, never modified once published
    ROOT/profiles/<id>/v000003.json          sidecar: sha256, size, created_at (rebuilt if missing)
    ROOT/profiles/<id>/ACTIVE                the active version number
    ROOT/CHANGES                             token rewritten on every change (cheap polling)

Every write is a temp file + fsync + link/rename, so a crash leaves either the old state or the
new one. Version numbers are claimed with `os.link`, which fails if the name exists, so several
processes can share one store directory without overwriting each other.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from spul.prompts_store.artifact import DEFAULT_MAX_BYTES, PromptArtifact, load_artifact
from spul.prompts_store.atomic import atomic_write_bytes, fsync_dir, link_exclusive, write_temp

PROFILE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
VERSION_RE = re.compile(r"^v(\d{6})\.safetensors$")


class StoreError(Exception):
    """Base class of store errors (the service maps them to HTTP statuses)."""


class InvalidProfileId(StoreError, ValueError):
    pass


class ProfileNotFound(StoreError, LookupError):
    pass


def validate_profile_id(profile: str) -> str:
    """Profile ids are path components: 1-64 chars of [A-Za-z0-9_.-], starting alphanumeric."""
    if not isinstance(profile, str) or not PROFILE_ID_RE.fullmatch(profile):
        raise InvalidProfileId(
            f"invalid profile id {profile!r}: use 1-64 characters from A-Z a-z 0-9 _ . -, "
            "starting with a letter or digit"
        )
    return profile


@dataclass(frozen=True)
class VersionInfo:
    profile: str
    version: int
    sha256: str
    size: int
    created_at: str
    active: bool

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class ProfileInfo:
    profile: str
    active_version: int | None
    versions: list[int]


class PromptStore:
    def __init__(self, root: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        (self.root / "profiles").mkdir(parents=True, exist_ok=True)
        self._sweep_temp_files()

    # ---- reads -------------------------------------------------------------------------
    def profiles(self) -> list[str]:
        base = self.root / "profiles"
        return sorted(p.name for p in base.iterdir() if p.is_dir() and PROFILE_ID_RE.fullmatch(p.name))

    def list(self) -> list[ProfileInfo]:
        return [self.info(p) for p in self.profiles()]

    def info(self, profile: str) -> ProfileInfo:
        return ProfileInfo(profile, self.active_version(profile), self.versions(profile))

    def versions(self, profile: str) -> list[int]:
        pdir = self._existing_dir(profile)
        found = (VERSION_RE.fullmatch(p.name) for p in pdir.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def active_version(self, profile: str) -> int | None:
        pdir = self._existing_dir(profile)
        try:
            return int((pdir / "ACTIVE").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def version_info(self, profile: str, version: int) -> VersionInfo:
        path = self._version_path(profile, version)
        if not path.is_file():
            raise ProfileNotFound(f"profile {profile!r} has no version {version}")
        sidecar = path.with_suffix(".json")
        try:
            side = json.loads(sidecar.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            # a crash between publishing the artifact and its sidecar: rebuild it from the bytes
            data = path.read_bytes()
            side = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "created_at": ""}
        return VersionInfo(
            profile=profile,
            version=version,
            sha256=side["sha256"],
            size=int(side["size"]),
            created_at=side.get("created_at", ""),
            active=self.active_version(profile) == version,
        )

    def get(
        self,
        profile: str,
        version: int | None = None,
        *,
        expected_fingerprint: str | None = None,
        expected_hidden_size: int | None = None,
        serving_dtype: torch.dtype | None = None,
    ) -> tuple[int, PromptArtifact]:
        """Load and validate the active (or the given) version. Returns (version, artifact)."""
        if version is None:
            version = self.active_version(profile)
            if version is None:
                raise ProfileNotFound(f"profile {profile!r} has no active version")
        path = self._version_path(profile, version)
        if not path.is_file():
            raise ProfileNotFound(f"profile {profile!r} has no version {version}")
        artifact = load_artifact(
            path,
            expected_fingerprint=expected_fingerprint,
            expected_hidden_size=expected_hidden_size,
            serving_dtype=serving_dtype,
            max_bytes=self.max_bytes,
        )
        return version, artifact

    def change_token(self) -> str:
        """Changes whenever any process changes the store; poll it to notice other writers."""
        try:
            return (self.root / "CHANGES").read_text()
        except FileNotFoundError:
            return ""

    # ---- writes ------------------------------------------------------------------------
    def put(
        self,
        profile: str,
        data: bytes,
        *,
        activate: bool = True,
        expected_fingerprint: str | None = None,
        expected_hidden_size: int | None = None,
        serving_dtype: torch.dtype | None = None,
    ) -> VersionInfo:
        """Validate `data` as an artifact and publish it as the next version of `profile`."""
        validate_profile_id(profile)
        artifact = load_artifact(
            data,
            expected_fingerprint=expected_fingerprint,
            expected_hidden_size=expected_hidden_size,
            serving_dtype=serving_dtype,
            max_bytes=self.max_bytes,
        )
        pdir = self.root / "profiles" / profile
        pdir.mkdir(parents=True, exist_ok=True)
        tmp = write_temp(pdir, data)
        try:
            version = self._publish(pdir, tmp)
        finally:
            tmp.unlink(missing_ok=True)
        side = {"sha256": artifact.sha256, "size": len(data), "created_at": artifact.meta.created_at}
        atomic_write_bytes(pdir / f"v{version:06d}.json", json.dumps(side).encode())
        if activate:
            self._write_active(pdir, version)
        self._touch()
        return self.version_info(profile, version)

    def activate(self, profile: str, version: int) -> VersionInfo:
        pdir = self._existing_dir(profile)
        if not self._version_path(profile, version).is_file():
            raise ProfileNotFound(f"profile {profile!r} has no version {version}; see its version list")
        self._write_active(pdir, version)
        self._touch()
        return self.version_info(profile, version)

    def delete(self, profile: str, version: int | None = None) -> None:
        """Delete one version (not the active one), or the whole profile when version is None."""
        pdir = self._existing_dir(profile)
        if version is None:
            trash = self.root / ".trash"
            trash.mkdir(exist_ok=True)
            # rename first: the profile disappears atomically, the files are removed afterwards
            target = trash / f"{profile}-{uuid.uuid4().hex}"
            os.rename(pdir, target)
            fsync_dir(pdir.parent)
            shutil.rmtree(target, ignore_errors=True)
        else:
            path = self._version_path(profile, version)
            if not path.is_file():
                raise ProfileNotFound(f"profile {profile!r} has no version {version}")
            if self.active_version(profile) == version:
                raise StoreError(
                    f"version {version} of {profile!r} is active: activate another version first, "
                    "or delete the whole profile"
                )
            path.unlink()
            path.with_suffix(".json").unlink(missing_ok=True)
            fsync_dir(pdir)
        self._touch()

    # ---- internals ---------------------------------------------------------------------
    def _sweep_temp_files(self, *, older_than_s: float = 3600.0) -> None:
        """Remove temp files left by writers killed mid-write (never visible, but they pile up).

        Only old ones: another live process may be writing a fresh one right now.
        """
        cutoff = time.time() - older_than_s
        for tmp in self.root.glob("profiles/*/.tmp-*"):
            try:
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
            except FileNotFoundError:
                pass

    def _publish(self, pdir: Path, tmp: Path) -> int:
        existing = [int(m.group(1)) for p in pdir.iterdir() if (m := VERSION_RE.fullmatch(p.name))]
        version = max(existing, default=0) + 1
        # another process may claim the same number between our scan and our link: try the next
        while not link_exclusive(tmp, pdir / f"v{version:06d}.safetensors"):
            version += 1
        return version

    def _write_active(self, pdir: Path, version: int) -> None:
        atomic_write_bytes(pdir / "ACTIVE", f"{version}\n".encode())

    def _touch(self) -> None:
        atomic_write_bytes(self.root / "CHANGES", uuid.uuid4().hex.encode())

    def _existing_dir(self, profile: str) -> Path:
        validate_profile_id(profile)
        pdir = self.root / "profiles" / profile
        if not pdir.is_dir():
            raise ProfileNotFound(f"no profile {profile!r} in the store at {self.root}")
        return pdir

    def _version_path(self, profile: str, version: int) -> Path:
        return self._existing_dir(profile) / f"v{int(version):06d}.safetensors"
