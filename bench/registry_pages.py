"""
How the cost of a listing page grows with the number of images.

Fills a registry with 100 and with 100,000 images (bulk inserts straight
through the engine), then times fetching one page (limit 25) deep in the
listing by marker, for a few orderings and filters. Keyset pagination over
the (deleted, key, id) indexes should make the ratio 100k/100 small; an
OFFSET or a full scan would make it about 1000.

Each listing is also paged through completely first, which checks that every
matching image comes back exactly once, and gives the marker 90% of the way in.

The listings include the scopes of Images API v2: a project's default view
(public, its own, and shared images it accepted: a membership probe per
row), its "shared" and "all" views, and an admin's; and tag and
comparison filters.

    python bench/registry_pages.py            # SQLite (a temporary file)
    GLANCE_TX_TEST_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:54329/postgres \\
        python bench/registry_pages.py        # and PostgreSQL
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from attrs import evolve
from sqlalchemy import create_engine, insert
from sqlalchemy.engine import make_url
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from glance_tx.images import Comparison, ImageQuery, Viewer
from glance_tx.registry.schema import (
    image_locations,
    image_members,
    image_properties,
    image_tags,
    images,
)
from glance_tx.registry.sql import SQLRegistry, open_sql_registry
from glance_tx.threads import SynchronousRunner

T = TypeVar("T")

SIZES = (100, 100_000)
PAGE = 25
REPEAT = 30
WARM_UP = 5
PROJECTS = [f"project-{n:02d}" for n in range(50)]
DISTROS = ["ubuntu", "debian", "fedora", "centos", "cirros"]

START = datetime(2024, 1, 1, tzinfo=UTC)
#: The project whose views are measured: a member of about a fifth of the
#: shared images, with every status.
VIEWER_PROJECT = "project-07"
VIEWER = Viewer(VIEWER_PROJECT)

#: name -> query (without marker/limit). Each has a filter, a scope or a
#: hidden status exclusion, so the index is used for order and the rest is
#: checked per row.
SCENARIOS: dict[str, ImageQuery] = {
    "created_at desc, default statuses": ImageQuery(sort=(("created_at", "desc"),)),
    "name asc, status=active": ImageQuery(
        sort=(("name", "asc"),), filters={"status": "active"}
    ),
    "name desc, project-07 default scope": ImageQuery(
        sort=(("name", "desc"),), viewer=VIEWER
    ),
    "created_at desc, project-07 visibility=all": ImageQuery(
        sort=(("created_at", "desc"),), viewer=VIEWER, visibility="all"
    ),
    "created_at desc, project-07 shared, pending+acc.": ImageQuery(
        sort=(("created_at", "desc"),),
        viewer=VIEWER,
        visibility="shared",
        member_statuses=frozenset({"pending", "accepted"}),
    ),
    "updated_at desc, admin default scope": ImageQuery(
        sort=(("updated_at", "desc"),), viewer=Viewer("project-00", is_admin=True)
    ),
    "created_at desc, os_distro=debian": ImageQuery(
        sort=(("created_at", "desc"),), properties={"os_distro": "debian"}
    ),
    "created_at desc, tags=bench+gpu": ImageQuery(
        sort=(("created_at", "desc"),), tags=frozenset({"bench", "gpu"})
    ),
    "created_at desc, tag=rare": ImageQuery(
        sort=(("created_at", "desc"),), tags=frozenset({"rare"})
    ),
    "size asc, created_at gte, project-07": ImageQuery(
        sort=(("size", "asc"),),
        viewer=VIEWER,
        comparisons=(Comparison("created_at", "gte", START + timedelta(seconds=5)),),
    ),
}

#: The tables C{rows} fills, in the order they are written.
TABLES = (images, image_properties, image_locations, image_tags, image_members)


def result(d: Deferred[T]) -> T:
    """The result of a Deferred that has fired (the runner is synchronous)."""
    box: list[Any] = []
    d.addBoth(box.append)
    if isinstance(box[0], Failure):
        box[0].raiseException()
    return box[0]


def rows(count: int, seed: int) -> Iterator[dict[str, list[dict[str, Any]]]]:
    """
    Plausible images, each with its rows in every table: 10% unnamed, names
    repeated ten times, creation times repeated in pairs, a mix of statuses
    and owners; 20% public, 50% private, 25% shared (with up to three
    members, and VIEWER in a fifth of them), 5% community. Every image is
    tagged "bench", 5% "gpu", one in 2000 "rare".
    """
    rng = random.Random(seed)
    for n in range(count):
        image_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        created = START + timedelta(seconds=n // 2)
        status = rng.choices(["active", "queued", "killed"], [90, 5, 5])[0]
        owner = rng.choice(PROJECTS)
        visibility = rng.choices(
            ["public", "private", "shared", "community"], [20, 50, 25, 5]
        )[0]
        image = {
            "id": image_id,
            "name": None
            if rng.random() < 0.1
            else f"image-{rng.randrange(count // 10 or 1)}",
            "status": status,
            "size": rng.randrange(1 << 20, 1 << 32) if status == "active" else None,
            "virtual_size": None,
            "checksum": None,
            "os_hash_algo": None,
            "os_hash_value": None,
            "disk_format": rng.choice(["qcow2", "raw"]),
            "container_format": "bare",
            "visibility": visibility,
            "owner": owner,
            "min_ram": 0,
            "min_disk": 0,
            "protected": False,
            "os_hidden": False,
            "created_at": created,
            "updated_at": created,
            "deleted_at": None,
            "deleted": False,
        }
        properties = [
            {"image_id": image_id, "name": "os_distro", "value": rng.choice(DISTROS)},
            {"image_id": image_id, "name": "hw_disk_bus", "value": "virtio"},
        ]
        location = {
            "image_id": image_id,
            "position": 0,
            "url": f"file:///images/{image_id}",
        }
        tags = ["bench"]
        if rng.random() < 0.05:
            tags.append("gpu")
        if n % 2000 == 0:
            tags.append("rare")
        members: set[str] = set()
        if visibility == "shared":
            members.update(rng.sample(PROJECTS, rng.randrange(4)))
            if rng.random() < 0.2:
                members.add(VIEWER_PROJECT)
            members.discard(owner)
        yield {
            images.name: [image],
            image_properties.name: properties,
            image_locations.name: [location],
            image_tags.name: [{"image_id": image_id, "value": t} for t in tags],
            image_members.name: [
                {
                    "image_id": image_id,
                    "member_id": member,
                    "status": rng.choices(
                        ["accepted", "pending", "rejected"], [70, 20, 10]
                    )[0],
                    "created_at": created,
                    "updated_at": created,
                }
                for member in sorted(members)
            ],
        }


def fill(registry: SQLRegistry, count: int) -> float:
    """Bulk-insert C{count} images; return the seconds it took."""
    began = time.perf_counter()
    batch: list[dict[str, list[dict[str, Any]]]] = []

    def flush() -> None:
        with registry.engine.begin() as connection:
            for table in TABLES:
                values = [row for image in batch for row in image[table.name]]
                if values:
                    connection.execute(insert(table), values)
        batch.clear()

    for image_rows in rows(count, seed=count):
        batch.append(image_rows)
        if len(batch) == 5000:
            flush()
    if batch:
        flush()
    if registry.engine.dialect.name == "postgresql":
        with registry.engine.connect().execution_options(
            isolation_level="AUTOCOMMIT"
        ) as connection:
            connection.exec_driver_sql("VACUUM ANALYZE")
    else:
        with registry.engine.begin() as connection:
            connection.exec_driver_sql("ANALYZE")
    return time.perf_counter() - began


def page_through(registry: SQLRegistry, query: ImageQuery) -> list[str]:
    """Every id of a listing, page by page; check none repeats."""
    ids: list[str] = []
    marker = None
    while True:
        page = result(registry.list(_with(query, marker=marker, limit=1000)))
        if not page:
            break
        ids.extend(image.id for image in page)
        marker = page[-1].id
    if len(ids) != len(set(ids)):
        raise AssertionError("pagination returned an image twice")
    return ids


def _with(query: ImageQuery, **changes: Any) -> ImageQuery:
    return evolve(query, **changes)


def time_page(registry: SQLRegistry, query: ImageQuery, ids: list[str]) -> float:
    """
    Median seconds to fetch one page of C{PAGE} about 90% of the way into
    the listing whose ids are C{ids} (checking that it is the right page).
    """
    at = max(0, min(int(len(ids) * 0.9), len(ids) - PAGE - 1))
    if not ids:
        raise AssertionError("a scenario must list at least one image")
    deep = _with(query, marker=ids[at], limit=PAGE)
    for _ in range(WARM_UP):
        result(registry.list(deep))
    timings = []
    for _ in range(REPEAT):
        began = time.perf_counter()
        page = result(registry.list(deep))
        timings.append(time.perf_counter() - began)
        if [image.id for image in page] != ids[at + 1 : at + 1 + PAGE]:
            raise AssertionError("the page after the marker is not the expected one")
    return statistics.median(timings)


def measure(
    open_registry: Callable[[int], Any],
) -> tuple[dict[str, dict[int, float]], dict[str, dict[int, int]]]:
    figures: dict[str, dict[int, float]] = {name: {} for name in SCENARIOS}
    listed: dict[str, dict[int, int]] = {name: {} for name in SCENARIOS}
    for count in SIZES:
        with open_registry(count) as registry:
            seconds = fill(registry, count)
            print(f"  filled {count} images in {seconds:.1f}s", flush=True)
            for name, query in SCENARIOS.items():
                ids = page_through(registry, query)
                listed[name][count] = len(ids)
                figures[name][count] = time_page(registry, query, ids)
    return figures, listed


def report(
    backend: str,
    measured: tuple[dict[str, dict[int, float]], dict[str, dict[int, int]]],
) -> None:
    figures, listed = measured
    print(f"\n{backend}: median time for one page of {PAGE}, 90% deep")
    print(f"  {'listing':48} {'100':>10} {'100,000':>10} {'ratio':>7} {'listed':>14}")
    for name, by_size in figures.items():
        small, large = by_size[SIZES[0]], by_size[SIZES[1]]
        counts = f"{listed[name][SIZES[0]]}/{listed[name][SIZES[1]]}"
        print(
            f"  {name:48} {small * 1000:8.2f}ms {large * 1000:8.2f}ms "
            f"{large / small:7.2f} {counts:>14}"
        )


@contextmanager
def opened_registry(url: str | Any) -> Iterator[SQLRegistry]:
    """The registry at C{url} (migrated), run synchronously, closed after."""
    registry = result(Deferred.fromCoroutine(open_sql_registry(url, SynchronousRunner())))
    try:
        yield registry
    finally:
        result(registry.close())


@contextmanager
def sqlite_registry(count: int) -> Iterator[SQLRegistry]:
    with tempfile.TemporaryDirectory() as directory:
        with opened_registry(f"sqlite:///{directory}/registry-{count}.db") as registry:
            yield registry


@contextmanager
def postgresql_registry(admin_url: str, count: int) -> Iterator[SQLRegistry]:
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"glance_tx_bench_{os.getpid()}_{count}"
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"CREATE DATABASE {name}")
        url = make_url(admin_url).set(database=name)
        try:
            with opened_registry(url) as registry:
                yield registry
        finally:
            with admin.connect() as connection:
                connection.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
    finally:
        admin.dispose()


def main() -> int:
    print("SQLite (file, WAL)")
    report("SQLite", measure(sqlite_registry))
    postgres = os.environ.get("GLANCE_TX_TEST_POSTGRES_URL")
    if postgres:
        print("\nPostgreSQL")
        report(
            "PostgreSQL",
            measure(lambda count: postgresql_registry(postgres, count)),
        )
    else:
        print("\n(set GLANCE_TX_TEST_POSTGRES_URL to measure PostgreSQL too)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
