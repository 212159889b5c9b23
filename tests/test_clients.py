"""The client matrix: every SFTP/SCP client people really use, driven for real.

Each test starts a gateway and runs the real client binary (OpenSSH scp, lftp, curl,
PuTTY's psftp/pscp, rclone) or library (paramiko), then checks what landed: the object's
SHA-256, its metadata and a completed catalog row. Clients that are not installed are
skipped (scripts/install-test-deps installs them). docs/clients.md is the resulting matrix.

A failure here quotes the client's own output: that is the support ticket a user would
file, so keep it in the report when a test fails.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import paramiko
import pytest

from tests.helpers import MIB, SSH_OPTIONS, RunningGateway, make_pdf, sha256_file
from tests.test_scp import assert_landed

SIZE = 20 * MIB
MTIME = 1_600_000_000
TIMEOUT = 180

# -- shared sources and helpers --------------------------------------------------------------


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One 20 MB PDF and one empty .pdf, made once for the whole module."""
    base = tmp_path_factory.mktemp("sources")
    big = make_pdf(base / "big.pdf", SIZE)
    empty = make_pdf(base / "empty.pdf", 0)
    for path in (big, empty):
        os.utime(path, (MTIME, MTIME))
    return {"big": big, "empty": empty}


def need(*commands: str) -> None:
    """Skip when a client binary is absent (scripts/install-test-deps installs it)."""
    for command in commands:
        if shutil.which(command) is None:
            pytest.skip(f"{command} is not installed (run scripts/install-test-deps)")


def run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a client; fail with its full output, so a report can quote it."""
    result = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise AssertionError(
            f"{args[0]} exited {result.returncode}\nstdout: {result.stdout}\n"
            f"stderr: {result.stderr}"
        )
    return result


def copy_as(source: Path, directory: Path, name: str) -> Path:
    """The same bytes (and mtime) under another local name."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    shutil.copy2(source, target)
    return target


@contextmanager
def sftp_client(running: RunningGateway) -> Iterator[paramiko.SFTPClient]:
    """paramiko's SFTPClient logged in as alice."""
    client = running.ssh_client()
    try:
        sftp = client.open_sftp()
        try:
            yield sftp
        finally:
            sftp.close()
    finally:
        client.close()


def remote_mtime(running: RunningGateway, path: str) -> int | None:
    """The mtime STAT returns for a path."""
    with sftp_client(running) as sftp:
        return sftp.stat(path).st_mtime


def host_key_fingerprints(running: RunningGateway, kind: str = "") -> list[str]:
    """SHA256 fingerprints of the gateway's host keys, as PuTTY's -hostkey takes them."""
    prints = []
    for pub in sorted(
        Path(running.settings.server.host_keys_dir).glob(f"*{kind}*.pub" if kind else "*.pub")
    ):
        blob = base64.b64decode(pub.read_text().split()[1])
        digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
        prints.append(f"SHA256:{digest}")
    return prints


def ssh_args(running: RunningGateway) -> list[str]:
    return [*SSH_OPTIONS, "-i", str(running.key_path)]


# -- OpenSSH scp, SFTP mode (the default since OpenSSH 9.0) ----------------------------------


def scp_sftp(running: RunningGateway, *args: str) -> subprocess.CompletedProcess[str]:
    """scp in its default SFTP mode; exit status 0 needs the server's exit-status."""
    need("scp")
    return run(["scp", *ssh_args(running), "-P", str(running.port), *args])


def test_scp_sftp_mode_uploads_pdf_and_empty_file(gateway, sources) -> None:
    scp_sftp(gateway, str(sources["big"]), str(sources["empty"]), "alice@127.0.0.1:")
    assert_landed(gateway, "big.pdf", sources["big"])
    assert_landed(gateway, "empty.pdf", sources["empty"])
    assert gateway.open_multipart_uploads() == []


