"""Performance benchmarks: each script prints figures and a same-run reference.

Run from the repository root, for example ``python -m benchmarks.collector``;
every script takes ``--small`` for a run of a few seconds (CI). The figures and
how they were measured are in ``docs/performance.md``.
"""
