"""Configuration: TOML and flags, unknown keys refused, values cross-checked."""

from __future__ import annotations

import attrs
import pytest

from dynamod.config import SETTINGS, ConfigError, build_config, load_toml, parse_member_flag


def test_defaults_with_a_node_id():
    config = build_config({"node_id": "n1"})
    assert (config.n, config.r, config.w, config.mode, config.sync) == (3, 2, 2, "vclock", True)
    assert config.member_ids == ("n1",)


def test_unknown_keys_are_refused_by_name():
    with pytest.raises(ConfigError, match="unknown configuration key.*colour"):
        build_config({"node_id": "n1", "colour": "blue"})


@pytest.mark.parametrize("values, message", [
    ({"r": 4}, "r must be between 1 and n=3"),
    ({"w": 0}, "w must be between 1 and n=3"),
    ({"mode": "strong"}, "mode must be one of"),
    ({"n": "3"}, "n must be int"),
    ({"http": "nowhere"}, "expected HOST:PORT"),
    ({"members": [{"id": "x", "peer": "1.2.3.4:1"}]}, "exactly id, peer and http"),
    ({"partitions": 1, "members": [{"id": "x", "peer": "h:1", "http": "h:2"}]}, "partitions"),
    ({"read_threads": -1}, "read_threads must be 0 or more"),
    ({"http_max_pipelined": 0}, "http_max_pipelined must be positive"),
    ({"http_idle_timeout": 0.0}, "http_idle_timeout must be positive"),
    ({"log_level": "loud"}, "log_level must be one of debug, info, warn, error"),
    ({"n": 0}, "n must be positive"),
])
def test_bad_values_are_refused(values, message):
    with pytest.raises(ConfigError, match=message):
        build_config({"node_id": "n1", **values})


def test_toml_file_is_loaded(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text('node_id = "n2"\nn = 5\nr = 3\nw = 3\n[[members]]\nid = "n1"\npeer = "h:7001"\nhttp = "h:8001"\n')
    config = build_config(load_toml(str(path)))
    assert config.n == 5 and config.member_ids == ("n1", "n2")


def test_invalid_toml_is_a_config_error(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text("node_id = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(str(path))


def test_member_flag_parses():
    assert parse_member_flag("n1=127.0.0.1:7001,127.0.0.1:8001") == \
        {"id": "n1", "peer": "127.0.0.1:7001", "http": "127.0.0.1:8001"}
    with pytest.raises(ConfigError):
        parse_member_flag("n1")


def test_every_setting_has_help():
    assert all(s.help for s in SETTINGS)


def test_the_config_has_exactly_the_declared_settings():
    config = build_config({"node_id": "n1"})
    assert [f.name for f in attrs.fields(type(config))] == [s.name for s in SETTINGS]
    assert config.http_max_connections == 1024 and config.member("n1").http == "127.0.0.1:8000"
