"""Inventories: Ansible INI (with group_vars/ and host_vars/) and CONTRACT nodes.json, into Hosts."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import string
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynactl.inventory import (
    DEFAULTS,
    Host,
    InventoryError,
    host_from_vars,
    hosts_from_inventory,
    hosts_from_nodes_document,
    load_hosts,
    parse_ini,
    select,
    ssh_options,
)


def ini(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(ini(text))
    return path


def by_name(hosts: list[Host]) -> dict[str, Host]:
    return {h.name: h for h in hosts}


# -- host lines, quoting, comments -----------------------------------------------------------------


def test_host_line_variables_are_parsed_with_types():
    inventory = parse_ini(ini("""
        h1 ansible_host=10.0.0.1 ansible_port=2222 dynamod_sync=false flag=yes other=True name=plain
    """))
    assert inventory.host_vars["h1"] == {"ansible_host": "10.0.0.1", "ansible_port": 2222, "dynamod_sync": False,
                                         "flag": True, "other": True, "name": "plain"}
    assert inventory.groups == {"ungrouped": ["h1"]}


def test_quoted_values_on_host_lines_keep_spaces_and_special_characters():
    inventory = parse_ini(ini("""
        [web]
        h1 label="two words" single='it is # not a comment' eq="a=b" empty=""
    """))
    assert inventory.host_vars["h1"] == {"label": "two words", "single": "it is # not a comment", "eq": "a=b",
                                         "empty": ""}


def test_comments_and_blank_lines_are_ignored():
    inventory = parse_ini(ini("""
        # a comment
        ; another comment

        [web]
          # indented comment
        h1 x=1 # trailing comment
        h2 y="# quoted, not a comment"
    """))
    assert inventory.groups["web"] == ["h1", "h2"]
    assert inventory.host_vars == {"h1": {"x": 1}, "h2": {"y": "# quoted, not a comment"}}


def test_a_host_listed_twice_keeps_one_entry_and_merges_its_variables():
    inventory = parse_ini(ini("""
        [a]
        h1 x=1
        h1 y=2
        [b]
        h1 x=3
    """))
    assert inventory.groups == {"a": ["h1"], "b": ["h1"]}
    assert inventory.host_vars["h1"] == {"x": 3, "y": 2}


def test_hosts_before_any_header_are_ungrouped():
    inventory = parse_ini("h0\n[web]\nh1\n")
    assert inventory.groups == {"ungrouped": ["h0"], "web": ["h1"]}
    assert inventory.members("all") == ["h0", "h1"]


# -- [group:vars], [group:children], [all:vars] --------------------------------------------------


def test_group_vars_section_unquotes_and_converts_values():
    inventory = parse_ini(ini("""
        [web]
        h1
        [web:vars]
        greeting = "hello world"
        path='/srv/dyn amo'
        port=8001
        sync=no
        raw=a b  c
        eq=x=y
    """))
    assert inventory.group_vars["web"] == {"greeting": "hello world", "path": "/srv/dyn amo", "port": 8001,
                                           "sync": False, "raw": "a b  c", "eq": "x=y"}


def test_children_are_nested_and_members_keep_order_of_appearance():
    inventory = parse_ini(ini("""
        [a]
        h3
        h1
        [b]
        h2
        h1
        [c:children]
        a
        b
        [top:children]
        c
        [top]
        h9
    """))
    assert inventory.members("a") == ["h3", "h1"]
    assert inventory.members("c") == ["h3", "h1", "h2"]
    assert inventory.members("top") == ["h9", "h3", "h1", "h2"]
    assert inventory.members("all") == ["h3", "h1", "h2", "h9"]
    assert inventory.members("missing") == []
    assert set(inventory.groups_of("h1")) == {"a", "b", "c", "top"}
    assert set(inventory.groups_of("h9")) == {"top"}


def test_cyclic_children_terminate():
    inventory = parse_ini(ini("""
        [a]
        h1
        [b]
        h2
        [a:children]
        b
        [b:children]
        a
    """))
    assert inventory.members("a") == ["h1", "h2"]
    assert inventory.members("b") == ["h2", "h1"]


def test_precedence_all_then_group_then_host():
    inventory = parse_ini(ini("""
        [all:vars]
        level=all
        only_all=1
        group_over_all=all
        [web]
        h1 level=host
        h2
        [web:vars]
        level=group
        group_over_all=group
    """))
    assert inventory.resolved_vars("h1") == {"level": "host", "only_all": 1, "group_over_all": "group"}
    assert inventory.resolved_vars("h2") == {"level": "group", "only_all": 1, "group_over_all": "group"}


def test_group_vars_reach_hosts_through_children():
    inventory = parse_ini(ini("""
        [dynamod]
        h1
        [cluster:children]
        dynamod
        [cluster:vars]
        ansible_user=admin
    """))
    assert inventory.resolved_vars("h1") == {"ansible_user": "admin"}
    assert hosts_from_inventory(inventory)[0].ssh_user == "admin"


def test_child_group_vars_override_parent_group_vars_as_in_ansible():
    inventory = parse_ini(ini("""
        [dynamod:children]
        web
        [web]
        h1
        [dynamod:vars]
        x=parent
        [web:vars]
        x=child
    """))
    assert inventory.resolved_vars("h1")["x"] == "child"


# -- group_vars/ and host_vars/ files ------------------------------------------------------------


@pytest.fixture
def layered(tmp_path: Path) -> Path:
    """An inventory whose variables come from every layer Ansible reads."""
    path = write(tmp_path / "inventory.ini", """
        [all:vars]
        a=all_inline
        b=all_inline
        [dynamod]
        h1 d=host_inline e=host_inline
        h2
        [dynamod:vars]
        b=group_inline
        g=group_inline
        e=group_inline
    """)
    write(tmp_path / "group_vars" / "all.yml", "z: all_file\n")
    write(tmp_path / "group_vars" / "dynamod" / "main.yaml", "g: group_file\nlisted: [x, y]\n")
    write(tmp_path / "group_vars" / "dynamod" / "more.yml", "more: from_dir\n")
    write(tmp_path / "group_vars" / "README.md", "not: read\n")
    write(tmp_path / "host_vars" / "h1.yml", "e: host_file\n")
    write(tmp_path / "host_vars" / "h2" / "main.yaml", "dynamod_http_port: 8002\n")
    write(tmp_path / "host_vars" / "stranger.yml", "e: nobody\n")
    return path


def test_vars_files_override_inline_variables(layered: Path):
    hosts = by_name(load_hosts(str(layered)))
    assert list(hosts) == ["h1", "h2"]
    assert dict(hosts["h1"].vars) == {"a": "all_inline", "b": "group_inline", "z": "all_file", "g": "group_file",
                                      "listed": ["x", "y"], "more": "from_dir", "d": "host_inline",
                                      "e": "host_file"}
    assert dict(hosts["h2"].vars) == {"a": "all_inline", "b": "group_inline", "z": "all_file", "g": "group_file",
                                      "listed": ["x", "y"], "more": "from_dir", "e": "group_inline",
                                      "dynamod_http_port": 8002}
    assert hosts["h2"].http == "h2:8002"


def test_host_vars_of_hosts_not_in_the_inventory_add_no_host(layered: Path):
    assert "stranger" not in by_name(load_hosts(str(layered), group="all"))


def test_group_vars_all_file_overrides_inline_group_vars_as_in_ansible(tmp_path: Path):
    path = write(tmp_path / "inventory.ini", "[web]\nh1\n[web:vars]\nc=web_inline\n")
    write(tmp_path / "group_vars" / "all.yml", "c: all_file\n")
    assert load_hosts(str(path))[0].vars["c"] == "all_file"


ANSIBLE_INVENTORY = Path(sys.executable).parent / "ansible-inventory"


@pytest.mark.skipif(not ANSIBLE_INVENTORY.exists() and not shutil.which("ansible-inventory"),
                    reason="ansible-core is not installed")
def test_string_variables_resolve_as_ansible_inventory_resolves_them(layered: Path, tmp_path: Path):
    """Ansible itself is the reference (the same inventory drives both): string variables only, as
    INI values' types differ on purpose (Ansible keeps [g:vars] values as strings)."""
    command = str(ANSIBLE_INVENTORY) if ANSIBLE_INVENTORY.exists() else "ansible-inventory"
    config = write(tmp_path / "ansible-config" / "ansible.cfg", "[defaults]\n")
    environment = {**os.environ, "ANSIBLE_HOME": str(tmp_path / "ansible-home"), "ANSIBLE_CONFIG": str(config),
                   "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"), "ANSIBLE_NOCOLOR": "1"}
    listed = subprocess.run([command, "-i", str(layered), "--list"], capture_output=True, text=True,
                            env=environment, cwd=tmp_path, timeout=60, check=True)
    reference = json.loads(listed.stdout)["_meta"]["hostvars"]
    ours = {h.name: dict(h.vars) for h in load_hosts(str(layered))}
    assert set(reference) == set(ours)
    for name, variables in ours.items():
        strings = {k: v for k, v in variables.items() if isinstance(v, str)}
        assert strings == {k: v for k, v in reference[name].items() if k in strings}


