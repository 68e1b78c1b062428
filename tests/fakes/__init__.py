"""Test doubles shared by the suite: the scriptable fake upstream (`tests.fakes.upstream`)
and the `make demo` launcher (`tests.fakes.demo`).

Nothing is imported here, so `python -m tests.fakes.upstream` runs without a warning."""
