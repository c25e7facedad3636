"""Settings for the whole suite."""

import pytest
from hypothesis import settings

# Speed is measured in benchmarks, never asserted: a loaded CI machine must not fail a property
# test because one example took longer than hypothesis' default 200 ms deadline.
settings.register_profile("suite", deadline=None)
settings.load_profile("suite")


def pytest_collection_modifyitems(items):
    """Under pytest-xdist (``make test`` runs two workers), the end-to-end tests stay together on
    one worker: their module fixtures build test hosts (one testbed at a time, one wheelhouse
    build), and the session's wheelhouse fixture would otherwise be built by two workers at once
    into the same directory. Everything else is spread over the workers."""
    for item in items:
        if "e2e" in item.path.parts:
            item.add_marker(pytest.mark.xdist_group("e2e"))
