"""spul-serve: SPUL soft prompts that make a deployed language model forget chosen data.

One import namespace for the whole project:

- ``spul.prompts_store`` (folder ``prompts_store/``): artifact format, fingerprint, versioned store;
- ``spul.trainer`` (``trainer/``): data, SPUL training, baselines, evaluation, reports;
- ``spul.service`` (``service/``): the FastAPI server and its batching engine;
- ``spul.benchmarks`` (``benchmarks/``): timing harnesses behind ``spul bench``;
- ``spul.errors``, ``spul.assets``: shared by all of the above;
- ``spul.cli`` and ``spul.commands``: the ``spul`` command, the only layer that imports all others.

``docs/design.md`` is the map.
"""