def test_scp_sftp_mode_second_copy_overwrites_cleanly(gateway, sources, tmp_path) -> None:
    """scp opens WRITE|CREAT without TRUNC: a shorter second copy must not keep a tail."""
    scp_sftp(gateway, str(sources["big"]), "alice@127.0.0.1:same.pdf")
    shorter = make_pdf(tmp_path / "shorter.pdf", 3 * MIB)
    scp_sftp(gateway, str(shorter), "alice@127.0.0.1:same.pdf")
    assert_landed(gateway, "same.pdf", shorter)
    rows = gateway.catalog.uploads_for_key(gateway.bucket, gateway.key_for("same.pdf"))
    assert [r.status for r in rows] == ["completed", "completed"]
    assert gateway.open_multipart_uploads() == []


def test_scp_sftp_mode_recursive_with_times(gateway, sources, tmp_path) -> None:
    tree = tmp_path / "tree"
    big = copy_as(sources["big"], tree, "a.pdf")
    empty = copy_as(sources["empty"], tree / "sub", "e.pdf")
    scp_sftp(gateway, "-r", "-p", str(tree), "alice@127.0.0.1:")
    assert_landed(gateway, "tree/a.pdf", big)
    assert_landed(gateway, "tree/sub/e.pdf", empty)
    assert remote_mtime(gateway, "tree/a.pdf") == MTIME
    assert remote_mtime(gateway, "tree/sub/e.pdf") == MTIME


def test_scp_sftp_mode_downloads(gateway, sources, tmp_path) -> None:
    gateway.sftp(f"put {sources['big']} down.pdf\n")
    scp_sftp(gateway, "alice@127.0.0.1:down.pdf", str(tmp_path / "back.pdf"))
    assert sha256_file(tmp_path / "back.pdf") == sha256_file(sources["big"])


# -- lftp ------------------------------------------------------------------------------------


def lftp(running: RunningGateway, commands: str) -> subprocess.CompletedProcess[str]:
    need("lftp", "ssh")
    connect = " ".join(["ssh", "-a", "-x", *ssh_args(running)])
    script = (
        f"set sftp:connect-program '{connect}'; set net:max-retries 1; "
        f"open -u alice, sftp://127.0.0.1:{running.port}; {commands}"
    )
    return run(["lftp", "-c", script])


def test_lftp_put_pdf_and_empty_file(gateway, sources) -> None:
    lftp(gateway, f"put {sources['big']} -o lftp.pdf; put {sources['empty']} -o lftp-empty.pdf")
    assert_landed(gateway, "lftp.pdf", sources["big"])
    assert_landed(gateway, "lftp-empty.pdf", sources["empty"])


def test_lftp_download(gateway, sources, tmp_path) -> None:
    gateway.sftp(f"put {sources['big']} down.pdf\n")
    lftp(gateway, f"get down.pdf -o {tmp_path / 'back.pdf'}")
    assert sha256_file(tmp_path / "back.pdf") == sha256_file(sources["big"])


def test_lftp_mirror_reverse_uploads_a_tree(gateway, sources, tmp_path) -> None:
    tree = tmp_path / "local"
    big = copy_as(sources["big"], tree, "a.pdf")
    empty = copy_as(sources["empty"], tree / "sub", "e.pdf")
    lftp(gateway, f"mirror -R {tree} mirrored")
    assert_landed(gateway, "mirrored/a.pdf", big)
    assert_landed(gateway, "mirrored/sub/e.pdf", empty)


# -- curl (libssh2) ----------------------------------------------------------------------------


def curl(running: RunningGateway, *args: str) -> subprocess.CompletedProcess[str]:
    need("curl")
    if "sftp" not in run(["curl", "-V"]).stdout.split("Protocols:", 1)[-1]:
        pytest.skip("this curl is built without sftp")
    public = running.key_path.with_suffix(".pub")
    # libssh2 negotiates the ed25519 host key here: pin it, as a careful user would.
    [pin] = [fp for fp in host_key_fingerprints(running, "ed25519")]
    base = ["curl", "-sS", "--key", str(running.key_path), "--pubkey", str(public)]
    base += ["--hostpubsha256", pin.removeprefix("SHA256:")]
    return run([*base, "-u", "alice:", *args])


