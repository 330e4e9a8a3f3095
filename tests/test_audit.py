"""The audit log (``gateway.ops.audit``, ``[audit]``): an intact chain verifies, each kind of
tampering is found and named at the right record, rotation and restarts keep the chain, a full
queue drops (counted) or blocks (nothing lost), ``close()`` flushes; ``mcp-gateway audit verify``
and the ``[audit]`` table. Real files in ``tmp_path``; the writer is synchronised by ``close()``."""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import subprocess
import sys
from typing import Any

import hmac

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import AuditConfig, ConfigError, describe, load_config_text
from gateway.ops.audit import GENESIS, AuditError, AuditLog, _hasher, canonical, chain_hash, verify
from tests.support import ROOT

KEY = "k" * 32


def config(path: pathlib.Path | str, **options: Any) -> AuditConfig:
    return AuditConfig(path=str(path), **options)


def records(path: pathlib.Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def calls(path: pathlib.Path) -> list[dict[str, Any]]:
    return [r for r in records(path) if r.get("event") == "call"]


async def write_log(path: pathlib.Path, n: int, **options: Any) -> AuditLog:
    """A closed log: a start record, ``n`` calls (``tool`` t0, t1, ...), a close record."""
    audit = AuditLog(config(path, **options))
    audit.start()
    for i in range(n):
        audit.submit({"event": "call", "tool": f"t{i}", "principal": "alice"})
    await audit.close()
    return audit


def lines_of(path: pathlib.Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


# -- the chain -------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [KEY, None])
async def test_an_intact_log_verifies(tmp_path: pathlib.Path, key: str | None) -> None:
    path = tmp_path / "audit.jsonl"
    await write_log(path, 4, key=key)
    result = verify([str(path)], key.encode() if key else None)
    assert result.ok and result.exit_code == 0, result.message
    assert result.message == "ok: 6 records, chain intact"
    written = records(path)
    assert [r["seq"] for r in written] == [1, 2, 3, 4, 5, 6]
    assert written[0]["event"] == "start" and written[0]["previous"] == "none" and written[-1]["event"] == "close"
    assert [r["tool"] for r in written if r["event"] == "call"] == ["t0", "t1", "t2", "t3"]


async def test_the_chain_bytes_are_as_documented(tmp_path: pathlib.Path) -> None:
    """prev links to the hash before; hash = HMAC-SHA256(key, sorted compact JSON without hash)."""
    path = tmp_path / "audit.jsonl"
    await write_log(path, 2, key=KEY)
    prev = GENESIS
    for line in lines_of(path):
        record = orjson.loads(line)
        assert record["prev"] == prev
        body = orjson.dumps({k: v for k, v in record.items() if k != "hash"}, option=orjson.OPT_SORT_KEYS)
        assert body == canonical(record)
        assert record["hash"] == chain_hash(body, KEY.encode())
        prev = record["hash"]


@pytest.mark.parametrize(
    ("tamper", "kind", "line", "seq"),
    [
        # line n holds seq n: 1 start, 2..5 calls t0..t3, 6 close
        ("edit", "edited", 3, 3),
        ("delete", "deleted", 3, 4),
        ("swap", "reordered", 3, 4),
        ("cut", "truncated", 6, 6),
        ("drop tail", "truncated", 4, 4),
    ],
)
async def test_tampering_is_found_at_the_right_record(
    tmp_path: pathlib.Path, tamper: str, kind: str, line: int, seq: int
) -> None:
    path = tmp_path / "audit.jsonl"
    await write_log(path, 4, key=KEY)
    lines = lines_of(path)
    if tamper == "edit":
        assert b'"tool":"t1"' in lines[2]
        lines[2] = lines[2].replace(b'"tool":"t1"', b'"tool":"tX"')
    elif tamper == "delete":
        del lines[2]
    elif tamper == "swap":
        lines[2], lines[3] = lines[3], lines[2]
    elif tamper == "cut":
        lines[-1] = lines[-1][: len(lines[-1]) // 2]
    else:
        del lines[-2:]
    path.write_bytes(b"".join(lines))
    result = verify([str(path)], KEY.encode())
    assert not result.ok and result.exit_code == 1
    assert (result.kind, result.file, result.line, result.seq) == (kind, str(path), line, seq), result.message
    assert result.message.startswith(f"{path}:{line}: seq {seq}: {kind}: "), result.message


async def test_the_messages_say_what_happened(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "audit.jsonl"
    await write_log(path, 4, key=KEY)
    original = lines_of(path)
    cases = {
        "edit": "hash mismatch (edited, or the wrong key)",
        "delete": "seq 4 follows seq 2: seq 3 missing",
        "swap": "seq 4 comes before seq 3 (records out of order)",
        "cut": "the gateway may still be writing it",
        "drop tail": "without a close record: the gateway may still be writing it",
    }
    for tamper, wording in cases.items():
        lines = list(original)
        if tamper == "edit":
            lines[2] = lines[2].replace(b'"alice"', b'"mallory"')
        elif tamper == "delete":
            del lines[2]
        elif tamper == "swap":
            lines[2], lines[3] = lines[3], lines[2]
        elif tamper == "cut":
            lines[-1] = lines[-1][:20]
        else:
            del lines[-1]
        path.write_bytes(b"".join(lines))
        assert wording in verify([str(path)], KEY.encode()).message, tamper


async def test_deleting_the_first_record_is_found(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "audit.jsonl"
    await write_log(path, 2, key=KEY)
    path.write_bytes(b"".join(lines_of(path)[1:]))
    result = verify([str(path)], KEY.encode())
    assert (result.kind, result.line, result.seq) == ("deleted", 1, 2), result.message
    assert "the log starts at seq 2" in result.message


async def test_a_record_rehashed_without_the_key_breaks_the_next_link(tmp_path: pathlib.Path) -> None:
    """Editing a record of an unkeyed log and recomputing its SHA-256 is caught by the next prev."""
    path = tmp_path / "audit.jsonl"
    await write_log(path, 3)
    lines = lines_of(path)
    record = orjson.loads(lines[2])
    record["tool"] = "forged"
    record["hash"] = chain_hash(canonical(record), None)
    lines[2] = orjson.dumps(record) + b"\n"
    path.write_bytes(b"".join(lines))
    result = verify([str(path)], None)
    assert (result.kind, result.line, result.seq) == ("edited", 4, 4), result.message
    assert "prev is not the hash of seq 3" in result.message


async def test_the_wrong_key_fails(tmp_path: pathlib.Path) -> None:
    keyed, plain = tmp_path / "keyed.jsonl", tmp_path / "plain.jsonl"
    await write_log(keyed, 2, key=KEY)
    await write_log(plain, 2)
    other = verify([str(keyed)], b"another key of 32 bytes........")
    assert (other.ok, other.kind, other.line, other.exit_code) == (False, "wrong key", 1, 1), other.message
    assert "the wrong key" in other.message
    none = verify([str(keyed)], None)
    assert none.kind == "wrong key" and "no key was given" in none.message, none.message
    unkeyed = verify([str(plain)], KEY.encode())
    assert unkeyed.kind == "wrong key" and "written without a key" in unkeyed.message, unkeyed.message
    assert verify([str(keyed)], KEY.encode()).ok and verify([str(plain)], None).ok


async def test_values_json_cannot_hold_still_chain(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(config(path))
    audit.start()
    audit.submit({"event": "call", "big": 2**70, "set": {1}, "obj": object(), "text": "é\u2028", "f": 0.1 + 0.2})
    audit.submit({"event": "call", 1: "a non-string key", "hash": "submitted, discarded", "seq": -5})
    await audit.close()
    assert verify([str(path)], None).ok
    first, second = calls(path)
    assert first["big"] == str(2**70) and first["text"] == "é\u2028" and first["f"] == 0.1 + 0.2
    assert second["1"] == "a non-string key" and second["seq"] == 3 and second["hash"] != "submitted, discarded"


# -- rotation and restarts -------------------------------------------------------------------------


async def test_rotation_keeps_the_chain_across_files(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "audit.jsonl"
    await write_log(path, 40, key=KEY, max_bytes=1500)
    files = sorted(tmp_path.iterdir(), key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)
    assert len(files) >= 4 and files[-1] == path  # PATH.N ... PATH.1, PATH
    chain = [r for f in files for r in records(f)]
    assert [r["seq"] for r in chain] == list(range(1, len(chain) + 1))
    assert [r["tool"] for r in chain if r["event"] == "call"] == [f"t{i}" for i in range(40)]
    for older, newer in zip(files, files[1:]):
        last, first = records(older)[-1], records(newer)[0]
        assert last["event"] == "rotate" and first["prev"] == last["hash"]
        assert older.stat().st_size < 1500 + 2 * 300  # at most a record and the rotate record past it
    result = verify([str(path)], KEY.encode())
    assert result.ok and result.records == len(chain), result.message
    # a middle file gone is a deletion
    files[1].unlink()
    gone = verify([str(path)], KEY.encode())
    assert gone.kind == "deleted" and gone.file == str(files[2]) and gone.line == 1, gone.message


async def test_a_restart_continues_the_chain(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "audit.jsonl"
    await write_log(path, 3, key=KEY)
    before = records(path)
    await write_log(path, 2, key=KEY)
    after = records(path)
    assert after[: len(before)] == before
    again = after[len(before)]
    assert again["event"] == "start" and again["previous"] == "close"
    assert again["seq"] == before[-1]["seq"] + 1 and again["prev"] == before[-1]["hash"]
    result = verify([str(path)], KEY.encode())
    assert result.ok and result.records == len(after) == 9, result.message  # (start + 3 + close) + (start + 2 + close)


async def test_a_restart_after_a_crash_cuts_the_torn_line_and_says_so(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "audit.jsonl"
    await write_log(path, 3, key=KEY)
    lines = lines_of(path)
    torn = lines[-2][:25]
    path.write_bytes(b"".join(lines[:-2]) + torn)  # the last call half written, no close record
    await write_log(path, 1, key=KEY)
    written = records(path)
    start = written[len(lines) - 2]
    assert start["event"] == "start" and start["previous"] == "unclean" and start["discarded_bytes"] == len(torn)
    assert verify([str(path)], KEY.encode()).ok


async def test_a_log_rotated_just_before_a_stop_continues_from_the_rotated_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "audit.jsonl"
    await write_log(path, 2, key=KEY)
    path.rename(tmp_path / "audit.jsonl.1")
    path.write_bytes(b"")
    await write_log(path, 1, key=KEY)
    assert records(path)[0]["seq"] == 5 and records(path)[0]["previous"] == "close"
    assert verify([str(path)], KEY.encode()).ok


async def test_a_file_that_is_not_an_audit_log_is_refused_at_start(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text("hello\n")
    with pytest.raises(AuditError, match="not an audit record"):
        AuditLog(config(path)).start()
    assert path.read_text() == "hello\n"


async def test_a_second_writer_of_the_same_file_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "audit.jsonl"
    first = AuditLog(config(path))
    first.start()
    with pytest.raises(AuditError, match="another process is writing"):
        AuditLog(config(path)).start()
    await first.close()
    assert verify([str(path)], None).ok


# -- the queue -------------------------------------------------------------------------------------


async def test_drop_mode_counts_what_a_full_queue_drops(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(config(path, on_full="drop", queue_size=5))
    audit.start()
    with caplog.at_level(logging.WARNING, logger="gateway.audit"):
        for i in range(20):  # no await: the writer cannot run, the queue fills
            audit.submit({"event": "call", "tool": f"t{i}"})
    kept = 5 - 1  # the start record holds a place
    assert audit.dropped == 20 - kept and audit.blocked == 0
    warnings = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(warnings) == 1 and "1 records dropped" in warnings[0].getMessage()  # once a second, not per drop
    await audit.close()
    assert [r["tool"] for r in calls(path)] == [f"t{i}" for i in range(kept)]
    notice = [r for r in records(path) if r["event"] == "dropped"]
    assert len(notice) == 1 and notice[0]["count"] == audit.dropped
    assert records(path)[-1]["dropped"] == audit.dropped
    assert verify([str(path)], None).ok


async def test_block_mode_loses_nothing_when_the_queue_is_full(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(config(path, on_full="block", queue_size=3))
    audit.start()
    for i in range(50):  # no await: each time the queue is full, submit writes it
        audit.submit({"event": "call", "tool": f"t{i}"})
        assert audit.depth <= 3
    assert audit.blocked > 0 and audit.dropped == 0
    assert len(calls(path)) > 0  # written inline, before the writer ran
    await audit.close()
    assert [r["tool"] for r in calls(path)] == [f"t{i}" for i in range(50)]
    assert verify([str(path)], None).ok


async def test_close_flushes_everything_submitted(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(config(path, fsync="every"))
    audit.submit({"event": "call", "tool": "before start"})
    audit.start()
    for i in range(2000):
        audit.submit({"event": "call", "tool": f"t{i}"})
    assert audit.depth == 2002  # start, the early one, the 2000: nothing written yet
    await audit.close()
    assert audit.depth == 0
    assert [r["tool"] for r in calls(path)] == ["before start"] + [f"t{i}" for i in range(2000)]
    assert records(path)[0]["event"] == "start" and records(path)[-1]["event"] == "close"
    # submitted after close: written at once, and the log still ends with a close record
    audit.submit({"event": "call", "tool": "late"})
    assert calls(path)[-1]["tool"] == "late" and records(path)[-1]["event"] == "close"
    assert verify([str(path)], None).ok


async def test_flush_sync_writes_what_is_queued(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(config(path))
    audit.start()
    audit.submit({"event": "call", "tool": "t0"})
    audit.flush_sync()
    assert [r["tool"] for r in calls(path)] == ["t0"] and audit.depth == 0
    await audit.close()
    assert verify([str(path)], None).ok


async def test_fsync_never_never_syncs(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    await write_log(tmp_path / "never.jsonl", 3, fsync="never")
    assert synced == []
    await write_log(tmp_path / "interval.jsonl", 3)
    assert synced  # close() syncs


async def test_stdout(capfd: pytest.CaptureFixture[str], tmp_path: pathlib.Path) -> None:
    await write_log(pathlib.Path("-"), 2)
    out = capfd.readouterr().out
    copy = tmp_path / "copy.jsonl"
    copy.write_text(out)
    assert [r["tool"] for r in calls(copy)] == ["t0", "t1"]
    assert verify([str(copy)], None).ok


# -- arguments -------------------------------------------------------------------------------------


async def test_arguments_digest_and_full_with_redaction(tmp_path: pathlib.Path) -> None:
    args = {"q": "x", "password": "hunter2", "nested": [{"password": "p2", "keep": 1}]}
    redacted = {"q": "x", "password": "***", "nested": [{"password": "***", "keep": 1}]}
    digest, full = tmp_path / "digest.jsonl", tmp_path / "full.jsonl"
    for path, mode in ((digest, "digest"), (full, "full")):
        audit = AuditLog(config(path, arguments=mode, redact=["password"]))
        audit.start()
        audit.submit({"event": "call", "arguments": args})
        audit.submit({"event": "call", "arguments": msgspec.Raw(orjson.dumps(args))})
        await audit.close()
        assert verify([str(path)], None).ok
    assert args["password"] == "hunter2"  # the caller's arguments are not changed
    expected = hashlib.sha256(orjson.dumps(redacted, option=orjson.OPT_SORT_KEYS)).hexdigest()
    for record in calls(digest):
        assert record["arguments_sha256"] == expected and "arguments" not in record
    for record in calls(full):
        assert record["arguments"] == redacted
    assert b"hunter2" not in digest.read_bytes() + full.read_bytes()


# -- mcp-gateway audit verify ----------------------------------------------------------------------


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "audit", "verify", *args],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, **env}, timeout=60,
    )


async def test_cli_verify(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "audit.jsonl"
    await write_log(path, 3, key=KEY)
    ok = cli(str(path), "--key-env", "MY_AUDIT_KEY", MY_AUDIT_KEY=KEY)
    assert (ok.returncode, ok.stdout) == (0, "ok: 5 records, chain intact\n"), ok.stderr
    default = cli(str(path), MCP_GATEWAY_AUDIT_KEY=KEY)
    assert default.returncode == 0, default.stdout
    wrong = cli(str(path), MCP_GATEWAY_AUDIT_KEY="not the key at all")
    assert wrong.returncode == 1 and "wrong key" in wrong.stdout, wrong.stdout
    lines = lines_of(path)
    lines[1] = lines[1].replace(b'"alice"', b'"bob"')
    path.write_bytes(b"".join(lines))
    edited = cli(str(path), MCP_GATEWAY_AUDIT_KEY=KEY)
    assert edited.returncode == 1 and edited.stdout == f"{path}:2: seq 2: edited: hash mismatch (edited, or the wrong key)\n"


async def test_cli_verify_cannot_check(tmp_path: pathlib.Path) -> None:
    missing = cli(str(tmp_path / "nothing.jsonl"))
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.startswith(f"error: {tmp_path / 'nothing.jsonl'}: cannot read: ")
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text('{"not": "a record"}\n')
    bad = cli(str(garbage))
    assert bad.returncode == 2 and f"{garbage}:1: malformed: not an audit record" in bad.stderr, bad.stderr
    for run in (missing, bad):
        assert "Traceback" not in run.stderr and len(run.stderr.splitlines()) == 1


# -- [audit] ---------------------------------------------------------------------------------------


def load(text: str, **env: str) -> Any:
    return load_config_text(text, fmt="toml", source="g.toml", env=env)


def test_a_valid_audit_table_loads() -> None:
    config = load(
        '[audit]\npath = "/var/log/gw.jsonl"\nkey = "${AUDIT_KEY}"\non_full = "drop"\nqueue_size = 100\n'
        'fsync = "every"\nmax_bytes = 1000000\nredact = ["password"]\narguments = "full"\n',
        AUDIT_KEY="s3cret-key-of-32-characters-long",
    )
    audit = config.audit
    assert audit.key == "s3cret-key-of-32-characters-long" and audit.on_full == "drop" and audit.queue_size == 100
    assert audit.fsync == "every" and audit.max_bytes == 1_000_000 and audit.redact == ["password"]
    text = describe(config)
    assert "audit: /var/log/gw.jsonl, chain HMAC-SHA256 (key ***)" in text and "s3cret" not in text
    defaults = load('[audit]\npath = "a.jsonl"\n').audit
    assert (defaults.on_full, defaults.queue_size, defaults.fsync, defaults.fsync_interval) == ("block", 10_000, "interval", 1.0)
    assert (defaults.key, defaults.max_bytes, defaults.redact, defaults.arguments) == (None, None, [], "digest")
    assert load("").audit is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[audit]\npath = "a"\non_full = "wait"\n', "g.toml:3: 'audit.on_full': must be one of 'block', 'drop', got 'wait'"),
        ('[audit]\npath = "a"\nonfull = "drop"\n', "g.toml:3: unknown key 'audit.onfull' (did you mean 'on_full'?)"),
        ("[audit]\nqueue_size = 1\n", "g.toml:1: 'audit': needs 'path'"),
        ('[audit]\npath = "a"\nqueue_size = 0\n', "g.toml:3: 'audit.queue_size': must be >= 1"),
        ('[audit]\npath = "a"\nfsync = "always"\n', "g.toml:3: 'audit.fsync': must be one of 'every', 'interval', 'never'"),
        ('[audit]\npath = "a"\nfsync = "never"\nfsync_interval = 5\n', "g.toml:4: 'audit.fsync_interval': is for fsync = \"interval\""),
        ('[audit]\npath = "-"\nmax_bytes = 10\n', "g.toml:3: 'audit.max_bytes': cannot rotate stdout"),
        ('[audit]\npath = "a"\narguments = "none"\n', "g.toml:3: 'audit.arguments': must be one of 'digest', 'full'"),
    ],
)
def test_audit_config_errors(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(text)
    message = str(info.value)
    assert message.startswith(expected) and "\n" not in message, message


def test_the_key_is_never_shown_in_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        load('[audit]\npath = "a"\nkey = "${K}"\n', K="s3cret\x00-with-a-nul-in-it")
    assert "'audit.key'" in str(info.value) and "s3cret" not in str(info.value)


async def test_a_closed_log_hands_later_records_to_its_successor(tmp_path: pathlib.Path) -> None:
    """A reload's swap: records submitted to the old log after its close() land in the new one."""
    path = tmp_path / "audit.jsonl"
    old = await write_log(path, 1, key=KEY)
    new = AuditLog(config(path, key=KEY))
    new.start()
    old.successor = new
    old.submit({"event": "call", "tool": "late", "principal": "alice"})
    await new.close()
    assert [r["tool"] for r in calls(path)] == ["t0", "late"]
    assert verify([str(path)], KEY.encode()).ok


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=16, max_size=200), st.binary(max_size=2000))
def test_the_writers_mac_is_hmac_sha256(key: bytes, body: bytes) -> None:
    # The writer keys two SHA-256 states once; verify uses the standard library's HMAC. Keys
    # longer than the 64-byte block are hashed first (RFC 2104), which this covers too.
    assert _hasher(key)(body) == hmac.new(key, body, "sha256").hexdigest() == chain_hash(body, key)
    assert _hasher(None)(body) == hashlib.sha256(body).hexdigest() == chain_hash(body, None)