# -- ssh options, defaults, the node group ---------------------------------------------------------


@pytest.mark.parametrize("args, expected", [
    ("-o UserKnownHostsFile=/etc/kh -o StrictHostKeyChecking=yes",
     {"userknownhostsfile": "/etc/kh", "stricthostkeychecking": "yes"}),
    ("-oUserKnownHostsFile=/etc/kh", {"userknownhostsfile": "/etc/kh"}),
    ("-o 'UserKnownHostsFile=/path with space/kh' -p 22", {"userknownhostsfile": "/path with space/kh"}),
    ("-J jump -o", {}),
    ("", {}),
])
def test_ssh_options(args, expected):
    assert ssh_options(args) == expected


@pytest.mark.parametrize("line, known_hosts", [
    ("h1 ansible_ssh_common_args='-o UserKnownHostsFile=/k/hosts -o StrictHostKeyChecking=yes'", "/k/hosts"),
    ("h1 ansible_ssh_common_args=-oUserKnownHostsFile=/k/hosts", "/k/hosts"),
    ("h1 ansible_ssh_common_args='-o UserKnownHostsFile=/dev/null'", None),
    ("h1", None),
])
def test_known_hosts_comes_from_ssh_common_args(line, known_hosts):
    assert hosts_from_inventory(parse_ini(line))[0].known_hosts == known_hosts


