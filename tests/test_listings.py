"""A session's STATs in a burst are answered from one listing, never wrong about its own
changes, and at most `ttl` late about other sessions' (sftp_gateway/listings.py)."""

from __future__ import annotations

from collections import Counter

from sftp_gateway.listings import BURST, MAX_ENTRIES, RecentListings
from sftp_gateway.storage.memory import MemoryStorage

HOME = "incoming/alice/"


def counting_storage() -> MemoryStorage:
    """MemoryStorage counts every operation in `calls`; lookups are what STAT costs."""
    return MemoryStorage()


def lookups(storage: MemoryStorage) -> Counter[str]:
    return Counter({k: v for k, v in storage.calls.items() if k in ("probe", "list_dir")})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def put(storage: MemoryStorage, key: str, body: bytes = b"%PDF-1.4 x") -> None:
    storage.put(key, body, {}, "application/pdf")


def test_a_burst_of_stats_in_one_directory_costs_one_listing() -> None:
    storage, clock = counting_storage(), Clock()
    for i in range(5):
        put(storage, f"{HOME}old-{i}.pdf")
    recent = RecentListings(storage, ttl=2.0, clock=clock)

    answers = [recent.probe(f"{HOME}new-{i}.pdf") for i in range(100)]
    found = recent.probe(f"{HOME}old-3.pdf")

    assert not any(a.exists for a in answers)
    assert found.file is not None and found.file.size == len(b"%PDF-1.4 x")
    assert lookups(storage) == Counter(probe=BURST - 1, list_dir=1)


def test_names_the_session_changed_are_always_asked_of_s3() -> None:
    storage, clock = counting_storage(), Clock()
    recent = RecentListings(storage, ttl=2.0, clock=clock)
    for i in range(BURST):
        recent.probe(f"{HOME}a-{i}.pdf")  # the directory is now listed (empty)

    recent.touched(f"{HOME}a-1.pdf")
    put(storage, f"{HOME}a-1.pdf")  # the session's own upload completes

    assert recent.probe(f"{HOME}a-1.pdf").file is not None
    assert not recent.probe(f"{HOME}a-2.pdf").exists


def test_another_sessions_change_shows_once_the_listing_is_ttl_old() -> None:
    storage, clock = counting_storage(), Clock()
    recent = RecentListings(storage, ttl=2.0, clock=clock)
    for i in range(BURST):
        recent.probe(f"{HOME}b-{i}.pdf")

    put(storage, f"{HOME}b-0.pdf")  # someone else, elsewhere
    clock.now += 1.9
    stale = recent.probe(f"{HOME}b-0.pdf")
    clock.now += 0.2
    fresh = recent.probe(f"{HOME}b-0.pdf")

    assert not stale.exists  # the documented bound: up to ttl late
    assert fresh.file is not None


def test_directories_are_seen_as_directories() -> None:
    storage, clock = counting_storage(), Clock()
    put(storage, f"{HOME}sub/inner.pdf")
    recent = RecentListings(storage, ttl=2.0, clock=clock)
    probes = [recent.probe(f"{HOME}sub") for _ in range(BURST + 1)]
    assert all(p.is_dir and p.file is None for p in probes)
    assert storage.calls["list_dir"] == 1


def test_a_directory_larger_than_one_page_is_asked_per_name() -> None:
    storage, clock = counting_storage(), Clock()
    for i in range(MAX_ENTRIES + 1):
        put(storage, f"{HOME}many/f-{i:05d}.pdf", b"%PDF")
    recent = RecentListings(storage, ttl=2.0, clock=clock)

    answers = [recent.probe(f"{HOME}many/f-{i:05d}.pdf") for i in range(20)]

    assert all(a.file is not None for a in answers)
    assert storage.calls["list_dir"] == 1  # tried once, then not for a long while
    assert storage.calls["probe"] == 20


def test_zero_ttl_always_asks_s3() -> None:
    storage, clock = counting_storage(), Clock()
    recent = RecentListings(storage, ttl=0, clock=clock)
    for i in range(10):
        recent.probe(f"{HOME}c-{i}.pdf")
    assert lookups(storage) == Counter(probe=10)


def test_a_write_into_a_new_sub_directory_shows_that_directory_at_once() -> None:
    storage, clock = counting_storage(), Clock()
    recent = RecentListings(storage, ttl=2.0, clock=clock)
    for i in range(BURST):
        recent.probe(f"{HOME}d-{i}.pdf")  # the home is now listed, without `new`

    recent.touched(f"{HOME}new/inner.pdf")  # the session uploads into new/
    put(storage, f"{HOME}new/inner.pdf")

    assert recent.probe(f"{HOME}new").is_dir


