"""Config loading: TOML and mcp.json, ${VAR}, errors that name the key and line, describe();
and ``mcp-gateway check`` / ``serve`` refusing a bad config with one line, never a traceback."""

from __future__ import annotations

import pathlib
import json
import subprocess
import sys

import pytest

from gateway.config import Config, ConfigError, describe, load_config, load_config_text
from tests.support import ROOT, gateway, raw_exchange


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
        ('[server]\nport = "80"\n', "g.toml:2: 'server.port': must be an integer, not a string"),
        ('[backends.a]\ncommand = "x"\nsession = "sometimes"\n',
         "g.toml:3: 'backends.a.session': must be one of 'shared', 'per-client', got 'sometimes'"),
        ("[server]\nport = 0\n\n[backend.x]\nurl = 'http://h/'\n", "g.toml:4: unknown key 'backend' (did you mean 'backends'?)"),
        ("[servr]\nport = 0\n", "g.toml:1: unknown key 'servr' (did you mean 'server'?)"),
        ("[[servr]]\nport = 0\n", "g.toml:1: unknown key 'servr'"),
        ('[backends.a]\ncommand = "x"\n[backends.a.env]\nA = "1"\nB = 2\n', "g.toml:5: 'backends.a.env.B': must be a string"),
        ('[backends.a]\ncommand = "x"\nroots = [\n  "file:///a",\n  { nmae = "x" },\n]\n',
         "g.toml:3: unknown key 'backends.a.roots[1].nmae' (did you mean 'name'?)"),
        ('[backends.a]\ncommand = "x"\nargs = ["""\n[servr]\n"""]\ncolour = 1\n', "g.toml:6: unknown key 'backends.a.colour'"),
        ('{"mcpServers": {\n "a": {\n  "url": "http://h:x/"}}}', "g.toml:3: 'mcpServers.a.url': port 'x' is not a number"),
    ],
)
def test_errors_name_key_and_line(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, fmt="json" if text.startswith("{") else "toml", source="g.toml", env={})
    assert str(info.value).startswith(expected), str(info.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[backends.a]\n", "exactly one of 'url'"),
        ('[backends.a]\ncommand = "x"\nurl = "http://h/"\n', "exactly one of 'url'"),
        ('[backends.a]\nurl = "ftp://h/"\n', "unknown URL scheme 'ftp'; supported: http://, https://"),
        ('[backends.a]\nurl = "htp://h/"\n', "unknown URL scheme 'htp'; supported: http://, https://"),
        ('[backends.a]\nurl = "http://h/"\nca_file = "/ca.pem"\n', "'backends.a.ca_file': is for https:// backends"),
        ('[backends.a]\nurl = "http://h:notaport/"\n', "port 'notaport' is not a number"),
        ('[backends.a]\nurl = "http://h:70000/"\n', r"port 70000 is out of range \(1..65535\)"),
        ('[backends.a]\nurl = "http:///mcp"\n', "has no host"),
        ('[backends.a]\nurl = "localhost:9000/mcp"\n', "is not a URL"),
        ('[backends.a]\nurl = "http://u:p@h/"\n', "must not contain user:password@"),
        ('[backends.a]\nurl = "http://h/"\nheaders = { x = "a\\r\\nb" }\n', "'backends.a.headers.x': must be one line"),
        ('[backends.a]\nurl = "http://h/"\nheaders = { "a b" = "v" }\n', "key 'a b' must be an HTTP header name"),
        ('[backends.a]\nurl = "http://h/"\nheaders = { Host = "v" }\n', "is set by the gateway itself"),
        ('[backends.a]\nurl = "http://h/"\nbearer_token = "t"\nheaders = { authorization = "v" }\n', "conflicts with 'bearer_token'"),
        ('[backends.a]\nurl = "http://h/"\nargs = ["x"]\n', "'backends.a.args': is for stdio backends"),
        ('[backends.a]\ncommand = "x"\nbearer_token = "t"\n', "'backends.a.bearer_token': is for HTTP backends"),
        ('[backends.a]\ncommand = "x"\nenv = { "A=B" = "1" }\n', "key 'A=B' must be a variable name"),
        ('[backends.a]\ncommand = "x"\nargs = ["a\\u0000b"]\n', "'backends.a.args\\[0\\]': must not contain a NUL"),
        ('[backends.a]\ncommand = ""\n', "'backends.a.command': must be a program name"),
        ('[backends.a]\ncommand = "x"\nroots = ["/srv"]\n', r"'backends.a.roots\[0\]': must be a file:// URI, got '/srv'"),
        ('[backends.a]\ncommand = "x"\nroots = [{ name = "x" }]\n', r"'backends.a.roots\[0\]': needs 'uri'"),
        ('[backends.a]\ncommand = "x"\nrestart_initial_delay = 5\nrestart_max_delay = 1\n', "must not exceed restart_max_delay"),
        ('[backends.a]\ncommand = "x"\npool_size = 0\n', "'backends.a.pool_size': must be >= 1, got 0"),
        ('[backends."a b"]\ncommand = "x"\n', "backend names"),
        ('[backends.a]\ncommand = "x"\n[backends.b]\ncommand = "y"\nnamespace = "a"\n', "also used by"),
        ('[gateway]\npassthrough = true\n[backends.a]\ncommand = "x"\n[backends.b]\ncommand = "y"\n', "exactly one enabled"),
        ('[gateway]\nseparator = "::"\n', "'gateway.separator': must be one or more of"),
        ("[gateway]\npage_size = 0\n", "'gateway.page_size': must be >= 1"),
        ("[gateway]\nlist_timeout = -1\n", "'gateway.list_timeout': must be > 0"),
        ("[server]\nport = 70000\n", "'server.port': must be <= 65535, got 70000"),
        ("[server]\nport = -1\n", "'server.port': must be >= 0"),
        ("[server]\nheader_timeout = 0\n", "'server.header_timeout': must be > 0, got 0"),
        ("[server]\nmax_body_bytes = 0\n", "'server.max_body_bytes': must be >= 1"),
        ("[server]\npath = 'mcp'\n", "'server.path': must start with '/'"),
        ("[server]\nhost = 'a b'\n", "'server.host': must be an IP address or a host name"),
        ("[server\n", r"g.toml:1: invalid TOML: .* \(column 8\)"),
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
    with pytest.raises(ConfigError, match=r"g.toml:2: 'backends.a.url': uses \$\{HOST\}, which is not set"):
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


def test_a_disabled_backend_leaves_its_namespace_free() -> None:
    config = load('[backends.a]\ncommand = "x"\nenabled = false\n[backends.b]\ncommand = "y"\nnamespace = "a"\n')
    assert config.backends["b"].namespace == "a"


def test_roots_option() -> None:
    config = load('[backends.a]\ncommand = "x"\nroots = ["file:///srv", { uri = "file:///data", name = "data" }]\n')
    assert config.backends["a"].root_list == [{"uri": "file:///srv"}, {"uri": "file:///data", "name": "data"}]
    assert load('[backends.a]\ncommand = "x"\nroots = []\n').backends["a"].root_list == []
    assert load('[backends.a]\ncommand = "x"\n').backends["a"].root_list is None
    assert "roots [file:///srv, file:///data]" in describe(config)


# -- what this machine must provide (mcp-gateway check) --------------------------------------------


def checked(text: str) -> Config:
    return load_config_text(text, fmt="toml", source="g.toml", env={}, check_environment=True)


def test_check_environment_finds_stdio_commands_and_directories(tmp_path: pathlib.Path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("not a program")
    plain.chmod(0o644)
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    cases = {
        'command = "/nonexistent/server"': "'backends.a.command': command '/nonexistent/server' does not exist",
        f"command = {str(plain)!r}": f"'backends.a.command': command {str(plain)!r} is not executable",
        f"command = {str(tmp_path)!r}": f"'backends.a.command': command {str(tmp_path)!r} is a directory",
        'command = "./run.sh"': "'backends.a.command': command './run.sh' does not exist",  # relative to cwd, not here
        'command = "sh"\nenv = { PATH = "/nonexistent" }': "'backends.a.command': command 'sh' is not found on PATH",
        f'command = "sh"\ncwd = {str(plain)!r}': f"g.toml:3: 'backends.a.cwd': working directory {str(plain)!r} is not a directory",
    }
    for body, message in cases.items():
        with pytest.raises(ConfigError) as info:
            checked(f"[backends.a]\n{body}\n")
        assert message in str(info.value), (body, str(info.value))
        load_config_text(f"[backends.a]\n{body}\n", fmt="toml", env={})  # the file itself is fine
    for body in (f"command = {str(script)!r}", f'command = "./run.sh"\ncwd = {str(tmp_path)!r}', 'command = "sh"'):
        checked(f"[backends.a]\n{body}\n")
    checked('[backends.a]\ncommand = "no-such-binary"\nenabled = false\n')  # not run, not checked


# -- the command line: check refuses what serve would fail on, in one line -------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL
    )


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


URL = 'url = "http://127.0.0.1:9000/mcp"\n'
PY = f"command = {sys.executable!r}\n"

# (bad file, the error after "error: FILE", a legitimate variant)
CHECK_CASES = {
    "url-port-not-a-number": (
        '[backends.x]\nurl = "http://127.0.0.1:notaport/mcp"\n',
        ":2: 'backends.x.url': port 'notaport' is not a number",
        "[backends.x]\n" + URL,
    ),
    "url-port-out-of-range": (
        '[backends.x]\nurl = "http://127.0.0.1:70000/mcp"\n',
        ":2: 'backends.x.url': port 70000 is out of range (1..65535)",
        "[backends.x]\n" + URL,
    ),
    "misspelt-backends-table": (
        "[server]\nport = 0\n\n[backend.x]\n" + URL,
        ":4: unknown key 'backend' (did you mean 'backends'?)",
        "[server]\nport = 0\n\n[backends.x]\n" + URL,
    ),
    "misspelt-server-table": ("[servr]\nport = 0\n", ":1: unknown key 'servr' (did you mean 'server'?)", "[server]\nport = 0\n"),
    "url-scheme-typo": (
        '[backends.x]\nurl = "htp://127.0.0.1:9000/mcp"\n',
        ":2: 'backends.x.url': unknown URL scheme 'htp'; supported: http://, https://",
        "[backends.x]\n" + URL,
    ),
    "tls-verify-on-plain-http": (
        '[backends.x]\nurl = "http://127.0.0.1:9000/mcp"\ntls_verify = false\n',
        ":3: 'backends.x.tls_verify': is for https:// backends; this one's url is plain http://",
        '[backends.x]\nurl = "https://127.0.0.1:9000/mcp"\ntls_verify = false\n',
    ),
    "stdio-command-not-on-path": (
        '[server]\nport = 0\n[backends.x]\ncommand = "no-such-binary"\n',
        ":4: 'backends.x.command': command 'no-such-binary' is not found on PATH",
        "[server]\nport = 0\n[backends.x]\n" + PY,
    ),
    "stdio-cwd-missing": (
        "[backends.x]\n" + PY + 'cwd = "/nonexistent/dir"\n',
        ":3: 'backends.x.cwd': working directory '/nonexistent/dir' does not exist",
        "[backends.x]\n" + PY + 'cwd = "/"\n',
    ),
    "passthrough-two-backends": (
        "[gateway]\npassthrough = true\n[backends.a]\n" + URL + "[backends.b]\n" + PY,
        ":2: 'gateway.passthrough': needs exactly one enabled backend, found 2",
        "[gateway]\npassthrough = true\n[backends.a]\n" + URL + "[backends.b]\n" + PY + "enabled = false\n",
    ),
    "duplicate-namespace": (
        "[backends.a]\n" + URL + "[backends.b]\n" + PY + 'namespace = "a"\n',
        ":5: 'backends.b.namespace': namespace 'a' is also used by backend 'a'",
        "[backends.a]\n" + URL + "[backends.b]\n" + PY + 'namespace = "bee"\n',
    ),
    "listen-port-out-of-range": (
        "[server]\nport = 65536\n",
        ":2: 'server.port': must be <= 65535, got 65536",
        "[server]\nport = 65535\n",
    ),
}


@pytest.mark.parametrize("case", list(CHECK_CASES))
def test_check_refuses_with_key_and_line_and_accepts_the_fix(tmp_path: pathlib.Path, case: str) -> None:
    bad, message, good = CHECK_CASES[case]
    path = tmp_path / "gateway.toml"
    path.write_text(bad)
    assert one_error_line(run_cli("check", str(path))) == f"error: {path}{message}"
    path.write_text(good)
    ok = run_cli("check", str(path))
    assert ok.returncode == 0 and ok.stderr == "" and "Traceback" not in ok.stdout, ok.stderr
    assert ok.stdout.startswith("listen: ")


def test_check_refuses_files_it_cannot_read(tmp_path: pathlib.Path) -> None:
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"[server]\nhost = '\xff'\n")
    assert one_error_line(run_cli("check", str(binary))) == f"error: {binary}:2: not UTF-8 text (byte 0xff)"
    assert one_error_line(run_cli("check", str(tmp_path))) == f"error: {tmp_path}: cannot read: Is a directory"
    missing = tmp_path / "missing.toml"
    assert one_error_line(run_cli("check", str(missing))) == f"error: {missing}: cannot read: No such file or directory"
    json_file = tmp_path / "mcp.json"
    json_file.write_text('{"mcpServers": {\n  "x": {"command": "no-such-binary"}\n}}')
    assert one_error_line(run_cli("check", str(json_file))) == (
        f"error: {json_file}:2: 'mcpServers.x.command': command 'no-such-binary' is not found on PATH"
    )


