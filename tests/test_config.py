"""Config loading: TOML and mcp.json, ${VAR}, errors that name the key and line, describe()."""

from __future__ import annotations

import pytest

from gateway.config import Config, ConfigError, describe, load_config, load_config_text
from tests.support import ROOT


def load(text: str, **env: str) -> Config:
    return load_config_text(text, fmt="toml", source="g.toml", env=env)


def test_defaults() -> None:
    config = load("")
    assert config.server.port == 8080 and config.server.path == "/mcp"
    assert config.gateway.separator == "__" and config.backends == {}


def test_full_file_and_transports() -> None:
    config = load('[server]\nport = 0\n[backends.a]\ncommand = "x"\nargs = ["1"]\n[backends.b]\nurl = "http://h:1/mcp"\n')
    assert config.server.port == 0
    assert config.backends["a"].transport == "stdio" and config.backends["a"].args == ["1"]
    assert config.backends["b"].transport == "http"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("colour = 1\n", "g.toml:1: unknown key 'colour'"),
        ("[server]\nhost = 'a'\nprot = 1\n", "g.toml:3: unknown key 'server.prot'"),
        ('[backends.a]\ncommand = "x"\n\n[backends.b]\nurl = "http://h/"\ntimout = 1\n', "g.toml:6: unknown key 'backends.b.timout'"),
        ('[server]\nport = "80"\n', "g.toml:2: Expected `int`, got `str` 'server.port'"),
        ('[backends.a]\ncommand = "x"\nsession = "sometimes"\n', "g.toml:3:"),
    ],
)
def test_errors_name_key_and_line(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(text)
    assert str(info.value).startswith(expected), str(info.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[backends.a]\n", "exactly one of 'url'"),
        ('[backends.a]\ncommand = "x"\nurl = "http://h/"\n', "exactly one of 'url'"),
        ('[backends.a]\nurl = "ftp://h/"\n', "http:// URL"),
        ('[backends."a b"]\ncommand = "x"\n', "backend names"),
        ('[backends.a]\ncommand = "x"\n[backends.b]\ncommand = "y"\nnamespace = "a"\n', "also used by"),
        ('[gateway]\npassthrough = true\n[backends.a]\ncommand = "x"\n[backends.b]\ncommand = "y"\n', "exactly one enabled"),
        ('[gateway]\nseparator = "::"\n', "separator"),
        ("[server]\nport = 70000\n", "0..65535"),
        ("[server]\nheader_timeout = 0\n", "positive"),
        ("[server\n", "invalid TOML"),
    ],
)
def test_semantic_errors(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load(text)


def test_env_substitution() -> None:
    text = '[backends.a]\nurl = "http://${HOST}:${PORT:-9000}/mcp"\nbearer_token = "$${literal}"\n'
    config = load(text, HOST="h")
    assert config.backends["a"].url == "http://h:9000/mcp"
    assert config.backends["a"].bearer_token == "${literal}"
    with pytest.raises(ConfigError, match=r"'backends.a.url' uses \$\{HOST\}, which is not set"):
        load(text)


def test_mcp_json_import() -> None:
    text = """{"mcpServers": {
      "files": {"command": "npx", "args": ["-y", "srv"], "env": {"K": "v"}},
      "web": {"type": "http", "url": "http://h/mcp", "headers": {"x": "y"}},
      "off": {"command": "z", "disabled": true}
    }}"""
    config = load_config_text(text, fmt="json", env={})
    assert config.backends["files"].command == "npx" and config.backends["files"].env == {"K": "v"}
    assert config.backends["web"].url == "http://h/mcp" and config.backends["web"].headers == {"x": "y"}
    assert config.backends["off"].enabled is False


def test_mcp_json_rejects_old_sse_and_unknown_keys() -> None:
    with pytest.raises(ConfigError, match="SSE transport is not supported"):
        load_config_text('{"mcpServers": {"a": {"type": "sse", "url": "http://h/sse"}}}', fmt="json", env={})
    with pytest.raises(ConfigError, match="unknown key 'mcpServers.a.comand'"):
        load_config_text('{"mcpServers": {"a": {"comand": "x"}}}', fmt="json", env={})


def test_describe_redacts_secrets() -> None:
    config = load('[backends.a]\nurl = "http://h/mcp"\nbearer_token = "s3cret"\nheaders = {x-key = "k3y"}\n'
                  '[backends.b]\ncommand = "run"\nenv = {TOKEN = "t0k"}\n')
    text = describe(config)
    assert "a: http http://h/mcp" in text and "b: stdio run" in text
    for secret in ("s3cret", "k3y", "t0k"):
        assert secret not in text


@pytest.mark.parametrize("name", ["gateway.toml", "mcp.json"])
def test_examples_load(name: str) -> None:
    config = load_config(ROOT / "examples" / name, env={})
    assert config.backends


def test_docker_config_loads() -> None:
    config = load_config(ROOT / "docker" / "gateway.toml", env={})
    assert config.server.host == "0.0.0.0" and config.server.port == 8080
