"""Hosts from an Ansible INI inventory (with group_vars/ and host_vars/) or a CONTRACT nodes.json.

The same inventory drives Ansible, ``dynactl deploy`` and the checker, so a host's node settings
are read from the same variables the role uses (``dynamod_home``, ``dynamod_http_port``, ...).
Parsing is pure (text in, hosts out); only ``load_hosts`` touches the disk.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import yaml

NODE_GROUP = "dynamod"
DEFAULTS: dict[str, Any] = {
    "dynamod_home": "/opt/dynamod", "dynamod_data_dir": "/var/lib/dynamod", "dynamod_log_dir": "/var/log/dynamod",
    "dynamod_http_port": 8000, "dynamod_peer_port": 7000, "dynamod_user": None, "dynamod_faketime_file": None,
    "dynamod_n": 3, "dynamod_r": 2, "dynamod_w": 2, "dynamod_partitions": 64, "dynamod_mode": "vclock",
    "dynamod_sync": True, "dynamod_log_level": "info", "dynamod_extra_config": {},
    "dynamod_tls": False, "dynamod_tls_dir": ".dynamo/certs", "dynamod_auth_tokens_file": "",
    "ansible_user": "root", "ansible_port": 22,
    "ansible_python_interpreter": "/usr/bin/python3",
}


class InventoryError(ValueError):
    """An inventory that cannot be used; the message names the file and line."""


@attrs.frozen
class Host:
    """One host and what it takes to reach and run a node on it."""

    name: str
    address: str
    ssh_user: str = "root"
    ssh_key: str | None = None
    ssh_port: int = 22
    known_hosts: str | None = None
    python: str = "/usr/bin/python3"
    vars: Mapping[str, Any] = attrs.field(factory=dict)

    def var(self, name: str) -> Any:
        return self.vars.get(name, DEFAULTS.get(name))

    @property
    def home(self) -> str:
        return str(self.var("dynamod_home"))

    @property
    def config_path(self) -> str:
        return f"{self.home}/node.toml"

    @property
    def venv(self) -> str:
        return f"{self.home}/venv"

    @property
    def http(self) -> str:
        return f"{self.var('dynamod_address') or self.address}:{int(self.var('dynamod_http_port'))}"

    @property
    def peer(self) -> str:
        return f"{self.var('dynamod_address') or self.address}:{int(self.var('dynamod_peer_port'))}"


@attrs.define
class Inventory:
    """An INI inventory's groups and variables, before they are resolved into hosts."""

    groups: dict[str, list[str]] = attrs.field(factory=dict)
    children: dict[str, list[str]] = attrs.field(factory=dict)
    host_vars: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    group_vars: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    group_vars_files: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    host_vars_files: dict[str, dict[str, Any]] = attrs.field(factory=dict)

    def members(self, group: str, seen: frozenset[str] = frozenset()) -> list[str]:
        """Hosts of ``group`` and of its child groups, in order of appearance."""
        if group == "all":
            return list(self.host_vars)
        names = list(self.groups.get(group, []))
        for child in self.children.get(group, []):
            if child not in seen:
                names += [n for n in self.members(child, seen | {group}) if n not in names]
        return names

    def depth(self, group: str, seen: frozenset[str] = frozenset()) -> int:
        """How far below ``all`` a group sits (a child group is deeper than its parents)."""
        parents = [p for p, kids in self.children.items() if group in kids and p not in seen]
        return 1 + max((self.depth(p, seen | {group}) for p in parents), default=0)

    def groups_of(self, host: str) -> list[str]:
        """The host's groups, shallowest first (Ansible's order: depth, then name)."""
        groups = {g for g in list(self.groups) + list(self.children) if g != "all" and host in self.members(g)}
        return sorted(groups, key=lambda g: (self.depth(g), g))

    def resolved_vars(self, host: str) -> dict[str, Any]:
        """Ansible's precedence: inline group vars (all, then groups by depth), group_vars/
        files in the same order, inline host vars, host_vars/ files."""
        groups = ["all", *self.groups_of(host)]
        merged: dict[str, Any] = {}
        for layer in (self.group_vars, self.group_vars_files):
            for group in groups:
                merged.update(layer.get(group, {}))
        merged.update(self.host_vars.get(host, {}))
        merged.update(self.host_vars_files.get(host, {}))
        return merged


