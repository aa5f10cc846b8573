"""/etc/pykvpd.conf: defaults, every key, and errors that name file, key and value."""

from __future__ import annotations

import pytest

from pykvpd.config import Config, ConfigError, load_config


def write(tmp_path, text: str) -> str:
    path = tmp_path / "pykvpd.conf"
    path.write_text(text)
    return str(path)


def test_missing_file_gives_defaults(tmp_path):
    config = load_config(str(tmp_path / "absent.conf"))
    assert config == Config()
    assert config.pool_dir == "/var/lib/hyperv"
    assert config.ip_injection == "on"  # as the C daemon: SET_IP_INFO is applied
    assert config.exclude_interfaces == ()
    assert config.pool_file_mode == 0o644
    assert (config.debug, config.debug_values, config.wait_device) == (False, False, 10.0)
    assert config.source is None


def test_all_keys(tmp_path):
    path = write(
        tmp_path,
        "[pykvpd]\n"
        "pool_dir = /srv/kvp/\n"
        "ip_injection = Dry-Run\n"
        "exclude_interfaces = docker*, veth*  virbr*\n"
        "pool_file_mode = 0600\n"
        "debug = yes\n"
        "debug_values = off\n"
        "wait_device = 2.5\n",
    )
    config = load_config(path)
    assert config.pool_dir == "/srv/kvp"
    assert config.ip_injection == "dry-run"
    assert config.exclude_interfaces == ("docker*", "veth*", "virbr*")
    assert config.pool_file_mode == 0o600
    assert config.debug is True and config.debug_values is False
    assert config.wait_device == 2.5
    assert config.source == path
    assert config.excludes_interface("docker0") and config.excludes_interface("veth1a2b")
    assert not config.excludes_interface("eth0")


def test_empty_file_and_other_sections_give_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == Config()
    assert load_config(write(tmp_path, "[future]\nx = 1\n")) == Config()


@pytest.mark.parametrize(
    "key, value",
    [
        ("ip_injection", "maybe"),
        ("pool_dir", "relative/dir"),
        ("pool_file_mode", "0999"),
        ("pool_file_mode", "4755"),
        ("pool_file_mode", "rw-r--r--"),
        ("debug", "sometimes"),
        ("wait_device", "-1"),
        ("wait_device", "ten"),
        ("wait_device", "nan"),
        ("pool_dri", "/var/lib/hyperv"),
    ],
)
def test_invalid_values_name_file_key_and_value(tmp_path, key, value):
    path = write(tmp_path, f"[pykvpd]\n{key} = {value}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    error = info.value
    assert (error.path, error.key, error.value) == (path, key, value)
    assert path in str(error) and key in str(error) and repr(value) in str(error)


def test_a_key_with_control_characters_is_named_escaped(tmp_path):
    """The message reaches the journal, stderr and pykvpd status: no ESC or bidi override."""
    path = write(tmp_path, "[pykvpd]\n\x1b[2Jgone\u202e = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "\x1b[2jgone\u202e"  # configparser lower-cases keys
    assert "for \\x1b[2jgone\\xe2\\x80\\xae: unknown key" in str(info.value)
    assert str(info.value).isprintable()


def test_syntax_error(tmp_path):
    path = write(tmp_path, "pool_dir = /x\n")  # no section header
    with pytest.raises(ConfigError, match="syntax error") as info:
        load_config(path)
    assert info.value.path == path and info.value.key is None


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path))  # a directory
