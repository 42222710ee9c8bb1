"""Child-process writers for the crash tests (module level, so a forkserver child can run them)."""

from __future__ import annotations

import json
import random

from spul.prompts_store import PromptStore

MAX_OPS = 10_000  # bounded; the parent kills the writer long before


def store_writer(root: str, bodies: list[bytes], journal: str, seed: int) -> None:
    """Loop uploads and activations on the store, journaling each one before and after."""
    rng = random.Random(seed)
    store = PromptStore(root)
    with open(journal, "a", encoding="utf-8") as log:

        def note(**entry: object) -> None:
            log.write(json.dumps(entry) + "\n")
            log.flush()  # in the kernel now: a SIGKILL cannot lose it

        for _ in range(MAX_OPS):
            profile = rng.choice(["alpha", "beta"])
            if rng.random() < 0.6:
                note(op="begin-put", profile=profile)
                info = store.put(profile, rng.choice(bodies), activate=rng.random() < 0.7)
                note(op="put", profile=profile, version=info.version, sha256=info.sha256, active=info.active)
            else:
                version = rng.choice(store.versions(profile))
                note(op="begin-activate", profile=profile, version=version)
                store.activate(profile, version)
                note(op="activate", profile=profile, version=version)