def test_known_hosts_from_a_vars_section():
    inventory = parse_ini(ini("""
        [dynamod]
        h1
        [all:vars]
        ansible_ssh_common_args='-oUserKnownHostsFile=/k/testbed_known_hosts -o StrictHostKeyChecking=yes'
    """))
    assert hosts_from_inventory(inventory)[0].known_hosts == "/k/testbed_known_hosts"


def test_defaults_of_a_bare_host():
    host = hosts_from_inventory(parse_ini("h1\n"))[0]
    assert (host.name, host.address, host.ssh_user, host.ssh_port, host.ssh_key, host.known_hosts, host.python) \
        == ("h1", "h1", "root", 22, None, None, "/usr/bin/python3")
    assert host.home == "/opt/dynamod"
    assert host.config_path == "/opt/dynamod/node.toml"
    assert host.venv == "/opt/dynamod/venv"
    assert (host.http, host.peer) == ("h1:8000", "h1:7000")
    assert host.var("dynamod_n") == 3 and host.var("dynamod_user") is None and host.var("unset") is None
    assert dict(host.vars) == {}


def test_addresses_use_ansible_host_then_dynamod_address():
    hosts = by_name(hosts_from_inventory(parse_ini(ini("""
        a ansible_host=10.0.0.1 dynamod_http_port=8101 dynamod_peer_port=7101 dynamod_home=/srv/d
        b ansible_host=10.0.0.2 dynamod_address=192.168.0.2 ansible_user=ops ansible_port=2200
        b ansible_ssh_private_key_file=/keys/id_ed25519 ansible_python_interpreter=/usr/bin/python3.11
    """))))
    a, b = hosts["a"], hosts["b"]
    assert (a.address, a.http, a.peer, a.config_path) == ("10.0.0.1", "10.0.0.1:8101", "10.0.0.1:7101",
                                                          "/srv/d/node.toml")
    assert (b.address, b.http, b.peer) == ("10.0.0.2", "192.168.0.2:8000", "192.168.0.2:7000")
    assert (b.ssh_user, b.ssh_port, b.ssh_key, b.python) == ("ops", 2200, "/keys/id_ed25519", "/usr/bin/python3.11")


