"""
The commands of C{glance-tx}, on click.

click rather than argparse: every command gets C{--help} and usage errors
(exit status 2) from its declaration, options read their environment
variables (C{GLANCE_TX_URL}, C{GLANCE_TX_TOKEN}) by themselves, and its
progress bar is the one L{glance_tx.cli.progress} draws, so the command
line needs no library besides click (rich or tqdm would be a second one).

Each command is a few lines over L{BlockingClient}: the HTTP, the paging,
the streaming and the verifying are the client's. Whatever the client
raises on purpose (L{ClientError}: a refusal, an unreachable server, a
corrupt download) is one line on stderr and exit status 1, never a
traceback; so is anything unexpected, unless C{--debug}.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from itertools import islice
from typing import IO, Any, TypeVar

import click
from attrs import define, field

from glance_tx.cli.output import (
    download_document,
    human_size,
    image_document,
    member_document,
    render_fields,
    render_table,
    store_document,
)
from glance_tx.cli.progress import TransferBar, transfer_bar
from glance_tx.client import ClientError, HTTPError
from glance_tx.client.blocking import BlockingClient
from glance_tx.client.values import ImageInfo

__all__ = ["cli", "main"]

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_URL = "http://127.0.0.1:9292"

#: The columns of C{image-list}'s table (keys of L{image_document}).
LIST_COLUMNS = [
    ("ID", "id"),
    ("Name", "name"),
    ("Status", "status"),
    ("Visibility", "visibility"),
    ("Disk format", "disk_format"),
    ("Size", "size"),
]


class CommandFailed(click.ClickException):
    """An error to report in one line, with exit status 1."""

    exit_code = 1


@define
class Settings:
    """The group's options, and the client made from them on first use."""

    url: str
    token: str | None = field(repr=False)
    timeout: float
    debug: bool
    retries: int = 3
    version: int = 2
    _client: BlockingClient | None = field(default=None, init=False)

    def client(self, ctx: click.Context) -> BlockingClient:
        if self._client is None:
            self._client = BlockingClient.connect(
                self.url, self.token, timeout=self.timeout, retries=self.retries,
                version=self.version,
            )
            ctx.call_on_close(self._client.close)
        return self._client


#: The exit status of a command stopped by SIGINT, as a shell expects (128 + 2).
INTERRUPTED = 130


