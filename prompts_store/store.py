"""A versioned store of prompt artifacts on local disk.

Layout (one directory per profile, one immutable file per version)::

    ROOT/profiles/<id>/v000003.safetensors   artifact bytes, never modified once published
    ROOT/profiles/<id>/v000003.json          sidecar: sha256, size, created_at (rebuilt if missing)
    ROOT/profiles/<id>/ACTIVE                the active version number
    ROOT/versions/<id>                       highest version number ever published (never reused)
    ROOT/CHANGES                             token rewritten on every change (cheap polling)
    ROOT/LOCK                                flock(2) taken by every mutation
    ROOT/staging/                            artifact bytes being written, before publishing

Every write is a temp file + fsync + link/rename, so a crash leaves either the old state or the
new one. Several processes can share one store directory: every mutation (put, activate,
delete) holds an exclusive `flock` on ROOT/LOCK while it checks and changes a profile, so an
upload racing a delete, or an activation racing a delete, runs as one after the other (never a
version without its file, an ACTIVE naming a deleted version, or a half-deleted profile). The
kernel drops the lock of a killed process. Large writes (the artifact bytes) happen before
taking the lock; reads take no lock (every file they read is replaced atomically).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from spul.prompts_store.artifact import DEFAULT_MAX_BYTES, ArtifactError, PromptArtifact, load_artifact
from spul.prompts_store.atomic import atomic_write_bytes, fsync_dir, link_exclusive, write_temp

PROFILE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
VERSION_RE = re.compile(r"^v(\d{6})\.safetensors$")
# OpenAI routes read these `model` values as "no profile named": a profile must not be called so
RESERVED_PROFILE_IDS = frozenset({"default"})


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


def validate_new_profile_id(profile: str, reserved: frozenset[str] | set[str] = frozenset()) -> str:
    """An id a new profile may take: a valid id, not one the API reads as "no profile"."""
    validate_profile_id(profile)
    if profile in RESERVED_PROFILE_IDS or profile in reserved:
        raise InvalidProfileId(
            f"profile id {profile!r} is reserved: the OpenAI routes read model={profile!r} as "
            "\"no profile named\"; choose another id"
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
        for sub in ("profiles", "versions", "staging"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
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
        """Load and validate the active (or the given) version. Returns (version, artifact).

        Without a version, another process may switch ACTIVE and delete the old version between
        our reading ACTIVE and reading the file: then ACTIVE is read again.
        """
        for _ in range(3):
            wanted = self.active_version(profile) if version is None else version
            if wanted is None:
                raise ProfileNotFound(f"profile {profile!r} has no active version")
            path = self._version_path(profile, wanted)
            try:
                artifact = load_artifact(
                    path,
                    expected_fingerprint=expected_fingerprint,
                    expected_hidden_size=expected_hidden_size,
                    serving_dtype=serving_dtype,
                    max_bytes=self.max_bytes,
                )
            except ArtifactError as err:
                if err.reason != "not_found":
                    raise
                if version is None and self._active_or_none(profile) not in (None, wanted):
                    continue  # switched under us: read the new ACTIVE
                raise ProfileNotFound(f"profile {profile!r} has no version {wanted}") from err
            return wanted, artifact
        raise ProfileNotFound(f"profile {profile!r} keeps changing; try again")

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
        """Validate `data` as an artifact and publish it as the next version of `profile`.

        Version numbers only grow, per profile id: a number is never handed out twice, even
        after its version (or the whole profile) was deleted.
        """
        validate_new_profile_id(profile)
        artifact = load_artifact(
            data,
            expected_fingerprint=expected_fingerprint,
            expected_hidden_size=expected_hidden_size,
            serving_dtype=serving_dtype,
            max_bytes=self.max_bytes,
        )
        tmp = write_temp(self.root / "staging", data)  # the slow part, before taking the lock
        side = {"sha256": artifact.sha256, "size": len(data), "created_at": artifact.meta.created_at}
        try:
            with self._locked():
                pdir = self.root / "profiles" / profile
                pdir.mkdir(exist_ok=True)
                version = self._publish(profile, pdir, tmp)
                atomic_write_bytes(pdir / f"v{version:06d}.json", json.dumps(side).encode())
                if activate:
                    self._write_active(pdir, version)
                active = self._active_or_none(profile) == version
                self._touch()
        finally:
            tmp.unlink(missing_ok=True)
        return VersionInfo(profile, version, artifact.sha256, len(data), artifact.meta.created_at, active)

    def activate(self, profile: str, version: int) -> VersionInfo:
        with self._locked():
            pdir = self._existing_dir(profile)
            if not self._version_path(profile, version).is_file():
                raise ProfileNotFound(f"profile {profile!r} has no version {version}; see its version list")
            self._write_active(pdir, version)
            self._touch()
            return self.version_info(profile, version)

    def delete(self, profile: str, version: int | None = None) -> None:
        """Delete one version (not the active one), or the whole profile when version is None."""
        target = None
        with self._locked():
            pdir = self._existing_dir(profile)
            if version is None:
                trash = self.root / ".trash"
                trash.mkdir(exist_ok=True)
                # rename first: the profile disappears atomically, the files are removed afterwards
                target = trash / f"{profile}-{uuid.uuid4().hex}"
                os.rename(pdir, target)
                fsync_dir(pdir.parent)
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
        if target is not None:
            shutil.rmtree(target, ignore_errors=True)

    # ---- internals ---------------------------------------------------------------------
    def _sweep_temp_files(self, *, older_than_s: float = 3600.0) -> None:
        """Remove temp files left by writers killed mid-write (never visible, but they pile up).

        Only old ones: another live process may be writing a fresh one right now.
        """
        cutoff = time.time() - older_than_s
        for tmp in [*self.root.glob("profiles/*/.tmp-*"), *self.root.glob("staging/.tmp-*")]:
            try:
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
            except FileNotFoundError:
                pass

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive store lock across processes (and threads: each call opens its own file).

        Blocking: a holder only checks and renames a few small files, and the kernel releases the
        lock of a process that dies holding it.
        """
        fd = os.open(self.root / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the lock

    def _publish(self, profile: str, pdir: Path, tmp: Path) -> int:
        """Link `tmp` as the next version number (caller holds the lock) and record the number."""
        existing = [int(m.group(1)) for p in pdir.iterdir() if (m := VERSION_RE.fullmatch(p.name))]
        version = max(self._highest_published(profile), *existing, 0) + 1
        # a writer without the lock (an older build) may hold a number: take the next free one
        while not link_exclusive(tmp, pdir / f"v{version:06d}.safetensors"):
            version += 1
        atomic_write_bytes(self.root / "versions" / profile, f"{version}\n".encode())
        return version

    def _highest_published(self, profile: str) -> int:
        try:
            return int((self.root / "versions" / profile).read_text().strip())
        except (FileNotFoundError, ValueError):
            return 0

    def _active_or_none(self, profile: str) -> int | None:
        try:
            return self.active_version(profile)
        except ProfileNotFound:
            return None

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
