"""Node configuration: a TOML file (stdlib tomllib) where every key is also a command-line flag.

Unknown keys are refused with the list of known ones; values are type-checked and cross-checked
(R and W within 1..N, known mode and engine). ``SETTINGS`` is the single table the TOML loader, the
flags and the README's configuration reference are built from.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from typing import Any

import attrs

from dynamod.core.addresses import split_host_port


class ConfigError(ValueError):
    """A configuration that cannot be used, with a reason fit for the operator."""


@attrs.frozen
class Member:
    """A cluster member as the config lists it."""

    id: str
    peer: str
    http: str


@attrs.frozen
class Setting:
    """One configuration key: its type, default and meaning."""

    name: str
    type: type
    default: Any
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting("node_id", str, None, "this node's id, unique in the cluster (required)"),
    Setting("http", str, "127.0.0.1:8000", "HOST:PORT of the HTTP API (client and admin)"),
    Setting("peer", str, "127.0.0.1:7000", "HOST:PORT of the node-to-node listener"),
    Setting("data_dir", str, "./data", "directory of the Berkeley DB environment"),
    Setting("members", list, [], "the cluster: [{id, peer, http}, ...] (this node is added if missing)"),
    Setting("n", int, 3, "replicas per key (N)"),
    Setting("r", int, 2, "replies a read waits for (R)"),
    Setting("w", int, 2, "acknowledgements a write waits for (W)"),
    Setting("partitions", int, 64, "partitions of the ring (Q); fixed for the life of the cluster"),
    Setting("mode", str, "vclock", "vclock (siblings) or lww (last write wins by timestamp)"),
    Setting("sync", bool, True, "fsync every commit; false writes the log without flushing it"),
    Setting("engine", str, "bdb", "bdb (Berkeley DB) or memory (tests only: nothing survives)"),
    Setting("bdb_cache_mb", int, 64, "Berkeley DB cache size in MiB"),
    Setting("read_threads", int, 0, "threads serving storage reads (each takes a batch of reads); "
            "0 reads on the event loop (faster while the data fits the cache, stalls on a miss)"),
    Setting("request_timeout", float, 3.0, "seconds a quorum waits for replicas before answering 503"),
    Setting("heartbeat_interval", float, 1.0, "seconds between pings of every peer (failure detection)"),
    Setting("handoff_interval", float, 2.0, "seconds between rounds of hinted handoff to owners that are up"),
    Setting("anti_entropy_interval", float, 5.0,
            "seconds between anti-entropy exchanges (one partition with one other replica each)"),
    Setting("gossip_interval", float, 1.0, "seconds between gossip exchanges with a random member (and a seed)"),
    Setting("seeds", list, [], "ids of seed members every node also gossips with (default: the configured members)"),
    Setting("transfer_interval", float, 1.0,
            "seconds between rounds of ownership transfer (records for partitions this node no longer replicates)"),
    Setting("tombstone_grace", float, 60.0,
            "seconds a delete stays as a tombstone after every replica holds it, before it is removed"),
    Setting("background_rate", float, 2000.0,
            "records per second that handoff, transfers, anti-entropy and read repair may move (healthy foreground)"),
    Setting("background_latency_target", float, 0.05,
            "seconds of smoothed client latency above which background work slows down (halved each second)"),
    Setting("phi_threshold", float, 8.0, "phi-accrual suspicion level above which a silent peer is down"),
    Setting("max_value_size", int, 1024 * 1024, "largest value accepted, in bytes (413 above)"),
    Setting("max_frame_size", int, 64 * 1024 * 1024, "largest node-to-node frame, in bytes"),
    Setting("max_context_entries", int, 64, "bound on a version's causal context (see README: truncation)"),
    Setting("key_size_warning", int, 8 * 1024 * 1024,
            "bytes a key's stored versions may reach before each write that grows it past this is logged "
            "and counted (dynamod_oversized_key_writes_total)"),
    Setting("max_key_size", int, 30 * 1024 * 1024,
            "bytes of stored versions (siblings, clocks) a write may grow a key to; a write that would "
            "grow it further is refused (413), one that shrinks it is always taken"),
    Setting("http_header_timeout", float, 10.0,
            "seconds a client has to send a request's line and headers, and the longest its body may "
            "pause, before the answer is 408 and the connection closes"),
    Setting("http_idle_timeout", float, 60.0,
            "seconds a keep-alive HTTP connection may wait for its next request, or leave its answers "
            "unread, before it is closed"),
    Setting("http_max_connections", int, 1024, "open HTTP connections per node; one more is answered 503"),
    Setting("http_max_pipelined", int, 32,
            "requests a client may pipeline behind the one being answered before the node stops reading"),
    Setting("log_file", str, "-", "JSON-lines log file, or - for stderr"),
    Setting("log_level", str, "info", "debug, info, warn or error"),
)

SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}
MODES = ("vclock", "lww")
ENGINES = ("bdb", "memory")
LOG_LEVELS = ("debug", "info", "warn", "error")


@attrs.frozen
class NodeConfig:
    """A validated node configuration."""

    node_id: str
    http: str
    peer: str
    data_dir: str
    members: tuple[Member, ...]
    n: int
    r: int
    w: int
    partitions: int
    mode: str
    sync: bool
    engine: str
    bdb_cache_mb: int
    read_threads: int
    request_timeout: float
    heartbeat_interval: float
    handoff_interval: float
    anti_entropy_interval: float
    gossip_interval: float
    seeds: tuple[str, ...]
    transfer_interval: float
    tombstone_grace: float
    background_rate: float
    background_latency_target: float
    phi_threshold: float
    max_value_size: int
    max_frame_size: int
    max_context_entries: int
    key_size_warning: int
    max_key_size: int
    http_header_timeout: float
    http_idle_timeout: float
    http_max_connections: int
    http_max_pipelined: int
    log_file: str
    log_level: str

    @property
    def member_ids(self) -> tuple[str, ...]:
        """Every member id, sorted."""
        return tuple(sorted(m.id for m in self.members))

    def member(self, node_id: str) -> Member:
        """The member entry of ``node_id``."""
        for member in self.members:
            if member.id == node_id:
                return member
        raise KeyError(node_id)


def _check_type(setting: Setting, value: Any) -> Any:
    if setting.type is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if setting.type is int and isinstance(value, bool):
        raise ConfigError(f"{setting.name} must be an integer, got {value!r}")
    if not isinstance(value, setting.type):
        raise ConfigError(f"{setting.name} must be {setting.type.__name__}, got {value!r}")
    return value


def _parse_members(raw: list) -> list[Member]:
    members = []
    for entry in raw:
        if not isinstance(entry, Mapping) or set(entry) != {"id", "peer", "http"}:
            raise ConfigError(f"each member needs exactly id, peer and http; got {entry!r}")
        for field in ("peer", "http"):
            try:
                split_host_port(str(entry[field]))
            except ValueError as exc:
                raise ConfigError(f"member {entry['id']}: {field}: {exc}") from exc
        members.append(Member(id=str(entry["id"]), peer=str(entry["peer"]), http=str(entry["http"])))
    return members


def parse_member_flag(text: str) -> dict[str, str]:
    """``ID=PEER_HOST:PORT,HTTP_HOST:PORT`` (the ``--member`` flag) to a member table."""
    node_id, sep, addresses = text.partition("=")
    peer, comma, http = addresses.partition(",")
    if not sep or not comma or not node_id:
        raise ConfigError(f"--member expects ID=PEER_HOST:PORT,HTTP_HOST:PORT, got {text!r}")
    return {"id": node_id, "peer": peer, "http": http}


def build_config(values: Mapping[str, Any]) -> NodeConfig:
    """Validate a mapping of settings (from TOML and flags) into a ``NodeConfig``."""
    unknown = sorted(set(values) - set(SETTINGS_BY_NAME))
    if unknown:
        raise ConfigError(f"unknown configuration key(s) {', '.join(unknown)}; "
                          f"known keys: {', '.join(SETTINGS_BY_NAME)}")
    resolved: dict[str, Any] = {}
    for setting in SETTINGS:
        value = values.get(setting.name, setting.default)
        resolved[setting.name] = None if value is None else _check_type(setting, value)
    if not resolved["node_id"]:
        raise ConfigError("node_id is required")
    for field in ("http", "peer"):
        try:
            split_host_port(resolved[field])
        except ValueError as exc:
            raise ConfigError(f"{field}: {exc}") from exc
    members = _parse_members(resolved["members"])
    if resolved["node_id"] not in {m.id for m in members}:
        members.append(Member(id=resolved["node_id"], peer=resolved["peer"], http=resolved["http"]))
    if len({m.id for m in members}) != len(members):
        raise ConfigError("member ids must be unique")
    n, r, w = resolved["n"], resolved["r"], resolved["w"]
    if n < 1:
        raise ConfigError(f"n must be at least 1, got {n}")
    for name, value in (("r", r), ("w", w)):
        if not 1 <= value <= n:
            raise ConfigError(f"{name} must be between 1 and n={n}, got {value}")
    if resolved["partitions"] < len(members):
        raise ConfigError(f"partitions ({resolved['partitions']}) must be at least the number of members")
    if resolved["mode"] not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {resolved['mode']!r}")
    if resolved["engine"] not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {resolved['engine']!r}")
    if resolved["log_level"] not in LOG_LEVELS:
        raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
    if resolved["read_threads"] < 0:
        raise ConfigError("read_threads must be 0 or more")
    for name in ("max_value_size", "max_frame_size", "max_context_entries", "bdb_cache_mb", "key_size_warning",
                 "max_key_size", "http_max_connections", "http_max_pipelined"):
        if resolved[name] < 1:
            raise ConfigError(f"{name} must be positive")
    if resolved["max_frame_size"] < 2 * resolved["max_value_size"]:
        raise ConfigError("max_frame_size must be at least twice max_value_size")
    if not resolved["max_value_size"] <= resolved["max_key_size"] <= resolved["max_frame_size"] // 2:
        # A key at the bound plus one more coordinator's concurrent growth must still fit a frame.
        raise ConfigError("max_key_size must be at least max_value_size and at most half of max_frame_size")
    if resolved["key_size_warning"] > resolved["max_key_size"]:
        raise ConfigError("key_size_warning must not exceed max_key_size")
    if not all(isinstance(seed, str) for seed in resolved["seeds"]):
        raise ConfigError("seeds must be a list of member ids")
    resolved["seeds"] = tuple(resolved["seeds"])
    for name in ("request_timeout", "heartbeat_interval", "handoff_interval", "anti_entropy_interval",
                 "gossip_interval", "transfer_interval", "background_rate", "background_latency_target",
                 "phi_threshold", "http_header_timeout", "http_idle_timeout"):
        if resolved[name] <= 0:
            raise ConfigError(f"{name} must be positive")
    if resolved["tombstone_grace"] < 0:
        raise ConfigError("tombstone_grace must be 0 or more")
    resolved["members"] = tuple(members)
    return NodeConfig(**resolved)


def load_toml(path: str) -> dict[str, Any]:
    """Read a TOML config file into a mapping (validated later by ``build_config``)."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from exc