@pytest.mark.parametrize("case", ["url-port-not-a-number", "misspelt-backends-table", "url-scheme-typo", "passthrough-two-backends"])
def test_serve_refuses_a_bad_config_in_one_line(tmp_path: pathlib.Path, case: str) -> None:
    bad, message, _ = CHECK_CASES[case]
    path = tmp_path / "gateway.toml"
    path.write_text(bad)
    assert one_error_line(run_cli("serve", "--config", str(path), "--port", "0")) == f"error: {path}{message}"


def test_serve_refuses_a_port_out_of_range() -> None:
    # Not wrapped around to another port (70000 would listen on 4464).
    proc = run_cli("serve", "--port", "70000")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "mcp-gateway serve: error: argument --port: 70000 is out of range (0..65535)"


def test_serve_names_a_missing_stdio_command_as_the_down_reason(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('[backends.x]\ncommand = "no-such-binary"\nrestart_initial_delay = 30\nrestart_max_delay = 30\n')
    child = gateway(path)
    try:
        assert "backend x: down (start failed: command 'no-such-binary' is not found on PATH)" in child.lines
        # Served once: the gateway is in its serving loop (its SIGTERM handler installed).
        health = raw_exchange(child.port, f"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1:{child.port}\r\n\r\n".encode())
        assert health.status == 200 and health.json()["backends"]["x"] == "down", health.body
        assert "Traceback" not in child.stderr_text()
    finally:
        assert child.stop() == 0


def test_a_missing_jwks_file_is_one_line_from_check_and_from_serve(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.toml"
    text = '[auth]\n[[auth.jwt]]\nissuer = "https://idp"\naudiences = ["gw"]\njwks_file = "{}"\n'
    bad.write_text(text.format(tmp_path / "missing.json"))
    for args in (("check", str(bad)), ("serve", "--config", str(bad), "--port", "0")):
        assert "missing.json" in one_error_line(run_cli(*args))
    good = tmp_path / "good.toml"
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    public = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    jwk = {**json.loads(RSAAlgorithm.to_jwk(public)), "kid": "k1", "use": "sig"}
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    good.write_text(text.format(tmp_path / "jwks.json"))
    proc = run_cli("check", str(good))
    assert proc.returncode == 0, proc.stderr


# -- traffic control (issue 16): the tables' interface and what the types cannot say ------------

TRAFFIC = """
[[limits]]
name = "per-user"
key = ["principal", "tool"]
tools = ["docs__*"]
rate = 5
burst = 10
bytes_rate = 100000

[backends.docs]
urls = ["http://127.0.0.1:9001/mcp", "http://127.0.0.1:9002/mcp"]
eject_for = 5
max_concurrency = 8
max_queue = 16
retries = 2

[backends.docs.breaker]
min_calls = 5
open_for = 2

[backends.docs.cache]
tools = ["get_*"]
ttl = 30
scope = "shared"

[backends.docs.tools.search]
alias = "find"
inject = { max_results = 10 }
defaults = { lang = "en" }
"""


def test_traffic_tables_load() -> None:
    config = load(TRAFFIC)
    limit = config.limits[0]
    assert (limit.name, limit.key, limit.tools, limit.rate, limit.calls_burst) == ("per-user", ["principal", "tool"], ["docs__*"], 5.0, 10.0)
    assert limit.bytes_capacity == 100000.0
    docs = config.backends["docs"]
    assert docs.transport == "http" and docs.url_list == ["http://127.0.0.1:9001/mcp", "http://127.0.0.1:9002/mcp"]
    assert (docs.max_concurrency, docs.max_queue, docs.retries, docs.eject_for) == (8, 16, 2, 5.0)
    assert docs.breaker is not None and (docs.breaker.min_calls, docs.breaker.open_for, docs.breaker.failure_ratio) == (5, 2.0, 0.5)
    assert docs.cache is not None and (docs.cache.tools, docs.cache.ttl, docs.cache.scope) == (["get_*"], 30.0, "shared")
    shape = docs.tools["search"]
    assert (shape.alias, shape.inject, shape.defaults) == ("find", {"max_results": 10}, {"lang": "en"})


def test_traffic_defaults() -> None:
    config = load('[[limits]]\nname = "x"\nrate = 0.5\n[backends.a]\nurl = "http://h:1/mcp"\n')
    assert config.limits[0].key == [] and config.limits[0].tools == ["*"] and config.limits[0].calls_burst == 1.0
    a = config.backends["a"]
    assert a.max_concurrency is None and a.retries == 0 and a.breaker is None and a.cache is None and a.tools == {}
    assert a.url_list == ["http://h:1/mcp"] and load('[backends.a]\ncommand = "x"\n').backends["a"].url_list == []


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[[limits]]\nname = "x"\n', "g.toml:1: 'limits[0]': give 'rate'"),
        ('[[limits]]\nname = "x"\nrate = 1\n[[limits]]\nname = "x"\nrate = 2\n', "g.toml:5: 'limits[1].name': 'x' is also the name of limit 0"),
        ('[[limits]]\nname = "x"\nbytes_rate = 1\nburst = 3\n', "'limits[0].burst': needs 'rate'"),
        ('[[limits]]\nname = "x"\nrate = 1\nbytes_burst = 3\n', "'limits[0].bytes_burst': needs 'bytes_rate'"),
        ('[[limits]]\nname = "x"\nrate = 1\nkey = ["tool", "tool"]\n', "'limits[0].key': names a part twice"),
        ('[[limits]]\nname = "x"\nrate = 1\nkey = ["user"]\n', "'limits[0].key[0]'"),
        ('[[limits]]\nname = "x"\nrate = 0\n', "'limits[0].rate'"),
        ('[[limits]]\nname = "x"\nrate = inf\n', "'limits[0].rate': must be a finite number"),
        ('[backends.a]\nurl = "http://h:1/mcp"\nurls = ["http://h:2/mcp"]\n', "give exactly one of 'url' or 'urls'"),
        ('[backends.a]\nurls = []\n', "'backends.a.urls'"),
        ('[backends.a]\nurls = ["http://h:1/mcp", "htp://h:2/mcp"]\n', "'backends.a.urls[1]'"),
        ('[backends.a]\nurls = ["http://h:1/mcp", "http://h:1/mcp"]\n', "lists a replica twice"),
        ('[backends.a]\nurl = "http://h:1/mcp"\neject_for = 3\n', "'backends.a.eject_for': is for HTTP backends with replicas"),
        ('[backends.a]\nurl = "http://h:1/mcp"\nmax_queue = 3\n', "'backends.a.max_queue': needs 'max_concurrency'"),
        ('[backends.a]\nurl = "http://h:1/mcp"\nretries = 11\n', "'backends.a.retries'"),
        ('[backends.a]\nurl = "http://h:1/mcp"\n[backends.a.breaker]\nfailure_ratio = 1.5\n', "'backends.a.breaker.failure_ratio'"),
        ('[backends.a]\nurl = "http://h:1/mcp"\n[backends.a.cache]\nscope = "global"\n', "'backends.a.cache.scope'"),
        ('[backends.a]\ncommand = "x"\n[backends.a.tools.t]\nhide = true\nalias = "u"\n', "'backends.a.tools.t.hide': a hidden tool takes no alias"),
        ('[backends.a]\ncommand = "x"\n[backends.a.tools.t]\ninject = { k = 1 }\ndefaults = { k = 2 }\n', "'backends.a.tools.t.defaults.k': is also in 'inject'"),
        ('[backends.a]\ncommand = "x"\n[backends.a.tools.t]\nalias = "u"\n[backends.a.tools.v]\nalias = "u"\n', "'u' is also the alias of tool 't'"),
        ('[backends.a]\ncommand = "x"\n[backends.a.tools.t]\nalias = "u"\n[backends.a.tools.u]\ndescription = "d"\n', "'u' is the name of another tool"),
        ('[backends.a]\ncommand = "x"\n[backends.a.tools.t]\nalias = "has space"\n', "'backends.a.tools.t.alias'"),
    ],
)
def test_traffic_errors(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(text)
    assert fragment in str(info.value)


def test_aliases_may_swap_names() -> None:
    config = load('[backends.a]\ncommand = "x"\n[backends.a.tools.t]\nalias = "u"\n[backends.a.tools.u]\nalias = "t"\n')
    assert config.backends["a"].tools["t"].alias == "u"


def test_describe_tells_traffic_options() -> None:
    text = describe(load(TRAFFIC))
    assert "limit 'per-user': 5/s burst 10 and 100000 B/s burst 100000 B per principal, tool, tools docs__*" in text
    assert "docs: http http://127.0.0.1:9001/mcp http://127.0.0.1:9002/mcp," in text
    assert "2 replicas (ejected for 5 s); max 8 in flight, 16 queued; 2 retries" in text
    assert "breaker at 50% of >= 5 calls in 10 s, open 2 s; cache get_* for 30 s per shared; shaped search as find" in text


def test_the_readmes_toml_examples_load() -> None:
    # A README example users copy must be a config the gateway takes (and fail this test when it drifts).
    import re

    blocks = re.findall(r"```toml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) >= 2
    for block in blocks:
        env = {"DOCS_TOKEN": "t", "ADMIN_TOKEN": "an-admin-token-0123", "AUDIT_KEY": "an-audit-key-0123456789"}
        load_config_text(block, fmt="toml", env=env)
