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


def race_writer(root: str, role: str, bodies: list[bytes], seconds: float, out: str, seed: int) -> None:
    """One side of a store race, for `seconds`: record every operation's outcome to `out` (JSON).

    Roles: "put" uploads alpha; "drop" deletes the whole alpha profile; "activate" activates a
    random version of alpha; "prune" deletes a random version of alpha then uploads a new one.
    Refusals the store documents (ProfileNotFound, the active version, a reserved id) count as
    "refused"; anything else is an error, recorded with its type and message.
    """
    import time

    from spul.prompts_store import ProfileNotFound, StoreError

    rng = random.Random(seed)
    store = PromptStore(root)
    result: dict[str, list] = {"done": [], "refused": [], "errors": [], "versions": []}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if role == "put":
                result["versions"].append(store.put("alpha", rng.choice(bodies)).version)
            elif role == "drop":
                store.delete("alpha")
            elif role == "activate":
                store.activate("alpha", rng.choice(store.versions("alpha") or [1]))
            elif role == "prune":
                active = store.active_version("alpha")
                store.delete("alpha", rng.choice([v for v in store.versions("alpha") if v != active] or [1]))
                result["versions"].append(store.put("alpha", rng.choice(bodies), activate=False).version)
            result["done"].append(role)
        except (ProfileNotFound, StoreError) as err:
            result["refused"].append(type(err).__name__)
        except Exception as err:  # noqa: BLE001 -- the test asserts there are none
            result["errors"].append(f"{type(err).__name__}: {err}")
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(result, fh)