def test_the_dynamod_group_is_chosen_when_present():
    inventory = parse_ini(ini("""
        m1
        [monitor]
        m2
        [dynamod]
        n2
        n1
    """))
    assert [h.name for h in hosts_from_inventory(inventory)] == ["n2", "n1"]
    assert [h.name for h in hosts_from_inventory(inventory, "monitor")] == ["m2"]


def test_the_dynamod_group_may_be_made_of_children():
    inventory = parse_ini("[web]\nw1\n[other]\no1\n[dynamod:children]\nweb\n")
    assert [h.name for h in hosts_from_inventory(inventory)] == ["w1"]


def test_every_host_when_there_is_no_dynamod_group():
    inventory = parse_ini("m1\n[web]\nw1\nw2\n[db]\nd1\nw1\n[dynamod:vars]\nx=1\n")
    assert [h.name for h in hosts_from_inventory(inventory)] == ["m1", "w1", "w2", "d1"]


def test_a_bad_port_names_the_host():
    with pytest.raises(InventoryError, match="host h1: ansible_port must be a number, got 'ssh'"):
        host_from_vars("h1", {"ansible_port": "ssh"})


def test_the_example_inventory_of_the_ansible_directory_loads():
    example = Path(__file__).resolve().parents[2] / "ansible" / "inventory" / "example.ini"
    if not example.exists():
        pytest.skip("no ansible/inventory/example.ini")
    hosts = load_hosts(str(example))
    assert [h.name for h in hosts] == ["n1", "n2", "n3"]
    assert all(h.ssh_user == "admin" for h in hosts)


# -- nodes.json ----------------------------------------------------------------------------------


def test_nodes_json_with_the_contract_fields(tmp_path: Path):
    path = tmp_path / "nodes.json"
    path.write_text(json.dumps({"hosts": [
        {"name": "n1", "address": "10.0.0.1", "ssh_user": "ops", "ssh_key": "/keys/n1"},
        {"name": "n2", "address": "10.0.0.2"},
    ]}))
    n1, n2 = load_hosts(str(path))
    assert (n1.name, n1.address, n1.ssh_user, n1.ssh_key, n1.ssh_port) == ("n1", "10.0.0.1", "ops", "/keys/n1", 22)
    assert (n2.ssh_user, n2.ssh_key, n2.known_hosts) == ("root", None, None)
    assert (n1.http, n1.peer, n1.home) == ("10.0.0.1:8000", "10.0.0.1:7000", "/opt/dynamod")


def test_nodes_json_optional_fields():
    [host] = hosts_from_nodes_document({"hosts": [{
        "name": "n1", "address": "10.0.0.1", "ssh_user": "ops", "ssh_key": "/k", "ssh_port": 2222,
        "known_hosts": "/k/known", "python": "/usr/bin/python3.12", "home": "/srv/d", "data_dir": "/data",
        "log_dir": "/logs", "faketime_file": "/ft", "http_port": 8001, "peer_port": 7001}]})
    assert (host.ssh_port, host.known_hosts, host.python) == (2222, "/k/known", "/usr/bin/python3.12")
    assert (host.home, host.var("dynamod_data_dir"), host.var("dynamod_log_dir")) == ("/srv/d", "/data", "/logs")
    assert host.var("dynamod_faketime_file") == "/ft"
    assert (host.http, host.peer) == ("10.0.0.1:8001", "10.0.0.1:7001")


@pytest.mark.parametrize("document, message", [
    ([], r'expected \{"hosts": \[\.\.\.\]\}'),
    ({"nodes": []}, r'expected \{"hosts": \[\.\.\.\]\}'),
    ({"hosts": {"n1": {}}}, r'expected \{"hosts": \[\.\.\.\]\}'),
    ({"hosts": [{"name": "n1"}]}, r"hosts\[0\] needs at least a name and an address"),
    ({"hosts": [{"name": "n1", "address": "a"}, "n2"]}, r"hosts\[1\] needs at least a name and an address"),
    ({"hosts": [{"address": "10.0.0.1"}]}, r"hosts\[0\] needs"),
])
def test_nodes_documents_that_do_not_match_the_contract(document, message):
    with pytest.raises(InventoryError, match=r"^my\.json: " + message):
        hosts_from_nodes_document(document, "my.json")


