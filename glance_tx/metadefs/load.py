"""
Loading metadata definitions from a directory of JSON files, one namespace
per file, in the format Glance's C{glance-manage db load_metadefs} reads:
the namespace's fields (C{namespace}, C{display_name}, C{description},
C{visibility}, C{protected}, C{owner}, by default C{admin}) with its
C{resource_type_associations}, C{properties}, C{objects} and C{tags}.

A namespace already in the registry is left as it is, unless
C{overwrite}: then it is replaced, with all it held. Loading is
therefore safe to repeat, at every start (C{load_metadefs}) or from the
command::

    python -m glance_tx.metadefs.load --config glance-tx.ini [--path DIR] [--overwrite]

which opens the registry of the configuration (C{sql_connection}, or
C{registry_url}) without C{twistd}. Without C{--path}, it reads
C{metadata_source_path}, by default the definitions shipped with
glance-tx (L{SHIPPED}).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attrs import field, frozen

from glance_tx.errors import Conflict, GlanceError
from glance_tx.metadefs.interface import IMetadefRegistry
from glance_tx.metadefs.model import NamespaceContent
from glance_tx.metadefs.views import parse_namespace
from glance_tx.threads import BlockingRunner

#: The definitions glance-tx ships: common properties of images, flavors
#: and volumes (see the files for what each namespace covers).
SHIPPED = Path(__file__).parent / "definitions"

#: Glance's loader gives a file without C{owner} to C{admin}.
DEFAULT_OWNER = "admin"


class DefinitionError(ValueError):
    """A definition file that cannot be read as a namespace (named in the message)."""


@frozen
class LoadReport:
    """What a load did, by namespace name."""

    loaded: tuple[str, ...] = ()
    skipped: tuple[str, ...] = field(default=())


def parse_definition(document: Any, source: str = "definition") -> NamespaceContent:
    """One file's document as a namespace with its contents."""
    if not isinstance(document, dict):
        raise DefinitionError(f"{source}: not a JSON object")
    try:
        return parse_namespace(document, DEFAULT_OWNER)
    except GlanceError as e:
        raise DefinitionError(f"{source}: {e.message}") from None


def read_definitions(path: str | Path) -> list[NamespaceContent]:
    """
    Every C{*.json} file of directory C{path} (or the one file C{path}),
    by file name. Blocking: run it on a thread.
    """
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.glob("*.json"))
    if not files:
        raise DefinitionError(f"{path}: no definition files (*.json)")
    contents = []
    for file in files:
        try:
            document = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DefinitionError(f"{file}: {e}") from None
        contents.append(parse_definition(document, str(file)))
    return contents


async def load_definitions(
    registry: IMetadefRegistry,
    runner: BlockingRunner,
    path: str | Path = SHIPPED,
    overwrite: bool = False,
) -> LoadReport:
    """
    Load the files of C{path} into C{registry}: each namespace created
    with its contents in one call, or, if one of its name is there,
    skipped (or replaced, with C{overwrite}). Files are read on C{runner}.
    """
    contents = await runner.run(read_definitions, path)
    loaded: list[str] = []
    skipped: list[str] = []
    for content in contents:
        name = content.namespace.namespace
        try:
            await registry.create_namespace(content, replace=overwrite)
        except Conflict:
            skipped.append(name)
        else:
            loaded.append(name)
    return LoadReport(loaded=tuple(loaded), skipped=tuple(skipped))


# -- the command -------------------------------------------------------------------


def _options(argv: Sequence[str]) -> Any:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m glance_tx.metadefs.load",
        description="Load metadata definition files (Glance's load_metadefs format)"
        " into the registry of a glance-tx configuration.",
    )
    parser.add_argument("--config", help="the glance-tx INI file")
    parser.add_argument(
        "--path", help="a directory of *.json files, or one file (default: metadata_source_path)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace namespaces already in the registry"
    )
    return parser.parse_args(list(argv))


async def _run(reactor: Any, options: Any) -> LoadReport:
    from twisted.python.threadpool import ThreadPool

    from glance_tx.config import load_config
    from glance_tx.services import ThreadPoolService, registry_service

    config = load_config(options.config)
    threads = ThreadPoolService(reactor, ThreadPool(minthreads=1, maxthreads=2, name="load"))
    threads.startService()
    try:
        runner = await threads.when_ready()
        registries = registry_service(config, reactor, runner)
        registries.startService()
        try:
            registry = await registries.when_ready()
            if not IMetadefRegistry.providedBy(registry):
                raise DefinitionError("this registry keeps no metadata definitions")
            path = options.path or config.metadata_source_path or SHIPPED
            return await load_definitions(registry, runner, path, options.overwrite)
        finally:
            await registries.stopService()
    finally:
        await threads.stopService()


def main(argv: Sequence[str] | None = None) -> None:
    """The command: load, print what was loaded and skipped, exit 1 on failure."""
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.internet.task import react

    options = _options(sys.argv[1:] if argv is None else argv)

    async def run(reactor: Any) -> None:
        try:
            report = await _run(reactor, options)
        except (DefinitionError, GlanceError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(1) from None
        for name in report.loaded:
            print(f"loaded {name}")
        for name in report.skipped:
            print(f"skipped {name} (already in the registry)")

    del reactor
    react(lambda r: Deferred.fromCoroutine(run(r)))


if __name__ == "__main__":  # pragma: no cover
    main()