def parse_ini(text: str, source: str = "inventory") -> Inventory:
    """Parse Ansible's INI inventory format: ``[group]`` host lines with ``key=value`` vars,
    ``[group:vars]`` and ``[group:children]`` sections, ``#`` and ``;`` comments."""
    inventory = Inventory()
    section, kind = "ungrouped", "hosts"
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        where = f"{source}:{number}"
        if line.startswith("["):
            line = line.split("#", 1)[0].split(";", 1)[0].strip()
            if not line.endswith("]"):
                raise InventoryError(f"{where}: unclosed section header {line!r}")
            section, _, kind = line[1:-1].partition(":")
            kind = kind or "hosts"
            if kind not in ("hosts", "vars", "children"):
                raise InventoryError(f"{where}: unknown section kind {kind!r} (hosts, vars or children)")
            target = {"hosts": inventory.groups, "vars": inventory.group_vars, "children": inventory.children}[kind]
            target.setdefault(section, {} if kind == "vars" else [])
            continue
        if kind == "vars":
            name, equals, value = line.partition("=")
            if not equals or not name.strip():
                raise InventoryError(f"{where}: expected NAME=VALUE in [{section}:vars], got {line!r}")
            inventory.group_vars[section][name.strip()] = _scalar(_unquote(value.strip()))
        elif kind == "children":
            inventory.children[section].append(line.split()[0])
        else:
            try:
                words = shlex.split(line, comments=True)
            except ValueError as exc:
                raise InventoryError(f"{where}: {exc}") from exc
            name, assignments = words[0], words[1:]
            host_vars = inventory.host_vars.setdefault(name, {})
            for assignment in assignments:
                key, equals, value = assignment.partition("=")
                if not equals:
                    raise InventoryError(f"{where}: expected NAME=VALUE after host {name}, got {assignment!r}")
                host_vars[key] = _scalar(value)
            inventory.groups.setdefault(section, [])
            if name not in inventory.groups[section]:
                inventory.groups[section].append(name)
    return inventory


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _scalar(value: str) -> Any:
    """INI values are strings; numbers and booleans become what YAML would make of them."""
    if value.isascii() and value.isdigit():
        return int(value)
    if value.lower() in ("true", "yes"):
        return True
    if value.lower() in ("false", "no"):
        return False
    return value


def ssh_options(common_args: str) -> dict[str, str]:
    """``-o Name=value`` pairs of ``ansible_ssh_common_args``, names lower-cased."""
    options, words = {}, shlex.split(common_args or "")
    for index, word in enumerate(words):
        if word == "-o" and index + 1 < len(words):
            option = words[index + 1]
        else:
            option = word[2:] if word.startswith("-o") else ""
        name, equals, value = option.partition("=")
        if equals:
            options[name.strip().lower()] = value.strip()
    return options


def host_from_vars(name: str, variables: Mapping[str, Any]) -> Host:
    """A Host from Ansible-style variables (ansible_host, ansible_user, ...)."""
    merged = {**DEFAULTS, **variables}
    options = ssh_options(str(merged.get("ansible_ssh_common_args", "")))
    known_hosts = options.get("userknownhostsfile")
    try:
        port = int(merged["ansible_port"])
    except (TypeError, ValueError) as exc:
        raise InventoryError(f"host {name}: ansible_port must be a number, got {merged['ansible_port']!r}") from exc
    key = merged.get("ansible_ssh_private_key_file")
    return Host(name=name, address=str(merged.get("ansible_host", name)), ssh_user=str(merged["ansible_user"]),
                ssh_key=os.path.expanduser(str(key)) if key else None, ssh_port=port,
                known_hosts=None if known_hosts in (None, "/dev/null") else known_hosts,
                python=str(merged["ansible_python_interpreter"]), vars=dict(variables))


def hosts_from_inventory(inventory: Inventory, group: str = NODE_GROUP) -> list[Host]:
    """The hosts of ``group`` (every host when there is no such group), variables resolved."""
    names = inventory.members(group) if group in inventory.groups or group in inventory.children \
        else inventory.members("all")
    return [host_from_vars(name, inventory.resolved_vars(name)) for name in names]


