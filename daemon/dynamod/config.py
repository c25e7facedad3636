"""Node configuration: a TOML file (stdlib tomllib) where every key is also a command-line flag.

Unknown keys are refused with the list of known ones; values are type-checked and cross-checked
(R and W within 1..N, known mode and engine). ``SETTINGS`` is the single table the TOML loader, the
flags, ``NodeConfig`` and the README's configuration table are built from (``settings_table``).
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


#: Bounds a setting's value may be declared with (checked by ``build_config``).
POSITIVE = "positive"
NON_NEGATIVE = "non-negative"


@attrs.frozen
class Setting:
    """One configuration key, declared once: its type, default, meaning and bound. The TOML
    loader, the flags, ``NodeConfig``'s fields and the README's table are all made from these."""

    name: str
    type: type
    default: Any
    help: str
    bound: str | None = None
    choices: tuple[str, ...] | None = None

    def readme_default(self) -> str:
        """The default as the README's table shows it."""
        if self.default is None:
            return "(required)"
        if self.type is bool:
            return f"`{str(self.default).lower()}`"
        if self.type is str or self.type is list:
            return (f"`{self.default}`" if self.default else '`""` (off)') if self.type is str else "`[]`"
        return str(self.default)


MODES = ("vclock", "lww")
ENGINES = ("bdb", "memory")
LOG_LEVELS = ("debug", "info", "warn", "error")

SETTINGS: tuple[Setting, ...] = (
    Setting("node_id", str, None, "this node's id, unique in the cluster"),
    Setting("http", str, "127.0.0.1:8000", "HOST:PORT of the HTTP API (client and admin)"),
    Setting("peer", str, "127.0.0.1:7000", "HOST:PORT of the node-to-node listener"),
    Setting("data_dir", str, "./data", "directory of the Berkeley DB environment"),
    Setting("members", list, [], "the cluster, `[[members]]` tables with `id`, `peer`, `http` (this node is added "
            "if missing); flag: `--member ID=PEER_HOST:PORT,HTTP_HOST:PORT`, repeated"),
    Setting("n", int, 3, "replicas per key (N)", POSITIVE),
    Setting("r", int, 2, "replies a read waits for (R), 1..N"),
    Setting("w", int, 2, "acknowledgements a write waits for (W), 1..N"),
    Setting("partitions", int, 64, "partitions of the ring (Q), at least the number of members; fixed for the "
            "life of the cluster"),
    Setting("mode", str, "vclock", "`vclock` (siblings) or `lww` (newest timestamp wins, like Riak's "
            "last_write_wins)", choices=MODES),
    Setting("sync", bool, True, "fsync every commit; `false` writes the log without flushing it (a process crash "
            "loses nothing, a machine crash may lose the last commits)"),
    Setting("engine", str, "bdb", "`bdb` (Berkeley DB) or `memory` (tests: nothing survives a restart)",
            choices=ENGINES),
    Setting("bdb_cache_mb", int, 64, "Berkeley DB cache size in MiB", POSITIVE),
    Setting("read_threads", int, 0, "0: client and peer reads run on the event loop; N > 0: on N threads, each "
            "taking a batch of reads. Reads never wait for locks, so on the event loop they cost a cache lookup, "
            "and stall it only for a page that is in neither the Berkeley DB cache nor the OS page cache. "
            "Updates always read the current record on the event loop.", NON_NEGATIVE),
    Setting("request_timeout", float, 3.0, "seconds a quorum waits for replicas before answering 503", POSITIVE),
    Setting("heartbeat_interval", float, 1.0, "seconds between pings of every peer; their answers feed the "
            "failure detector", POSITIVE),
    Setting("handoff_interval", float, 2.0, "seconds between rounds of hinted handoff to owners that are up "
            "(at most 100 keys a round)", POSITIVE),
    Setting("anti_entropy_interval", float, 5.0,
            "seconds between anti-entropy exchanges (one partition with one other replica each)", POSITIVE),
    Setting("gossip_interval", float, 1.0, "seconds between gossip exchanges with one random member (and one seed "
            "when that member is not a seed)", POSITIVE),
    Setting("seeds", list, [], "ids of seed members every node also gossips with (flag: `--seed ID`, repeated); "
            "default: the configured `members`"),
    Setting("transfer_interval", float, 1.0,
            "seconds between rounds of ownership transfer (a round continues batch after batch while work "
            "remains and admission control allows)", POSITIVE),
    Setting("tombstone_grace", float, 60.0,
            "seconds a delete stays after every owner was found holding it, before it is removed (checked "
            "every grace/4 s, between 1 and 10 s)", NON_NEGATIVE),
    Setting("background_rate", float, 2000.0,
            "records per second that handoff, transfers, anti-entropy, read repair and tombstone removal may "
            "move while clients are served fast", POSITIVE),
    Setting("background_latency_target", float, 0.05,
            "seconds of smoothed client latency (GET, PUT, DELETE) above which the background rate is halved "
            "each second (down to 5%); it grows back by 10% a second below it", POSITIVE),
    Setting("phi_threshold", float, 8.0, "phi-accrual suspicion level above which a silent peer is considered "
            "down (two refused or timed-out pings in a row mark it down at once)", POSITIVE),
    Setting("max_value_size", int, 1024 * 1024, "largest value in bytes (413 above)", POSITIVE),
    Setting("max_frame_size", int, 64 * 1024 * 1024,
            "largest node-to-node frame in bytes (at least twice the value limit)", POSITIVE),
    Setting("max_context_entries", int, 64, "bound on a version's causal context (see README: truncation)",
            POSITIVE),
    Setting("key_size_warning", int, 8 * 1024 * 1024,
            "bytes a key's stored versions may reach before each write that leaves it past this is logged "
            "and counted (`dynamod_oversized_key_writes_total`)", POSITIVE),
    Setting("max_key_size", int, 30 * 1024 * 1024,
            "bytes of stored versions (siblings, clocks) a write may grow a key to (413 beyond; a write that "
            "shrinks it is always taken); between `max_value_size` and half of `max_frame_size`", POSITIVE),
    Setting("http_header_timeout", float, 10.0,
            "seconds a client has to send a request line and headers, and the longest a request body may "
            "pause; then 408 and the connection closes", POSITIVE),
    Setting("http_idle_timeout", float, 60.0,
            "seconds a keep-alive HTTP connection may wait for its next request, or leave its answers "
            "unread, before it is closed", POSITIVE),
    Setting("http_max_connections", int, 1024, "open HTTP connections per node; one more is answered 503 and "
            "closed", POSITIVE),
    Setting("http_max_pipelined", int, 32,
            "requests a client may pipeline behind the one being answered before the node stops reading its "
            "connection (it reads again at half)", POSITIVE),
    Setting("tls_cert", str, "", "PEM certificate of this node (`dynactl certs issue`); with `tls_key` and "
            "`tls_ca`, turns on mutual TLS between nodes and HTTPS with authentication on the HTTP port (all "
            "three or none)"),
    Setting("tls_key", str, "", "PEM private key of `tls_cert` (keep it mode 0600)"),
    Setting("tls_ca", str, "", "PEM certificate of the cluster CA (`dynactl certs init`): peers must present a "
            "node certificate from it, HTTP clients a client certificate from it or a bearer token"),
    Setting("auth_tokens", str, "", "file of bearer tokens, stored hashed (`dynactl certs token`), accepted on "
            "the HTTP port besides client certificates; needs TLS"),
    Setting("metrics_role", str, "reader", "the role `/metrics` needs under TLS: `anonymous`, `reader`, `writer` "
            "or `admin`", choices=("anonymous", "reader", "writer", "admin")),
    Setting("log_file", str, "-", "JSON-lines log file, `-` for stderr"),
    Setting("log_level", str, "info", "`debug`, `info`, `warn` or `error`", choices=LOG_LEVELS),
)

SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}

#: The settings that turn TLS on, together.
TLS_FILES = ("tls_cert", "tls_key", "tls_ca")


def settings_table() -> str:
    """The README's configuration table (a test keeps the README's copy equal to this)."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    rows += [f"| `{s.name}` | {s.readme_default()} | {s.help} |" for s in SETTINGS]
    return "\n".join(rows) + "\n"


class _NodeConfigMethods:
    """What a ``NodeConfig`` answers besides its settings."""

    members: tuple[Member, ...]

    tls_cert: str

    @property
    def tls(self) -> bool:
        """Whether both ports use TLS (and the HTTP port authenticates)."""
        return bool(self.tls_cert)

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


#: A validated node configuration: one frozen field per setting, in ``SETTINGS`` order.
NodeConfig = attrs.make_class("NodeConfig", {s.name: attrs.field() for s in SETTINGS},
                              bases=(_NodeConfigMethods,), frozen=True, slots=True)
NodeConfig.__module__ = __name__
NodeConfig.__doc__ = "A validated node configuration (fields: the names in ``SETTINGS``)."


def _check_type(setting: Setting, value: Any) -> Any:
    if setting.type is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if setting.type is int and isinstance(value, bool):
        raise ConfigError(f"{setting.name} must be an integer, got {value!r}")
    if not isinstance(value, setting.type):
        raise ConfigError(f"{setting.name} must be {setting.type.__name__}, got {value!r}")
    return value


def _check_bound(setting: Setting, value: Any) -> None:
    if value is None:
        return
    if setting.choices is not None and value not in setting.choices:
        raise ConfigError(f"{setting.name} must be one of {', '.join(setting.choices)}, got {value!r}")
    if setting.bound == POSITIVE and value <= 0:
        raise ConfigError(f"{setting.name} must be positive, got {value!r}")
    if setting.bound == NON_NEGATIVE and value < 0:
        raise ConfigError(f"{setting.name} must be 0 or more, got {value!r}")


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
        _check_bound(setting, resolved[setting.name])
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
    for name, value in (("r", r), ("w", w)):
        if not 1 <= value <= n:
            raise ConfigError(f"{name} must be between 1 and n={n}, got {value}")
    if resolved["partitions"] < len(members):
        raise ConfigError(f"partitions ({resolved['partitions']}) must be at least the number of members")
    if resolved["max_frame_size"] < 2 * resolved["max_value_size"]:
        raise ConfigError("max_frame_size must be at least twice max_value_size")
    if not resolved["max_value_size"] <= resolved["max_key_size"] <= resolved["max_frame_size"] // 2:
        # A key at the bound plus one more coordinator's concurrent growth must still fit a frame.
        raise ConfigError("max_key_size must be at least max_value_size and at most half of max_frame_size")
    if resolved["key_size_warning"] > resolved["max_key_size"]:
        raise ConfigError("key_size_warning must not exceed max_key_size")
    tls = [name for name in TLS_FILES if resolved[name]]
    if tls and len(tls) != len(TLS_FILES):
        raise ConfigError(f"half a TLS configuration: {', '.join(tls)} set but not "
                          f"{', '.join(n for n in TLS_FILES if n not in tls)} (all three or none)")
    if resolved["auth_tokens"] and not tls:
        raise ConfigError("auth_tokens needs TLS (tls_cert, tls_key, tls_ca): bearer tokens must not travel "
                          "in plaintext")
    if not all(isinstance(seed, str) for seed in resolved["seeds"]):
        raise ConfigError("seeds must be a list of member ids")
    resolved["seeds"] = tuple(resolved["seeds"])
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