class GlanceGroup(click.Group):
    """A group that turns the client's errors into one line and exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            # The client cancelled what it was doing; exit as a shell expects
            # of a command stopped by SIGINT (128 + 2).
            click.echo("Interrupted", err=True)
            raise click.exceptions.Exit(INTERRUPTED) from None
        except ClientError as e:
            raise CommandFailed(str(e)) from None
        except OSError as e:
            if _debug(ctx):
                raise
            raise CommandFailed(f"{e.strerror or e}: {e.filename}" if e.filename else str(e)) from None
        except Exception as e:
            if _debug(ctx):
                raise
            raise CommandFailed(f"unexpected {type(e).__name__}: {e} (--debug shows where)") from None


def _debug(ctx: click.Context) -> bool:
    settings = ctx.find_object(Settings)
    return settings is not None and settings.debug


def _url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise click.BadParameter(f"{value!r} is not an http:// or https:// URL")
    return value


@click.group(cls=GlanceGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--url", envvar="GLANCE_TX_URL", default=DEFAULT_URL, show_default=True,
    callback=_url, help="The image service's endpoint [env: GLANCE_TX_URL].",
)
@click.option(
    "--token", envvar="GLANCE_TX_TOKEN", default=None,
    help="Sent as X-Auth-Token [env: GLANCE_TX_TOKEN].",
)
@click.option(
    "--timeout", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
    help="Seconds to wait for an answer (or, in a transfer, for progress).",
)
@click.option(
    "--retries", type=click.IntRange(min=0), default=3, show_default=True,
    help="Tries more of a request that may be repeated, after a connection failure or a 503.",
)
@click.option(
    "--os-image-api-version", "api_version", type=click.Choice(["1", "2"]), default="2",
    show_default=True, envvar="OS_IMAGE_API_VERSION",
    help="The Images API to speak: 1 for old servers [env: OS_IMAGE_API_VERSION].",
)
@click.option("--debug", is_flag=True, help="Show a traceback on an unexpected error.")
@click.version_option(package_name="glance-tx", prog_name="glance-tx")
@click.pass_context
def cli(
    ctx: click.Context, url: str, token: str | None, timeout: float, retries: int,
    api_version: str, debug: bool,
) -> None:
    """
    A command line for the OpenStack Images API v2, or v1 for old servers
    (glance-tx, or OpenStack Glance). Every command takes --help.
    """
    ctx.obj = Settings(url, token, timeout, debug, retries, int(api_version))


def main() -> None:
    """
    The console script: exits 0 on success, 1 on an error, 2 on a usage
    error, 130 when interrupted.
    """
    try:
        cli(prog_name="glance-tx")
    except SystemExit as e:
        if e.code != INTERRUPTED:
            raise
        # A thread may still be blocked reading a pipe left open (stdin);
        # the interpreter's shutdown would wait on its lock and abort.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(INTERRUPTED)


# -- shared options and output ---------------------------------------------------


def options(*decorators: Callable[[Any], Any]) -> Callable[[F], F]:
    """
    One decorator for C{decorators} (click options, arguments, ...), which
    apply in the order written, as they would stacked above a command:
    the option sets the commands share are each declared once.
    """

    def apply(command: F) -> F:
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return apply


def image_command(name: str) -> Callable[[F], F]:
    """A command on one image: its C{IMAGE_ID} argument first, the context passed."""
    return options(cli.command(name), click.argument("image_id"), click.pass_context)


format_option = options(click.option(
    "--format", "-f", "output_format", type=click.Choice(["table", "json"]),
    default="table", show_default=True,
    help="A table for people, or JSON for scripts.",
))

progress_option = options(click.option(
    "--no-progress", is_flag=True,
    help="No progress bar (there is one only when stderr is a terminal).",
))

store_option = options(click.option("--store", help="The store to upload to (see 'stores')."))


def file_option(help: str) -> Callable[[F], F]:
    """C{--file}: a path, or C{-} for stdin or stdout."""
    return options(click.option(
        "--file", "file", type=click.Path(dir_okay=False, allow_dash=True), help=help,
    ))


def _emit(output_format: str, document: Any, table: Callable[[], str]) -> None:
    if output_format == "json":
        click.echo(_json(document))
    else:
        click.echo(table())


def _emit_rows(
    output_format: str, documents: list[dict[str, Any]], columns: list[tuple[str, str]],
) -> None:
    """C{documents} as JSON, or as a table of C{columns} (heading, key)."""
    _emit(output_format, documents, lambda: render_table(
        [heading for heading, _ in columns],
        [[document[key] for _, key in columns] for document in documents],
    ))


def _json(document: Any) -> str:
    return json.dumps(document, indent=2, sort_keys=True)


def _show_image(output_format: str, document: dict[str, Any]) -> None:
    _emit(output_format, document, lambda: render_fields(document))


def _pairs(ctx: click.Context, param: click.Parameter, values: Iterable[str]) -> dict[str, str]:
    """C{k=v} options as a mapping."""
    pairs: dict[str, str] = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE")
        pairs[key] = rest
    return pairs


def _client(ctx: click.Context) -> BlockingClient:
    return ctx.ensure_object(Settings).client(ctx)


def _bar_wanted(no_progress: bool) -> bool:
    return not no_progress and sys.stderr.isatty()


@contextmanager
def _bar(label: str, no_progress: bool) -> Iterator[TransferBar | None]:
    with transfer_bar(label, _bar_wanted(no_progress), sys.stderr) as bar:
        yield bar


def property_option(help: str) -> Callable[[F], F]:
    """C{--property KEY=VALUE}, repeated: a mapping."""
    return options(click.option(
        "--property", "properties", multiple=True, callback=_pairs, metavar="KEY=VALUE", help=help,
    ))


#: The fields image-create and image-update set.
image_fields = options(
    click.option("--name", help="The image's name."),
    click.option("--disk-format", help="raw, qcow2, vmdk, iso, ..."),
    click.option("--container-format", help="bare, ovf, ova, docker, ..."),
    click.option("--visibility", type=click.Choice(["public", "private", "shared", "community"])),
    click.option("--protected/--unprotected", default=None, help="Whether it may be deleted."),
    click.option("--min-disk", type=click.IntRange(min=0), help="GiB of disk it needs."),
    click.option("--min-ram", type=click.IntRange(min=0), help="MiB of RAM it needs."),
    property_option("An extra property (repeat for more)."),
)


def _fields(**given: Any) -> dict[str, Any]:
    """The image fields given on the command line (unset ones left out)."""
    properties: Mapping[str, str] = given.pop("properties")
    chosen = {key: value for key, value in given.items() if value is not None}
    chosen.update(properties)
    return chosen


def _open_source(file: str | None, ctx: click.Context) -> tuple[IO[bytes], bool]:
    """The data to upload: C{file}, or stdin when it is C{-} (or absent and piped)."""
    if file is None or file == "-":
        if file is None and sys.stdin.isatty():
            raise click.UsageError("give --file FILE, or pipe the data in", ctx)
        return sys.stdin.buffer, False
    return open(file, "rb"), True


def _upload(
    client: BlockingClient, image_id: str, source: IO[bytes], size: int | None,
    store: str | None, no_progress: bool,
) -> None:
    with _bar("Uploading", no_progress) as bar:
        client.upload(image_id, source, size=size, store=store, progress=bar)


# -- images ---------------------------------------------------------------------


@cli.command("image-list")
@click.option("--name")
@click.option("--status", help="queued, saving, active, killed, deleted, deactivated, ...")
@click.option("--visibility", type=click.Choice(["public", "private", "shared", "community", "all"]))
@click.option("--owner", help="A project id.")
@click.option("--tag", "tags", multiple=True, help="Images with this tag (repeat: with all).")
@click.option("--member-status", type=click.Choice(["pending", "accepted", "rejected", "all"]))
@click.option("--disk-format")
@click.option("--container-format")
@click.option("--os-hidden/--no-os-hidden", default=None, help="Hidden images instead of the others.")
@property_option("Images with this property value (repeat for more).")
@click.option("--sort-key", help="Sort on this field (with --sort-dir).")
@click.option("--sort-dir", type=click.Choice(["asc", "desc"]))
@click.option("--sort", help="Glance's sort syntax: name:asc,created_at:desc.")
@click.option("--page-size", type=click.IntRange(min=1), help="Images per request.")
@click.option("--limit", type=click.IntRange(min=0), help="Stop after this many images.")
@format_option
@click.pass_context
def image_list(
    ctx: click.Context, tags: tuple[str, ...], properties: dict[str, str],
    page_size: int | None, limit: int | None, output_format: str, **filters: Any,
) -> None:
    """List the images the filters select, every page of them."""
    chosen = {key: value for key, value in filters.items() if value is not None}
    if tags:
        chosen["tag"] = list(tags)
    chosen.update(properties)
    images = _client(ctx).list_images(page_size=page_size, **chosen)
    documents = [image_document(image) for image in islice(images, limit)]
    _emit_rows(output_format, documents, LIST_COLUMNS)


@image_command("image-show")
@format_option
def image_show(ctx: click.Context, image_id: str, output_format: str) -> None:
    """Show an image."""
    _show_image(output_format, image_document(_client(ctx).show(image_id)))


@cli.command("image-create")
@image_fields
@click.option("--id", "image_id", help="The new image's id (a UUID); the server's by default.")
@click.option("--tag", "tags", multiple=True, help="A tag (repeat for more).")
@file_option("Upload this file's data too ('-': stdin).")
@store_option
@progress_option
@format_option
@click.pass_context
def image_create(
    ctx: click.Context, image_id: str | None, tags: tuple[str, ...], file: str | None,
    store: str | None, no_progress: bool, output_format: str, **options: Any,
) -> None:
    """
    Create an image; with --file, upload its data as well. Prints the
    image (active, once its data is in).
    """
    fields = _fields(**options)
    if image_id is not None:
        fields["id"] = image_id
    if tags:
        fields["tags"] = list(tags)
    source, close = _open_source(file, ctx) if file is not None else (None, False)
    client = _client(ctx)
    try:
        image = client.create(**fields)
        if source is not None:
            try:
                _upload(client, image.id, source, None, store, no_progress)
            except ClientError as e:
                raise CommandFailed(f"image {image.id} was created, but its upload failed: {e}") from None
            image = client.show(image.id)
    finally:
        if close and source is not None:
            source.close()
    _show_image(output_format, image_document(image))


@image_command("image-update")
@image_fields
@click.option(
    "--remove-property", "remove", multiple=True, metavar="KEY",
    help="Remove this extra property (repeat for more).",
)
@format_option
def image_update(
    ctx: click.Context, image_id: str, remove: tuple[str, ...], output_format: str,
    **options: Any,
) -> None:
    """Change an image's fields and properties, all in one request."""
    fields = _fields(**options)
    if not fields and not remove:
        raise click.UsageError("nothing to change: give a field, --property or --remove-property", ctx)
    image = _client(ctx).update(image_id, fields, remove)
    _show_image(output_format, image_document(image))


