"""Soft-prompt artifacts: format, validation, fingerprint, versioned store, and prepending.

Both the trainer and the service depend on this package; it depends on neither.
"""

from spul.prompts_store.artifact import (
    FORMAT_VERSION,
    ArtifactError,
    ArtifactMeta,
    PromptArtifact,
    artifact_bytes,
    load_artifact,
    save_artifact,
)
from spul.prompts_store.fingerprint import model_fingerprint
from spul.prompts_store.prepend import position_ids_from_mask, prepend_prompt
from spul.prompts_store.store import (
    InvalidProfileId,
    ProfileInfo,
    ProfileNotFound,
    PromptStore,
    StoreError,
    VersionInfo,
    validate_new_profile_id,
    validate_profile_id,
)

__all__ = [
    "FORMAT_VERSION",
    "ArtifactError",
    "ArtifactMeta",
    "InvalidProfileId",
    "ProfileInfo",
    "ProfileNotFound",
    "PromptArtifact",
    "PromptStore",
    "StoreError",
    "VersionInfo",
    "artifact_bytes",
    "load_artifact",
    "model_fingerprint",
    "position_ids_from_mask",
    "prepend_prompt",
    "save_artifact",
    "validate_new_profile_id",
    "validate_profile_id",
]
