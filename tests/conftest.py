"""Settings for the whole suite."""

from hypothesis import settings

# Speed is measured in benchmarks, never asserted: a loaded CI machine must not fail a property
# test because one example took longer than hypothesis' default 200 ms deadline.
settings.register_profile("suite", deadline=None)
settings.load_profile("suite")
