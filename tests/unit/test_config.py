"""Configuration: defaults, the shipped example, and errors that name the key."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from smtpproxy.common import config

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_need_no_file():
    cfg = config.load(None)
    (listener,) = cfg.proxy.listeners
    assert (listener.listen, listener.downstream, listener.profile) == (
        "127.0.0.1:10025", "127.0.0.1:10026", "inbound")


def _leaf_keys(cls, prefix=""):
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _leaf_keys(tp, prefix + f.name + ".")
        elif typing.get_args(tp) and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            yield from _leaf_keys(typing.get_args(tp)[0], prefix + f.name + "[].")
        else:
            yield prefix + f.name


# Keys the shipped conf/smtpproxy.toml sets otherwise than the built-in default.
SHIPPED_ON_PURPOSE = {
    # SpamAssassin's rules: most of what catches spam untrained; off in a
    # configuration that does not ask, so nothing is parsed or compiled there.
    "scan.spamassassin.enabled": True,
}


def test_shipped_example_is_valid_and_lists_every_key():
    path = ROOT / "conf" / "smtpproxy.toml"
    shipped = config.load(str(path))
    # The example keeps the built-in defaults, but for what it turns on on purpose
    # (each explained in the file itself).
    assert config.dump(shipped) == config.dump(config.load(None, SHIPPED_ON_PURPOSE)), \
        "the example must keep defaults"
    for dotted, value in SHIPPED_ON_PURPOSE.items():
        section, key = dotted.rsplit(".", 1)
        default = config.load(None)
        for part in section.split("."):
            default = getattr(default, part)
        assert getattr(default, key) != value, f"{dotted} is no longer a deliberate difference"
    text = path.read_text()
    missing = [key for key in _leaf_keys(config.Config)
               if not re.search(rf"^#? ?{re.escape(key.rsplit('.', 1)[-1])} = ", text, re.M)]
    assert missing == []


@pytest.mark.parametrize("text, key", [
    ("bogus = 1", "bogus"),
    ("[proxy]\nmax_sessions = 'many'", "proxy.max_sessions"),
    ("[proxy]\nmax_sessions = 0", "proxy.max_sessions"),
    ("[proxy]\nclient_networks = ['10.0.0.0/33']", "proxy.client_networks[0]"),
    ("[log]\nlevel = 'loud'", "log.level"),
    ("[[proxy.listeners]]\nlisten = 'nowhere'", "proxy.listeners[0].listen"),
    ("[[proxy.listeners]]\nprofile = 'sideways'", "proxy.listeners[0].profile"),
    ("[[proxy.listeners]]\nname='a'\n[[proxy.listeners]]\nname='a'\nlisten='127.0.0.1:1'",
     "proxy.listeners[1].name"),
    ("[proxy]\ntrace_header = 'yes'", "proxy.trace_header"),
])
def test_bad_values_name_the_key(tmp_path, text, key):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(config.ConfigError) as err:
        config.load(str(path))
    assert err.value.key == key


def test_configtest_exits_nonzero_naming_the_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[proxy]\nmax_recipients = -5\n")
    result = subprocess.run([sys.executable, "-m", "smtpproxy.cli", "configtest", "-c", str(path)],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2
    assert "proxy.max_recipients" in result.stderr


def test_configdump_applies_flags(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "smtpproxy.cli", "configdump", "--state-dir", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0
    assert f'state_dir = "{tmp_path}"' in result.stdout


@pytest.mark.parametrize("value, expected", [
    ("127.0.0.1:25", ("127.0.0.1", 25)), ("[::1]:10025", ("::1", 10025)),
    ("localhost:587", ("localhost", 587)),
])
def test_parse_hostport(value, expected):
    assert config.parse_hostport(value) == expected


@pytest.mark.parametrize("value", ["127.0.0.1", ":25", "::1:25", "[::1]25", "host:0", "host:99999"])
def test_parse_hostport_refuses(value):
    with pytest.raises(config.ConfigError):
        config.parse_hostport(value, "k")