def hosts_from_nodes_document(document: Any, source: str = "nodes.json") -> list[Host]:
    """Hosts from a CONTRACT nodes file: ``{"hosts": [{"name", "address", "ssh_user", "ssh_key"}]}``."""
    if not isinstance(document, dict) or not isinstance(document.get("hosts"), list):
        raise InventoryError(f'{source}: expected {{"hosts": [...]}}')
    hosts = []
    for index, entry in enumerate(document["hosts"]):
        if not isinstance(entry, dict) or not entry.get("name") or not entry.get("address"):
            raise InventoryError(f"{source}: hosts[{index}] needs at least a name and an address")
        variables = {"ansible_host": entry["address"], "ansible_user": entry.get("ssh_user", "root"),
                     "ansible_port": entry.get("ssh_port", 22)}
        if entry.get("ssh_key"):
            variables["ansible_ssh_private_key_file"] = entry["ssh_key"]
        if entry.get("known_hosts"):
            variables["ansible_ssh_common_args"] = f"-o UserKnownHostsFile={entry['known_hosts']}"
        if entry.get("python"):
            variables["ansible_python_interpreter"] = entry["python"]
        for key in ("home", "data_dir", "log_dir", "faketime_file", "http_port", "peer_port", "service_manager"):
            if entry.get(key) is not None:
                variables[f"dynamod_{key}"] = entry[key]
        if entry.get("service_user") is not None:  # the account the node runs as (the role's dynamod_user)
            variables["dynamod_user"] = entry["service_user"]
        hosts.append(host_from_vars(str(entry["name"]), variables))
    return hosts


def _vars_files(directory: Path) -> dict[str, dict[str, Any]]:
    """group_vars/ or host_vars/: NAME.yml, NAME.yaml, or NAME/*.yml (the directory wins, as in
    Ansible)."""
    found: dict[str, dict[str, Any]] = {}
    if not directory.is_dir():
        return found
    for path in sorted(directory.iterdir()):
        if path.is_file() and (directory / path.stem).is_dir():
            continue
        files = sorted(path.glob("*.y*ml")) if path.is_dir() else [path] if path.suffix in (".yml", ".yaml") else []
        for file in files:
            try:
                data = yaml.safe_load(file.read_text()) or {}
            except yaml.YAMLError as exc:
                raise InventoryError(f"{file}: not valid YAML: {exc}") from exc
            if not isinstance(data, dict):
                raise InventoryError(f"{file}: expected a mapping of variables")
            found.setdefault(path.stem if path.is_file() else path.name, {}).update(data)
    return found


def load_hosts(path: str, group: str = NODE_GROUP) -> list[Host]:
    """Hosts from an INI inventory (and its group_vars/, host_vars/) or a nodes.json file.

    As in Ansible, group_vars/ files override ``[group:vars]`` and host_vars/ files override
    variables on the host's line."""
    file = Path(path)
    try:
        text = file.read_text()
    except FileNotFoundError as exc:
        raise InventoryError(f"inventory {path} does not exist") from exc
    except OSError as exc:
        raise InventoryError(f"cannot read inventory {path}: {exc.strerror}") from exc
    if file.suffix == ".json":
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InventoryError(f"{path} is not valid JSON: {exc}") from exc
        hosts = hosts_from_nodes_document(document, str(path))
    else:
        inventory = parse_ini(text, str(path))
        inventory.group_vars_files = _vars_files(file.parent / "group_vars")
        inventory.host_vars_files = _vars_files(file.parent / "host_vars")
        hosts = hosts_from_inventory(inventory, group)
    if not hosts:
        raise InventoryError(f"{path} lists no hosts")
    return hosts


def select(hosts: list[Host], names: tuple[str, ...] | list[str]) -> list[Host]:
    """The hosts called ``names`` (all when none are given), in inventory order."""
    if not names:
        return hosts
    unknown = sorted(set(names) - {h.name for h in hosts})
    if unknown:
        raise InventoryError(f"not in the inventory: {', '.join(unknown)} (hosts: {', '.join(h.name for h in hosts)})")
    return [h for h in hosts if h.name in names]
