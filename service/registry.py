"""The prompt registry: every active profile's embeddings resident, validated against the loaded model.

Resolving a profile returns an immutable `PromptHandle` (profile, version, sha256, embeddings):
a request holds on to it, so an upload or activation that lands mid-generation changes what
the *next* request gets and never what a running one uses. Embeddings are shared by content
(sha256), so many profiles with the same prompt cost one copy.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from spul.prompts_store import (
    ArtifactError,
    ProfileNotFound,
    PromptStore,
    StoreError,
    VersionInfo,
    validate_new_profile_id,
)

log = logging.getLogger(__name__)
OTHER_MODEL = ("fingerprint_mismatch", "hidden_size_mismatch")  # trained for another base model


class UnknownProfile(LookupError):
    """No such profile (or it has no active version)."""


class ProfileUnavailable(RuntimeError):
    """The profile exists but cannot be applied (invalid artifact): fail closed, never serve bare."""


@dataclass(frozen=True)
class PromptHandle:
    profile: str
    version: int
    sha256: str
    embeddings: torch.Tensor  # (P, H) on the model's device and dtype; never mutated

    @property
    def num_virtual_tokens(self) -> int:
        return int(self.embeddings.shape[0])


@dataclass(frozen=True)
class ModelIdentity:
    fingerprint: str
    hidden_size: int
    device: torch.device
    dtype: torch.dtype
    name: str = ""  # the served model's name: OpenAI requests naming it mean "no profile"


class PromptRegistry:
    def __init__(
        self,
        store: PromptStore,
        identity: ModelIdentity,
        *,
        on_load: Callable[[float], None] | None = None,
        on_change: Callable[[set[str]], None] | None = None,
    ) -> None:
        self.store = store
        self.identity = identity
        self._on_load = on_load or (lambda seconds: None)
        self._on_change = on_change or (lambda active: None)
        self._handles: dict[str, PromptHandle] = {}
        self._broken: dict[str, str] = {}  # profile -> why its active version cannot be applied
        self._by_sha: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()  # serialises writers; readers see a whole dict, copy-on-write
        self._token = ""

    # ---- reads (any thread) ------------------------------------------------------------
    def resolve(self, profile: str) -> PromptHandle:
        handle = self._handles.get(profile)
        if handle is not None:
            return handle
        if profile in self._broken:
            raise ProfileUnavailable(f"profile {profile!r} cannot be applied: {self._broken[profile]}")
        raise UnknownProfile(f"no active profile {profile!r}")

    def loaded(self) -> list[str]:
        return sorted(self._handles)

    def broken(self) -> dict[str, str]:
        return dict(self._broken)

    def handles(self) -> dict[str, PromptHandle]:
        return dict(self._handles)

    # ---- loading -----------------------------------------------------------------------
    def refresh(self) -> None:
        """(Re)load every active profile; unchanged versions keep their resident tensors."""
        with self._lock:
            self._token = self.store.change_token()
            handles: dict[str, PromptHandle] = {}
            broken: dict[str, str] = {}
            for profile in self.store.profiles():
                try:
                    handle = self._load(profile)
                except UnknownProfile:
                    continue
                except (ArtifactError, StoreError, OSError) as err:
                    if getattr(err, "reason", "") in OTHER_MODEL:  # expected in a store shared by several models
                        log.warning("profile %s skipped: %s", profile, err)
                    else:
                        log.error("profile %s cannot be applied: %s", profile, err)
                    broken[profile] = str(err)
                    continue
                handles[profile] = handle
            self._publish(handles, broken)

    def refresh_if_changed(self) -> bool:
        """Cheap poll: reload only when some process changed the store since our last look."""
        if self.store.change_token() == self._token:
            return False
        self.refresh()
        return True

    def _load(self, profile: str) -> PromptHandle:
        try:
            return self._load_active(profile)
        except ProfileNotFound as err:  # also: deleted by another process while we read it
            raise UnknownProfile(str(err)) from err

    def _load_active(self, profile: str) -> PromptHandle:
        version = self.store.active_version(profile)
        if version is None:
            raise UnknownProfile(f"profile {profile!r} has no active version")
        current = self._handles.get(profile)
        # compare content, not just the number (stores written by older builds reused numbers)
        if (
            current is not None
            and current.version == version
            and current.sha256 == self.store.version_info(profile, version).sha256
        ):
            return current
        start = time.perf_counter()
        version, artifact = self.store.get(
            profile,
            version,
            expected_fingerprint=self.identity.fingerprint,
            expected_hidden_size=self.identity.hidden_size,
            serving_dtype=self.identity.dtype,
        )
        embeddings = self._by_sha.get(artifact.sha256)
        if embeddings is None:
            embeddings = artifact.embeddings.to(device=self.identity.device, dtype=self.identity.dtype)
        self._on_load(time.perf_counter() - start)
        return PromptHandle(profile, version, artifact.sha256, embeddings)

    def _publish(self, handles: dict[str, PromptHandle], broken: dict[str, str]) -> None:
        self._handles = handles  # one reference swap: readers never see a half-built dict
        self._broken = broken
        self._by_sha = {h.sha256: h.embeddings for h in handles.values()}
        self._on_change({h.sha256 for h in handles.values()})

    def _reload_one(self, profile: str) -> None:
        handles, broken = dict(self._handles), dict(self._broken)
        handles.pop(profile, None)
        broken.pop(profile, None)
        try:
            handles[profile] = self._load(profile)
        except UnknownProfile:
            pass
        except (ArtifactError, StoreError, OSError) as err:
            broken[profile] = str(err)
        self._token = self.store.change_token()
        self._publish(handles, broken)

    # ---- admin writes --------------------------------------------------------------------
    def upload(self, profile: str, data: bytes, *, activate: bool = True) -> VersionInfo:
        """Validate exactly as the store does (against the loaded model) and publish a new version."""
        validate_new_profile_id(profile, {self.identity.name} if self.identity.name else set())
        with self._lock:
            info = self.store.put(
                profile,
                data,
                activate=activate,
                expected_fingerprint=self.identity.fingerprint,
                expected_hidden_size=self.identity.hidden_size,
                serving_dtype=self.identity.dtype,
            )
            self._reload_one(profile)
        return info

    def activate(self, profile: str, version: int) -> VersionInfo:
        with self._lock:
            # validate before switching: activating an artifact this model cannot use must fail
            self.store.get(
                profile,
                version,
                expected_fingerprint=self.identity.fingerprint,
                expected_hidden_size=self.identity.hidden_size,
                serving_dtype=self.identity.dtype,
            )
            info = self.store.activate(profile, version)
            self._reload_one(profile)
        return info

    def delete(self, profile: str, version: int | None = None) -> None:
        with self._lock:
            self.store.delete(profile, version)
            self._reload_one(profile)