def test_a_nodes_json_file_that_does_not_match_names_the_file(tmp_path: Path):
    path = tmp_path / "nodes.json"
    path.write_text('{"nodes": []}')
    with pytest.raises(InventoryError, match=r'nodes\.json.*expected \{"hosts"') as caught:
        load_hosts(str(path))
    assert str(path) in str(caught.value)


def test_a_nodes_json_that_parses_is_not_called_invalid_json(tmp_path: Path):
    path = tmp_path / "nodes.json"
    path.write_text('{"nodes": []}')
    with pytest.raises(InventoryError) as caught:
        load_hosts(str(path))
    assert "not valid JSON" not in str(caught.value)


def test_a_nodes_json_that_is_not_json(tmp_path: Path):
    path = tmp_path / "nodes.json"
    path.write_text('{"hosts": [')
    with pytest.raises(InventoryError, match="nodes.json is not valid JSON"):
        load_hosts(str(path))


# -- bad input: InventoryError naming file and line --------------------------------------------------


@pytest.mark.parametrize("text, message", [
    ("[web]\nh1\n[db\n", r"inv\.ini:3: unclosed section header '\[db'"),
    ("# c\n\n[web:hostz]\n", r"inv\.ini:3: unknown section kind 'hostz' \(hosts, vars or children\)"),
    ("[web:a:b]\n", r"inv\.ini:1: unknown section kind 'a:b'"),
    ("[web]\nh1\n[web:vars]\nx\n", r"inv\.ini:4: expected NAME=VALUE in \[web:vars\], got 'x'"),
    ("[web:vars]\n=1\n", r"inv\.ini:2: expected NAME=VALUE in \[web:vars\]"),
    ("[web]\n; c\nh1 a=1 oops\n", r"inv\.ini:3: expected NAME=VALUE after host h1, got 'oops'"),
    ('h1 label="unclosed\n', r"inv\.ini:1: No closing quotation"),
])
def test_bad_ini_lines_are_named_by_file_and_line(tmp_path: Path, text, message):
    path = tmp_path / "inv.ini"
    path.write_text(text)
    with pytest.raises(InventoryError, match=message) as caught:
        load_hosts(str(path))
    assert str(caught.value).startswith(f"{path}:")


def test_a_missing_inventory(tmp_path: Path):
    with pytest.raises(InventoryError, match=f"^inventory {re.escape(str(tmp_path))}/nope.ini does not exist$"):
        load_hosts(str(tmp_path / "nope.ini"))


def test_an_unreadable_inventory(tmp_path: Path):
    with pytest.raises(InventoryError, match=f"^cannot read inventory {re.escape(str(tmp_path))}: Is a directory$"):
        load_hosts(str(tmp_path))


def test_an_inventory_without_hosts(tmp_path: Path):
    path = write(tmp_path / "inv.ini", "# nothing\n[all:vars]\nx=1\n")
    with pytest.raises(InventoryError, match="inv.ini lists no hosts"):
        load_hosts(str(path))


@pytest.mark.parametrize("relative", ["group_vars/all.yml", "group_vars/dynamod/main.yml", "host_vars/h1.yaml"])
def test_bad_yaml_names_the_file(tmp_path: Path, relative):
    inventory = write(tmp_path / "inv.ini", "[dynamod]\nh1\n")
    bad = write(tmp_path / relative, "key: [unclosed\n")
    with pytest.raises(InventoryError, match="not valid YAML") as caught:
        load_hosts(str(inventory))
    assert str(caught.value).startswith(f"{bad}: ")


@pytest.mark.parametrize("content", ["- a\n- b\n", "just a string\n", "42\n"])
def test_yaml_that_is_not_a_mapping_names_the_file(tmp_path: Path, content):
    inventory = write(tmp_path / "inv.ini", "[dynamod]\nh1\n")
    bad = write(tmp_path / "host_vars" / "h1.yml", content)
    with pytest.raises(InventoryError, match=f"^{re.escape(str(bad))}: expected a mapping of variables$"):
        load_hosts(str(inventory))