def test_uploads_in_a_directory_keep_its_listing_for_the_next_names() -> None:
    storage, clock = counting_storage(), Clock()
    recent = RecentListings(storage, ttl=2.0, clock=clock)
    for i in range(50):  # OpenSSH `put` of many files: STAT a name, then write it
        assert not recent.probe(f"{HOME}batch/f-{i}.pdf").exists
        recent.touched(f"{HOME}batch/f-{i}.pdf")
        put(storage, f"{HOME}batch/f-{i}.pdf")
    assert lookups(storage) == Counter(probe=BURST - 1, list_dir=1)


def test_names_at_the_bucket_root_are_listed_from_the_root() -> None:
    storage, clock = counting_storage(), Clock()
    put(storage, "top.pdf")
    recent = RecentListings(storage, ttl=2.0, clock=clock)
    answers = [recent.probe(f"root-{i}.pdf") for i in range(BURST)]
    assert not any(a.exists for a in answers)
    assert recent.probe("top.pdf").file is not None
    assert lookups(storage) == Counter(probe=BURST - 1, list_dir=1)


class ResumableCatalog:
    """What the catalog says of resumable uploads, counting each kind of question."""

    def __init__(self) -> None:
        self.uploads: dict[str, str] = {}
        self.asked: Counter[str] = Counter()

    def one(self, key: str) -> str | None:
        self.asked["one"] += 1
        return self.uploads.get(key)

    def under(self, prefix: str) -> dict[str, str]:
        self.asked["under"] += 1
        return {k: v for k, v in self.uploads.items() if k.startswith(prefix)}


def with_catalog(clock: Clock) -> tuple[RecentListings[str], ResumableCatalog]:
    catalog = ResumableCatalog()
    recent = RecentListings(
        counting_storage(),
        ttl=2.0,
        clock=clock,
        resumable_one=catalog.one,
        resumable_under=catalog.under,
    )
    return recent, catalog


def stat(recent: RecentListings[str], key: str) -> str | None:
    """What the gateway's STAT asks, in its order: a resumable upload, then S3."""
    found = recent.resumable(key)
    recent.probe(key)
    return found


def test_a_burst_of_stats_asks_the_catalog_once_per_listing_for_resumable_uploads() -> None:
    clock = Clock()
    recent, catalog = with_catalog(clock)
    catalog.uploads[f"{HOME}half.pdf"] = "half"

    answers = [stat(recent, f"{HOME}new-{i}.pdf") for i in range(50)]

    assert answers == [None] * 50
    assert stat(recent, f"{HOME}half.pdf") == "half"
    assert catalog.asked == Counter(one=BURST, under=1)


def test_the_sessions_own_names_and_a_stale_view_ask_the_catalog_itself() -> None:
    clock = Clock()
    recent, catalog = with_catalog(clock)
    for i in range(BURST):
        stat(recent, f"{HOME}a-{i}.pdf")
    catalog.asked.clear()

    recent.touched(f"{HOME}a-1.pdf")  # its own upload of a-1 was cut: now resumable
    catalog.uploads[f"{HOME}a-1.pdf"] = "mine"
    catalog.uploads[f"{HOME}other.pdf"] = "another session's"
    assert stat(recent, f"{HOME}a-1.pdf") == "mine"
    assert stat(recent, f"{HOME}other.pdf") is None  # at most ttl late
    clock.now += 2.0
    assert stat(recent, f"{HOME}other.pdf") == "another session's"


def test_a_directory_found_not_to_be_a_file_is_asked_again_only_after_ttl() -> None:
    storage, clock = counting_storage(), Clock()
    recent = RecentListings(storage, ttl=2.0, clock=clock)
    directory = HOME + "reports"

    answers = [recent.is_file(directory) for _ in range(50)]  # one upload after another
    put(storage, directory)  # another session stores a file of that name
    still_believed = recent.is_file(directory)
    clock.now += 2.0

    assert answers == [False] * 50 and still_believed is False
    assert recent.is_file(directory) is True
    assert storage.calls["head"] == 2


def test_the_sessions_own_write_at_a_name_is_seen_as_a_file_at_once() -> None:
    storage, clock = counting_storage(), Clock()
    recent = RecentListings(storage, ttl=2.0, clock=clock)
    assert recent.is_file(HOME + "reports") is False
    recent.touched(HOME + "reports")
    put(storage, HOME + "reports")
    assert recent.is_file(HOME + "reports") is True