@image_command("image-upload")
@file_option("The data to upload ('-', or left out with data piped in: stdin).")
@click.option("--size", type=click.IntRange(min=0), help="Bytes to send (default: to the end).")
@store_option
@progress_option
def image_upload(
    ctx: click.Context, image_id: str, file: str | None, size: int | None,
    store: str | None, no_progress: bool,
) -> None:
    """Upload a queued image's data, streamed from a file or stdin."""
    source, close = _open_source(file, ctx)
    try:
        _upload(_client(ctx), image_id, source, size, store, no_progress)
    finally:
        if close:
            source.close()


@image_command("image-download")
@file_option("Where to write it (default or '-': stdout, unless a terminal).")
@progress_option
@format_option
def image_download(
    ctx: click.Context, image_id: str, file: str | None, no_progress: bool, output_format: str,
) -> None:
    """
    Download an image's data, checked against its hash as it arrives and
    resumed if the connection drops. A --file is written whole and
    verified, or not at all; then what was checked is printed.
    """
    to_stdout = file is None or file == "-"
    if to_stdout and sys.stdout.isatty():
        raise click.UsageError("stdout is a terminal: give --file FILE, or redirect it", ctx)
    client = _client(ctx)
    with _bar("Downloading", no_progress) as bar:
        if to_stdout:
            result = client.download(image_id, sys.stdout.buffer, progress=bar)
            sys.stdout.buffer.flush()
            return
        assert file is not None
        result = client.download(image_id, file, progress=bar)
    document = download_document(result, file)
    _emit(output_format, document, lambda: (
        f"{file}: {human_size(result.size)}"
        + (f", {result.algorithm} verified" if result.algorithm else ", nothing to verify against")
        + (f", resumed {result.resumed} times" if result.resumed else "")
    ))