def test_an_empty_yaml_file_is_no_variables(tmp_path: Path):
    inventory = write(tmp_path / "inv.ini", "[dynamod]\nh1 x=1\n")
    write(tmp_path / "host_vars" / "h1.yml", "# nothing yet\n")
    assert dict(load_hosts(str(inventory))[0].vars) == {"x": 1}


# -- select --------------------------------------------------------------------------------------


HOSTS = [Host(name=n, address=f"10.0.0.{i}") for i, n in enumerate(["n1", "n2", "n3"], start=1)]


def test_select_keeps_inventory_order():
    assert select(HOSTS, ()) == HOSTS
    assert [h.name for h in select(HOSTS, ("n3", "n1"))] == ["n1", "n3"]
    assert [h.name for h in select(HOSTS, ["n2", "n2"])] == ["n2"]


def test_select_names_unknown_hosts_and_the_known_ones():
    with pytest.raises(InventoryError, match=r"^not in the inventory: x, y \(hosts: n1, n2, n3\)$"):
        select(HOSTS, ("y", "n1", "x"))


# -- round trip ----------------------------------------------------------------------------------


def scalar_looking(text: str) -> bool:
    return text.isdigit() or text.lower() in ("true", "false", "yes", "no")


names = st.from_regex(r"[a-z][a-z0-9.-]{0,12}", fullmatch=True)
keys = st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True)
string_values = st.text(alphabet=string.ascii_letters + string.digits + " #;=/'\"\\:.,-_[]", max_size=20).filter(
    lambda text: not scalar_looking(text))
values = st.one_of(st.integers(min_value=0, max_value=10**9), st.booleans(), string_values)
group_values = st.from_regex(r"[A-Za-z/_.-][A-Za-z0-9 /_.-]{0,15}[A-Za-z0-9/_.-]", fullmatch=True).filter(
    lambda text: not scalar_looking(text))


def render(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return shlex.quote(str(value))


@settings(max_examples=100, deadline=None)
@given(hosts=st.dictionaries(names, st.dictionaries(keys, values, max_size=5), min_size=1, max_size=6),
       group_vars=st.dictionaries(keys, group_values, max_size=4),
       data=st.data())
def test_rendered_inventories_round_trip(hosts, group_vars, data):
    groups = {name: data.draw(st.sampled_from(["dynamod", "web", "ungrouped"]), label=name) for name in hosts}
    lines, order = ["# generated"], []
    for group in ("ungrouped", "dynamod", "web"):
        members = [name for name in hosts if groups[name] == group]
        order += members
        if group == "web" or (group == "dynamod" and members):
            lines.append(f"[{group}]")
        for name in members:
            lines.append(" ".join([name, *(f"{key}={render(value)}" for key, value in hosts[name].items())]))
        if group == "ungrouped":
            lines.append("")
    lines += ["[web:vars]", *(f"{key}={value}" for key, value in group_vars.items())]
    inventory = parse_ini("\n".join(lines) + "\n", "generated.ini")

    assert inventory.host_vars == hosts
    for group in ("dynamod", "web"):
        assert inventory.members(group) == [name for name in hosts if groups[name] == group]
    assert inventory.group_vars["web"] == group_vars
    for name, own in hosts.items():
        expected = {**(group_vars if groups[name] == "web" else {}), **own}
        assert inventory.resolved_vars(name) == expected
    chosen = hosts_from_inventory(inventory)
    in_dynamod = [name for name in hosts if groups[name] == "dynamod"]
    assert [h.name for h in chosen] == (in_dynamod or order)
    for host in chosen:
        assert dict(host.vars) == inventory.resolved_vars(host.name)


def test_unicode_digits_stay_strings():
    assert parse_ini("h1 x=²\n").host_vars["h1"] == {"x": "²"}


def test_defaults_cover_every_variable_the_host_model_reads():
    host = Host(name="h", address="a")
    for name in ("dynamod_home", "dynamod_http_port", "dynamod_peer_port", "dynamod_data_dir", "dynamod_log_dir",
                 "dynamod_n", "dynamod_r", "dynamod_w", "dynamod_partitions", "dynamod_mode", "dynamod_sync"):
        assert host.var(name) == DEFAULTS[name] is not None
