"""The nemeses a run can choose (``--nemesis``) and what each needs. No fault code here: the CLI
parses its options without importing what drives a cluster (``dynacheck.nemesis`` and its SSH and
deployment imports), which ``dynacheck analyze`` never needs."""

from __future__ import annotations

#: Every fault, those in ``--nemesis all``, and what some need: separate network addresses (hosts),
#: or root on the nodes' hosts (FUSE mounts).
FAULTS = ("partition", "clock", "kill", "pause", "netem", "disk", "power", "corrupt", "membership")
NEEDS_HOSTS = frozenset({"partition", "netem"})
NEEDS_ROOT = frozenset({"power"})
#: Faults that destroy the copies a node held (they need W >= 2 to keep the promise testable).
COPY_LOSING = frozenset({"disk", "corrupt"})
ALL = ("partition", "clock", "kill", "pause", "disk", "power", "corrupt", "membership")
#: Spare hosts a run gets by default when ``membership`` is chosen (``--spares``).
DEFAULT_SPARES = 2


def parse_nemesis(text: str, local: bool, root: bool = True) -> tuple[str, ...]:
    """``none``, ``all`` or a comma-separated list of faults; raises ValueError with the reason.
    ``all`` leaves out what this kind of cluster cannot do (partitions on ``--local``, FUSE without root)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if names in ([], ["none"]):
        return ()
    chosen: list[str] = []
    for name in names:
        expanded = ALL if name == "all" else (name,)
        for fault in expanded:
            if fault not in FAULTS:
                raise ValueError(f"unknown nemesis {fault!r} (choose from none, all, {', '.join(FAULTS)})")
            if fault not in chosen:
                chosen.append(fault)
    if local:
        unsupported = [fault for fault in chosen if fault in NEEDS_HOSTS]
        if unsupported and names != ["all"]:
            raise ValueError(f"{', '.join(unsupported)} needs nodes with their own addresses (--testbed or "
                             "--nodes-file): every --local node shares 127.0.0.1")
        chosen = [fault for fault in chosen if fault not in NEEDS_HOSTS]
    if local and not root:
        unsupported = [fault for fault in chosen if fault in NEEDS_ROOT]
        if unsupported and names != ["all"]:
            raise ValueError(f"{', '.join(unsupported)} needs root on the nodes' hosts (FUSE mounts)")
        chosen = [fault for fault in chosen if fault not in NEEDS_ROOT]
    return tuple(chosen)