@cli.command("image-delete")
@click.argument("image_ids", nargs=-1, required=True, metavar="IMAGE_ID...")
@click.pass_context
def image_delete(ctx: click.Context, image_ids: tuple[str, ...]) -> None:
    """Delete images (each one tried; exit 1 if any could not be)."""
    client = _client(ctx)
    failed = []
    for image_id in image_ids:
        try:
            client.delete(image_id)
        except HTTPError as e:
            failed.append(f"{image_id}: {e}")
    if failed:
        raise CommandFailed("; ".join(failed))


@image_command("image-tag-add")
@click.argument("tag")
def image_tag_add(ctx: click.Context, image_id: str, tag: str) -> None:
    """Tag an image."""
    _client(ctx).add_tag(image_id, tag)


@image_command("image-tag-remove")
@click.argument("tag")
def image_tag_remove(ctx: click.Context, image_id: str, tag: str) -> None:
    """Remove a tag from an image."""
    _client(ctx).remove_tag(image_id, tag)


# -- import -----------------------------------------------------------------------

#: Seconds between two looks at an image whose import is awaited.
IMPORT_POLL = 0.5


def _await_import(
    client: BlockingClient, image_id: str, timeout: float | None,
    clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], object] = time.sleep,
) -> ImageInfo:
    """
    The image once its import has ended: active with no store failed, or
    L{CommandFailed} naming the stores that failed (or the status it
    fell back to), or saying it is still importing after C{timeout}
    seconds (an import whose node died stays so).
    """
    deadline = None if timeout is None else clock() + timeout
    while True:
        image = client.show(image_id)
        if not image.importing_to_stores:
            if image.failed_import:
                raise CommandFailed(
                    f"import of image {image_id} failed for store(s) "
                    f"{', '.join(image.failed_import)} (the image is {image.status})"
                )
            if image.status == "active":
                return image
            if image.status not in ("importing", "uploading"):
                raise CommandFailed(f"import of image {image_id} ended with the image {image.status}")
        if deadline is not None and clock() >= deadline:
            raise CommandFailed(
                f"image {image_id} is still {image.status} after {timeout:g} seconds"
                + (f", importing to {', '.join(image.importing_to_stores)}"
                   if image.importing_to_stores else "")
            )
        sleep(IMPORT_POLL)


def _stage(client: BlockingClient, image_id: str, file: str | None, ctx: click.Context,
           no_progress: bool) -> None:
    source, close = _open_source(file, ctx)
    try:
        with _bar("Staging", no_progress) as bar:
            client.stage(image_id, source, progress=bar)
    finally:
        if close:
            source.close()


@image_command("image-stage")
@file_option("The data to stage ('-', or left out with data piped in: stdin).")
@progress_option
def image_stage(ctx: click.Context, image_id: str, file: str | None, no_progress: bool) -> None:
    """Stage a queued image's data for 'image-import --method glance-direct'."""
    _stage(_client(ctx), image_id, file, ctx, no_progress)