def curl_url(running: RunningGateway, path: str) -> str:
    return f"sftp://127.0.0.1:{running.port}/{path}"


def test_curl_uploads_pdf_and_empty_file(gateway, sources) -> None:
    curl(gateway, "-T", str(sources["big"]), curl_url(gateway, "curl.pdf"))
    curl(gateway, "-T", str(sources["empty"]), curl_url(gateway, "curl-empty.pdf"))
    assert_landed(gateway, "curl.pdf", sources["big"])
    assert_landed(gateway, "curl-empty.pdf", sources["empty"])


def test_curl_download(gateway, sources, tmp_path) -> None:
    gateway.sftp(f"put {sources['big']} down.pdf\n")
    curl(gateway, "-o", str(tmp_path / "back.pdf"), curl_url(gateway, "down.pdf"))
    assert sha256_file(tmp_path / "back.pdf") == sha256_file(sources["big"])


def test_curl_append_continues_the_file(gateway, tmp_path) -> None:
    first = make_pdf(tmp_path / "first.pdf", 6 * MIB)
    second = tmp_path / "second.bin"
    second.write_bytes(os.urandom(3 * MIB))
    whole = tmp_path / "whole.pdf"
    whole.write_bytes(first.read_bytes() + second.read_bytes())

    curl(gateway, "-T", str(first), curl_url(gateway, "grow.pdf"))
    curl(gateway, "--append", "-T", str(second), curl_url(gateway, "grow.pdf"))
    assert_landed(gateway, "grow.pdf", whole)


# -- PuTTY: psftp / pscp (the SSH engine of WinSCP) ----------------------------------------


def putty_key(running: RunningGateway) -> Path:
    """The user's OpenSSH key converted to PuTTY's .ppk."""
    need("puttygen")
    ppk = running.key_path.with_suffix(".ppk")
    if not ppk.exists():
        run(["puttygen", str(running.key_path), "-O", "private", "-o", str(ppk)])
    return ppk


def putty_args(running: RunningGateway) -> list[str]:
    pins = [arg for fp in host_key_fingerprints(running) for arg in ("-hostkey", fp)]
    return ["-batch", *pins, "-i", str(putty_key(running)), "-P", str(running.port)]


