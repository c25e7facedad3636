"""lazyfs' pure parts: the pending state of unsynced files against a model of bytes, and the
mountinfo parsing and polling its commands rely on."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from dynacheck.lazyfs.control import parse_mountinfo
from dynacheck.lazyfs.model import FlushPlan, PendingFile, PendingState, apply_plan

FILES = ("a", "b")
# Never zero: bytes that must read as zeros (cut off by a truncate) must not look right by chance.
DATA = st.lists(st.integers(1, 255), max_size=16).map(bytes)


class Backing:
    """Backing files as bytearrays, changed only by applied flush plans."""

    def __init__(self) -> None:
        self.files: dict[str, bytearray] = {}

    def reader(self, name: str):
        content = self.files.setdefault(name, bytearray())
        return lambda offset, count: bytes(content[offset:offset + count])

    def apply(self, name: str, plan: FlushPlan) -> None:
        content = self.files.setdefault(name, bytearray())

        def truncate(length: int) -> None:
            if length < len(content):
                del content[length:]
            else:
                content.extend(bytes(length - len(content)))

        def pwrite(data: bytes, offset: int) -> None:
            if offset > len(content):
                content.extend(bytes(offset - len(content)))
            content[offset:offset + len(data)] = data

        apply_plan(plan, truncate, pwrite)


def resized(content: bytearray, length: int) -> bytearray:
    return content[:length] if length <= len(content) else content + bytes(length - len(content))


class PendingStateMachine(RuleBasedStateMachine):
    """``PendingState`` over ``Backing`` against the plain model: each file is the bytes a reader
    sees (``visible``) and the bytes an fsync made durable (``durable``); a crash resets the first
    to the second."""

    def __init__(self) -> None:
        super().__init__()
        self.state = PendingState()
        self.backing = Backing()
        self.visible = {name: bytearray() for name in FILES}
        self.durable = {name: bytearray() for name in FILES}

    def _pending(self, name: str) -> PendingFile:
        return self.state.begin(name, len(self.backing.files.setdefault(name, bytearray())))

    @rule(name=st.sampled_from(FILES), offset=st.integers(0, 40), data=DATA)
    def write(self, name: str, offset: int, data: bytes) -> None:
        self._pending(name).write(offset, data)
        if data:
            content = self.visible[name]
            self.visible[name] = resized(content, max(len(content), offset + len(data)))
            self.visible[name][offset:offset + len(data)] = data

    @rule(name=st.sampled_from(FILES), length=st.integers(0, 60))
    def truncate(self, name: str, length: int) -> None:
        self._pending(name).truncate(length)
        self.visible[name] = resized(self.visible[name], length)

    @rule(name=st.sampled_from(FILES))
    def fsync(self, name: str) -> None:
        plan = self.state.take(name)
        if plan is not None:
            self.backing.apply(name, plan)
        self.durable[name] = bytearray(self.visible[name])
        assert name not in self.state

    @rule()
    def crash(self) -> None:
        lost = self.state.crash()
        assert self.state.stats().files == 0
        assert lost.files <= len(FILES)
        self.visible = {name: bytearray(content) for name, content in self.durable.items()}

    @rule(name=st.sampled_from(FILES), offset=st.integers(0, 60), count=st.integers(0, 40))
    def read(self, name: str, offset: int, count: int) -> None:
        pending = self.state.get(name)
        got = (pending.read(offset, count, self.backing.reader(name)) if pending is not None
               else self.backing.reader(name)(offset, count))
        assert got == bytes(self.visible[name][offset:offset + count])

    @invariant()
    def whole_files_read_back(self) -> None:
        for name in FILES:
            self.read(name, 0, 1000)

    @invariant()
    def extents_stay_sorted_and_apart(self) -> None:
        for name in FILES:
            pending = self.state.get(name)
            if pending is None:
                continue
            extents = list(pending.extents())
            for (start, data), (next_start, _) in zip(extents, extents[1:], strict=False):
                assert data and start + len(data) <= next_start
            assert all(start + len(data) <= pending.size for start, data in extents)

    @invariant()
    def sizes_agree(self) -> None:
        for name in FILES:
            pending = self.state.get(name)
            size = pending.size if pending is not None else len(self.backing.files.get(name, b""))
            assert size == len(self.visible[name])

    @invariant()
    def backing_holds_exactly_what_was_fsynced(self) -> None:
        for name in FILES:
            assert bytes(self.backing.files.get(name, b"")) == bytes(self.durable[name])


TestPendingState = PendingStateMachine.TestCase
# Small ranges make writes, truncates and reads collide; more examples make the rare orders likely.
TestPendingState.settings = settings(max_examples=400, stateful_step_count=30, deadline=None)


def test_unsynced_write_reads_back_then_crash_loses_it():
    state, backing = PendingState(), Backing()
    backing.files["f"] = bytearray(b"durable!")
    state.begin("f", 8).write(4, b"LOST AND MORE")
    assert state.get("f").read(0, 100, backing.reader("f")) == b"duraLOST AND MORE"
    lost = state.crash()
    assert (lost.files, lost.bytes) == (1, 13)
    assert state.get("f") is None and bytes(backing.files["f"]) == b"durable!"


def test_truncate_hides_backing_bytes_even_after_the_file_grows_again():
    backing = Backing()
    backing.files["f"] = bytearray(b"0123456789")
    pending = PendingFile(10)
    pending.truncate(3)
    pending.write(6, b"xy")
    assert pending.read(0, 20, backing.reader("f")) == b"012\0\0\0xy"
    backing.apply("f", pending.flush_plan())
    assert bytes(backing.files["f"]) == b"012\0\0\0xy"


def test_sequential_appends_stay_one_extent():
    pending = PendingFile(0)
    for index in range(100):
        pending.write(index * 10, bytes([index]) * 10)
    assert [(start, len(data)) for start, data in pending.extents()] == [(0, 1000)]
    assert pending.pending_bytes == 1000


def test_a_write_over_several_extents_trims_and_replaces_them():
    pending = PendingFile(0)
    pending.write(0, b"aaaa")
    pending.write(10, b"bbbb")
    pending.write(20, b"cccc")
    pending.write(2, b"XXXXXXXXXXXXXXXXXXXX")  # 2..22: covers the middle one, cuts both others
    assert list(pending.extents()) == [(0, b"aa" + b"X" * 20), (22, b"cc")]


def test_flush_plan_of_only_an_extension_is_one_resize():
    pending = PendingFile(5)
    pending.truncate(4096)
    assert pending.flush_plan() == FlushPlan(None, [], 4096)


@given(st.lists(st.tuples(st.integers(0, 64), st.binary(max_size=16)), max_size=30))
def test_reads_never_return_more_than_the_size(writes):
    pending = PendingFile(0)
    for offset, data in writes:
        pending.write(offset, data)
    assert len(pending.read(0, 10_000, lambda offset, count: b"")) == pending.size


def test_parse_mountinfo_finds_fuse_mounts_and_unescapes_paths():
    text = (
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
        "91 22 0:50 / /tmp/my\\040data rw,nosuid,nodev,relatime shared:50 - fuse.lazyfs lazyfs rw,user_id=0\n"
        "92 22 0:51 / /mnt/x rw - tmpfs tmpfs rw\n"
        "93 22 0:52 / /mnt/x rw - fuse.lazyfs lazyfs rw\n"
    )
    mounts = parse_mountinfo(text)
    assert mounts["/tmp/my data"] == ("fuse.lazyfs", "lazyfs")
    assert mounts["/"] == ("ext4", "/dev/vda")
    assert mounts["/mnt/x"] == ("fuse.lazyfs", "lazyfs")  # the mount on top is the one the path shows