@image_command("image-import")
@click.option(
    "--method", type=click.Choice(["glance-direct", "web-download", "copy-image"]),
    default="glance-direct", show_default=True, help="How the server gets the data.",
)
@click.option("--uri", help="The URL web-download reads the data from.")
@click.option("--store", "stores", multiple=True, help="A store to import into (repeat for more).")
@click.option("--all-stores", is_flag=True, default=None, help="Import into every store.")
@click.option(
    "--allow-failure", is_flag=True, default=None,
    help="Keep the stores that worked when another fails (all_stores_must_succeed false).",
)
@file_option("Stage this file's data first ('-': stdin; glance-direct only).")
@click.option("--wait", is_flag=True, help="Wait until the image is active; exit 1 if the import fails.")
@click.option(
    "--wait-timeout", type=click.FloatRange(min=0), default=3600.0, show_default=True,
    help="With --wait: seconds to wait before giving up (exit 1).",
)
@progress_option
@format_option
def image_import(
    ctx: click.Context, image_id: str, method: str, uri: str | None, stores: tuple[str, ...],
    all_stores: bool | None, allow_failure: bool | None, file: str | None, wait: bool,
    wait_timeout: float, no_progress: bool, output_format: str,
) -> None:
    """
    Import an image's data (interoperable import): glance-direct of what
    was staged (or --file, staged first), web-download from --uri, or
    copy-image into more stores. Prints the image.
    """
    if (method == "web-download") != (uri is not None):
        raise click.UsageError("--uri goes with --method web-download, and it needs one", ctx)
    if file is not None and method != "glance-direct":
        raise click.UsageError("--file stages data for --method glance-direct only", ctx)
    client = _client(ctx)
    if file is not None:
        _stage(client, image_id, file, ctx, no_progress)
    client.import_image(
        image_id, method, uri=uri, stores=list(stores) or None, all_stores=all_stores,
        all_stores_must_succeed=None if allow_failure is None else not allow_failure,
    )
    image = _await_import(client, image_id, wait_timeout) if wait else client.show(image_id)
    _show_image(output_format, image_document(image))


@cli.command("import-methods")
@format_option
@click.pass_context
def import_methods(ctx: click.Context, output_format: str) -> None:
    """List the import methods the server offers."""
    methods = _client(ctx).import_methods()
    _emit(output_format, methods, lambda: render_table(["Import method"], [[m] for m in methods]))


# -- members and stores -----------------------------------------------------------

STORE_COLUMNS = [
    ("ID", "id"), ("Description", "description"), ("Default", "default"), ("Read-only", "read_only"),
]
MEMBER_COLUMNS = [("Image ID", "image_id"), ("Member ID", "member_id"), ("Status", "status")]


def _members(output_format: str, documents: list[dict[str, Any]]) -> None:
    _emit_rows(output_format, documents, MEMBER_COLUMNS)


@image_command("member-list")
@format_option
def member_list(ctx: click.Context, image_id: str, output_format: str) -> None:
    """List the projects an image is shared with."""
    members = _client(ctx).list_members(image_id)
    _members(output_format, [member_document(m) for m in members])


@image_command("member-create")
@click.argument("member_id")
@format_option
def member_create(ctx: click.Context, image_id: str, member_id: str, output_format: str) -> None:
    """Share an image with a project (its visibility must be 'shared')."""
    member = _client(ctx).add_member(image_id, member_id)
    _members(output_format, [member_document(member)])


@image_command("member-update")
@click.argument("member_id")
@click.argument("status", type=click.Choice(["accepted", "rejected", "pending"]))
@format_option
def member_update(
    ctx: click.Context, image_id: str, member_id: str, status: str, output_format: str,
) -> None:
    """Accept or reject an image shared with your project (as that project)."""
    member = _client(ctx).update_member(image_id, member_id, status)
    _members(output_format, [member_document(member)])


@image_command("member-delete")
@click.argument("member_id")
def member_delete(ctx: click.Context, image_id: str, member_id: str) -> None:
    """Stop sharing an image with a project."""
    _client(ctx).remove_member(image_id, member_id)


@cli.command("stores")
@format_option
@click.pass_context
def stores(ctx: click.Context, output_format: str) -> None:
    """List the stores an upload may name."""
    documents = [store_document(s) for s in _client(ctx).stores()]
    _emit_rows(output_format, documents, STORE_COLUMNS)