def psftp(running: RunningGateway, script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """psftp with a batch script; -be goes on after a failing command (WinSCP's `rm`)."""
    need("psftp")
    batch = cwd / "psftp.batch"
    batch.write_text(script)
    args = ["psftp", *putty_args(running), "-b", str(batch), "-be", "alice@127.0.0.1"]
    return run(args, cwd=cwd)


def winscp_upload(running: RunningGateway, source: Path, name: str, cwd: Path) -> str:
    """WinSCP's exact sequence for a file over 100 KiB: upload as name.filepart, remove
    the target, rename .filepart to it (its SETSTAT of the mtime comes after, separately)."""
    result = psftp(
        running,
        f'put "{source}" "{name}.filepart"\nrm "{name}"\nmv "{name}.filepart" "{name}"\n',
        cwd,
    )
    return result.stdout + result.stderr


def test_psftp_winscp_filepart_sequence_lands_without_a_copy(
    gateway, sources, tmp_path, monkeypatch
) -> None:
    """The .filepart streams to the final key from the start: the rename copies nothing."""
    copies: list[tuple[object, ...]] = []
    real_copy = gateway.storage.copy

    def spy(*args: object, **kwargs: object) -> object:
        copies.append(args)
        return real_copy(*args, **kwargs)

    monkeypatch.setattr(gateway.storage, "copy", spy)
    winscp_upload(gateway, sources["big"], "winscp.pdf", tmp_path)
    winscp_upload(gateway, sources["empty"], "winscp-empty.pdf", tmp_path)

    assert_landed(gateway, "winscp.pdf", sources["big"])
    assert_landed(gateway, "winscp-empty.pdf", sources["empty"])
    assert not gateway.object_exists(gateway.key_for("winscp.pdf.filepart"))
    assert copies == []
    assert gateway.open_multipart_uploads() == []


def test_psftp_winscp_sequence_overwrites_an_existing_file(gateway, sources, tmp_path) -> None:
    gateway.sftp(f"put {sources['big']} again.pdf\n")
    smaller = make_pdf(tmp_path / "smaller.pdf", 300 * 1024)
    winscp_upload(gateway, smaller, "again.pdf", tmp_path)
    assert_landed(gateway, "again.pdf", smaller)
    assert not gateway.object_exists(gateway.key_for("again.pdf.filepart"))


def test_winscp_sets_the_mtime_after_the_rename(gateway, sources, tmp_path) -> None:
    """psftp has no command that sets times; WinSCP's last step (SETSTAT of the mtime on
    the final name) is replayed with paramiko, on the file psftp just renamed."""
    source = make_pdf(tmp_path / "timed.pdf", 300 * 1024)  # over 100 KiB: a .filepart
    winscp_upload(gateway, source, "timed.pdf", tmp_path)
    with sftp_client(gateway) as sftp:
        sftp.utime("timed.pdf", (MTIME, MTIME))
        assert sftp.stat("timed.pdf").st_mtime == MTIME
    [row] = gateway.catalog.uploads_for_key(gateway.bucket, gateway.key_for("timed.pdf"))
    assert row.mtime == MTIME


def test_pscp_preserves_the_mtime(gateway, sources, tmp_path) -> None:
    """pscp (PuTTY's scp, SFTP underneath) -p: the time WinSCP's 'preserve timestamp' sets."""
    need("pscp")
    source = copy_as(make_pdf(tmp_path / "p.pdf", 1 * MIB), tmp_path / "up", "p.pdf")
    os.utime(source, (MTIME, MTIME))
    run(["pscp", "-sftp", "-p", *putty_args(gateway), str(source), "alice@127.0.0.1:p.pdf"])
    assert_landed(gateway, "p.pdf", source)
    assert remote_mtime(gateway, "p.pdf") == MTIME


def test_psftp_downloads(gateway, sources, tmp_path) -> None:
    gateway.sftp(f"put {sources['big']} down.pdf\n")
    psftp(gateway, f'get down.pdf "{tmp_path / "back.pdf"}"\n', tmp_path)
    assert sha256_file(tmp_path / "back.pdf") == sha256_file(sources["big"])


# -- rclone ------------------------------------------------------------------------------------


def rclone(
    running: RunningGateway, *args: str, shell_type: str | None = "none"
) -> subprocess.CompletedProcess[str]:
    """rclone with an sftp remote `gw` from env vars only (no config file)."""
    need("rclone")
    env = {
        **os.environ,
        "RCLONE_CONFIG": os.devnull,
        "RCLONE_CONFIG_GW_TYPE": "sftp",
        "RCLONE_CONFIG_GW_HOST": "127.0.0.1",
        "RCLONE_CONFIG_GW_PORT": str(running.port),
        "RCLONE_CONFIG_GW_USER": "alice",
        "RCLONE_CONFIG_GW_KEY_FILE": str(running.key_path),
        "RCLONE_CONFIG_GW_SET_MODTIME": "true",
    }
    if shell_type:
        env["RCLONE_CONFIG_GW_SHELL_TYPE"] = shell_type
    return run(["rclone", *args], env=env)


def test_rclone_copy_then_setstat_and_stat(gateway, sources, tmp_path) -> None:
    local = tmp_path / "local"
    copy_as(sources["big"], local, "r.pdf")
    copy_as(sources["empty"], local, "r-empty.pdf")

    rclone(gateway, "copy", "--sftp-set-modtime", str(local), "gw:rc")

    assert_landed(gateway, "rc/r.pdf", sources["big"])
    assert_landed(gateway, "rc/r-empty.pdf", sources["empty"])
    listing = rclone(gateway, "lsl", "gw:rc").stdout
    lines = {line.split()[-1]: line.split() for line in listing.splitlines() if line.strip()}
    assert lines["r.pdf"][0] == str(SIZE) and lines["r-empty.pdf"][0] == "0"
    assert lines["r.pdf"][1] == "2020-09-13"  # MTIME, kept by SETSTAT and returned by STAT
    assert remote_mtime(gateway, "rc/r.pdf") == MTIME
    rclone(gateway, "copy", "gw:rc/r.pdf", str(tmp_path / "back"))
    assert sha256_file(tmp_path / "back" / "r.pdf") == sha256_file(sources["big"])


def test_rclone_hash_probes_are_refused_and_the_copy_goes_on(gateway, tmp_path) -> None:
    """Without shell_type rclone runs `echo`, `md5sum`, ... over exec: refused, not fatal."""
    (tmp_path / "local").mkdir()
    source = make_pdf(tmp_path / "local" / "probe.pdf", 1000)
    result = rclone(gateway, "copy", "-vv", str(tmp_path / "local"), "gw:probe", shell_type=None)
    assert "is not available" in result.stderr  # rclone logs our refusal message
    assert_landed(gateway, "probe/probe.pdf", source)


# -- paramiko ----------------------------------------------------------------------------------


def test_paramiko_put_and_putfo(gateway, sources) -> None:
    with sftp_client(gateway) as sftp:
        sftp.put(str(sources["big"]), "put.pdf")
        sftp.putfo(io.BytesIO(b""), "putfo-empty.pdf")
        with open(sources["big"], "rb") as stream:
            sftp.putfo(stream, "putfo.pdf")
    assert_landed(gateway, "put.pdf", sources["big"])
    assert_landed(gateway, "putfo-empty.pdf", sources["empty"])
    assert_landed(gateway, "putfo.pdf", sources["big"])
    assert gateway.open_multipart_uploads() == []


def test_paramiko_get(gateway, sources, tmp_path) -> None:
    gateway.sftp(f"put {sources['big']} down.pdf\n")
    with sftp_client(gateway) as sftp:
        sftp.get("down.pdf", str(tmp_path / "back.pdf"))
    assert sha256_file(tmp_path / "back.pdf") == sha256_file(sources["big"])


def test_paramiko_append_mode_continues_the_file(gateway, tmp_path) -> None:
    first = make_pdf(tmp_path / "first.pdf", 6 * MIB)
    tail = os.urandom(2 * MIB)
    whole = tmp_path / "whole.pdf"
    whole.write_bytes(first.read_bytes() + tail)
    with sftp_client(gateway) as sftp:
        sftp.put(str(first), "grow.pdf")
        with sftp.open("grow.pdf", "a") as handle:
            handle.write(tail)
    assert_landed(gateway, "grow.pdf", whole)


# -- a client that writes out of order (asyncssh, Go, Node ssh2 fastPut, WS_FTP) -------------


def write_in_order(sftp: paramiko.SFTPClient, path: str, blocks: list[tuple[int, bytes]]) -> None:
    """WRITE requests at explicit offsets, in exactly the order given, each acknowledged."""
    with sftp.open(path, "wb", bufsize=0) as handle:
        handle.set_pipelined(False)
        for offset, data in blocks:
            handle.seek(offset)
            handle.write(data)


def blocks_of(source: Path, size: int = 32 * 1024) -> list[tuple[int, bytes]]:
    data = source.read_bytes()
    return [(offset, data[offset : offset + size]) for offset in range(0, len(data), size)]


def test_out_of_order_writes_within_the_window(gateway, sources) -> None:
    """Each group of 16 blocks (512 KiB) is sent backwards, as concurrent writers do."""
    blocks = blocks_of(sources["big"])
    shuffled = [b for i in range(0, len(blocks), 16) for b in reversed(blocks[i : i + 16])]
    with sftp_client(gateway) as sftp:
        write_in_order(sftp, "shuffled.pdf", shuffled)
    assert_landed(gateway, "shuffled.pdf", sources["big"])
    assert gateway.open_multipart_uploads() == []


def test_out_of_order_writes_far_ahead_of_the_stream(gateway, sources) -> None:
    """The last 4 MiB first, then the rest: beyond any in-memory window (spilled)."""
    blocks = blocks_of(sources["big"])
    tail = 4 * MIB // (32 * 1024)
    with sftp_client(gateway) as sftp:
        write_in_order(sftp, "far.pdf", blocks[-tail:] + blocks[:-tail])
    assert_landed(gateway, "far.pdf", sources["big"])
    assert gateway.open_multipart_uploads() == []


# -- resuming an interrupted upload (WinSCP's and psftp's `reput`) ---------------------------


def interrupt_upload(running: RunningGateway, source: Path, path: str, sent: int) -> int:
    """Send the first `sent` bytes (each WRITE acknowledged), then drop the connection
    without a CLOSE; returns the size the gateway kept for a resume."""
    data = source.read_bytes()[:sent]
    client = running.ssh_client()
    handle = client.open_sftp().open(path, "wb", bufsize=0)
    handle.set_pipelined(False)
    for offset in range(0, len(data), 32 * 1024):
        handle.write(data[offset : offset + 32 * 1024])
    transport = client.get_transport()
    assert transport is not None and transport.sock is not None
    transport.sock.close()  # the network dies: no CLOSE, no channel close
    key = running.key_for(path)
    for _ in range(300):
        rows = running.catalog.uploads_for_key(running.bucket, key)
        if rows and rows[0].status == "interrupted":
            return rows[0].size
        time.sleep(0.1)
    raise AssertionError(f"upload of {path} was not kept for a resume: {rows}")


def test_stat_based_resume_continues_an_interrupted_upload(gateway, sources) -> None:
    """WinSCP's resume: STAT the partial file, reopen it without TRUNC, write from there."""
    kept = interrupt_upload(gateway, sources["big"], "resumed.pdf", 12 * MIB)
    assert 0 < kept <= 12 * MIB
    data = sources["big"].read_bytes()
    with sftp_client(gateway) as sftp:
        size = sftp.stat("resumed.pdf").st_size
        assert size == kept
        with sftp.open("resumed.pdf", "r+", bufsize=0) as handle:
            handle.seek(size)
            handle.write(data[size:])
    assert_landed(gateway, "resumed.pdf", sources["big"])
    assert gateway.open_multipart_uploads() == []


def test_psftp_reput_resumes_an_interrupted_upload(gateway, sources, tmp_path) -> None:
    kept = interrupt_upload(gateway, sources["big"], "reput.pdf", 12 * MIB)
    result = psftp(gateway, f'reput "{sources["big"]}" reput.pdf\n', tmp_path)
    assert_landed(gateway, "reput.pdf", sources["big"])
    assert f"restarting at file position {kept}" in result.stdout


def test_lftp_put_continue_resumes_an_interrupted_upload(gateway, sources) -> None:
    kept = interrupt_upload(gateway, sources["big"], "lftp-resume.pdf", 12 * MIB)
    assert kept > 0
    lftp(gateway, f"put -c {sources['big']} -o lftp-resume.pdf")
    assert_landed(gateway, "lftp-resume.pdf", sources["big"])
    assert gateway.open_multipart_uploads() == []
    [row] = gateway.catalog.uploads_for_key(gateway.bucket, gateway.key_for("lftp-resume.pdf"))
    assert row.status == "completed"  # the same upload, continued: not aborted and redone


def test_curl_continue_at_resumes_an_interrupted_upload(gateway, sources) -> None:
    kept = interrupt_upload(gateway, sources["big"], "curl-resume.pdf", 12 * MIB)
    assert kept > 0
    curl(gateway, "-C", "-", "-T", str(sources["big"]), curl_url(gateway, "curl-resume.pdf"))
    assert_landed(gateway, "curl-resume.pdf", sources["big"])
    assert gateway.open_multipart_uploads() == []
    [row] = gateway.catalog.uploads_for_key(gateway.bucket, gateway.key_for("curl-resume.pdf"))
    assert row.status == "completed"  # the same upload, continued: not aborted and redone
