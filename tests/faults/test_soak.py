"""The soak's traffic against a real `spul serve`: every request kind and every admin change succeeds.

A few seconds of `benchmarks/soak.py`'s own loops (closed-loop clients sending generate, streamed
generate, OpenAI completions, model listing and metrics; an admin loop uploading, activating and
deleting profile versions) on a real server process; the full soak runs for minutes, not here.
"""

from __future__ import annotations

import asyncio

from spul.benchmarks.soak import ADMIN_TOKEN, SoakOptions, drive, summarize
from spul.prompts_store import PromptStore

SECONDS = 2.5
# models and metrics are 5% of the mix each: a short run may draw none, so they are not required here
COMMON_KINDS = {"generate", "generate_stream", "completions", "upload", "activate"}


def test_soak_mix_and_admin_changes_all_succeed_on_a_real_server(store_dir, servers, make_artifact):
    profiles = PromptStore(store_dir).profiles()
    server = servers(store_dir, admin_token=ADMIN_TOKEN, store_poll_s=0.2).wait_ready()
    options = SoakOptions(minutes=SECONDS / 60, clients=3, max_new_tokens=4, upload_every_s=0.2,
                          sample_every_s=0.5)

    def make(profile: str, seed: int) -> bytes:
        return make_artifact(profile, num_virtual_tokens=(2, 3, 5)[seed % 3], seed=seed)

    tally, samples, wall = asyncio.run(drive(server, profiles, make, options))
    report = summarize(tally, samples, wall, options)

    assert report["failures"] == 0, report["first_errors"]
    assert COMMON_KINDS <= set(report["ok_by_kind"]), report["ok_by_kind"]
    assert report["rss_mib"]["max"] > 0 and len(samples) >= 2
