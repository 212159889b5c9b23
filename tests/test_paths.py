"""A user can never name a key outside its home, whatever the path looks like."""

from __future__ import annotations

import pytest

from sftp_gateway.errors import InvalidRequest
from sftp_gateway.paths import Jail, normalize


@pytest.mark.parametrize(
    ("path", "key"),
    [
        ("a.pdf", "incoming/alice/a.pdf"),
        ("/a.pdf", "incoming/alice/a.pdf"),
        ("../../etc/passwd", "incoming/alice/etc/passwd"),
        ("/../bob/x.pdf", "incoming/alice/bob/x.pdf"),
        ("//x//y.pdf", "incoming/alice/x/y.pdf"),
        ("./a/./../b.pdf", "incoming/alice/b.pdf"),
        ("a\\..\\..\\b.pdf", "incoming/alice/b.pdf"),
        ("cafe\u0301.pdf", "incoming/alice/caf\u00e9.pdf"),  # NFD folded to NFC
    ],
)
def test_paths_map_inside_the_home(path: str, key: str) -> None:
    assert Jail.for_home("incoming", "alice").key(path) == key


@pytest.mark.parametrize("path", ["a\x00b.pdf", "a\nb.pdf", b"\xff\xfe.pdf", "x" * 300])
def test_hostile_paths_are_refused(path: str | bytes) -> None:
    with pytest.raises(InvalidRequest):
        Jail.for_home("incoming", "alice").key(path)


def test_home_prefixes_do_not_overlap() -> None:
    alice = Jail.for_home("incoming", "alice")
    assert alice.dir_prefix("/") == "incoming/alice/"  # 'alice2/' is not under it


def test_root_is_not_a_file() -> None:
    with pytest.raises(InvalidRequest):
        Jail.for_home("", "alice").key("/")


def test_normalize_keeps_the_root() -> None:
    assert normalize("..") == "/"
    assert normalize(".") == "/"


def test_a_path_too_long_for_s3_is_refused_as_a_directory_too() -> None:
    """OPENDIR of such a path answered 'storage error (414)' after asking S3."""
    jail = Jail.for_home("incoming", "alice")
    deep = "/" + "a/" * 600
    for resolve in (jail.key, jail.dir_prefix):
        with pytest.raises(InvalidRequest, match="too long for S3"):
            resolve(deep)
    assert jail.dir_prefix("/" + "a/" * 400) == "incoming/alice/" + "a/" * 400
