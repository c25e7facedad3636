"""lazyfs: a FUSE file system that loses unsynced writes on command, after Jepsen's LazyFS.

``model`` is the pure per-file pending state, ``fs`` the FUSE shell (mfusepy), ``control`` the
mount/crash/unmount/status commands that ``python -m dynacheck.lazyfs`` runs on a node's host for
the ``power`` nemesis.
"""
