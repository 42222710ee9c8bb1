"""Serving and training benchmarks for spul-serve (run with `spul bench`; see benchmarks/README.md).

Not part of the installed packages: run from a checkout (the repository root on sys.path).
"""
