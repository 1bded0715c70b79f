"""
Loading metadata definition files (Glance's load_metadefs format): the
files glance-tx ships, the loader's skip/overwrite rules, its refusals,
the start-up option and the command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from glance_tx.config import load_config
from glance_tx.metadefs.load import (
    SHIPPED,
    DefinitionError,
    load_definitions,
    read_definitions,
)
from glance_tx.metadefs.model import PROPERTY, NamespaceQuery
from glance_tx.services import RegistryService, metadefs_path
from glance_tx.threads import SynchronousRunner
from tests.test_registry_sql import sync_open

ROOT = Path(__file__).parent.parent


def _result(case: SynchronousTestCase, coroutine: Any) -> Any:
    return case.successResultOf(Deferred.fromCoroutine(coroutine))


class ShippedDefinitionsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.runner = SynchronousRunner()
        self.registry = sync_open("sqlite://")
        self.addCleanup(lambda: self.successResultOf(self.registry.close()))

    def test_every_shipped_file_loads(self) -> None:
        """Each shipped file is a public, protected namespace with properties for the common resource types."""
        contents = read_definitions(SHIPPED)
        self.assertGreaterEqual(len(contents), 5)
        report = _result(self, load_definitions(self.registry, self.runner))
        self.assertEqual(sorted(report.loaded), sorted(c.namespace.namespace for c in contents))
        self.assertIn("OS::Compute::CPUPinning", report.loaded)
        for content in contents:
            self.assertEqual(content.namespace.visibility, "public")
            self.assertTrue(content.namespace.protected)
            self.assertEqual(content.namespace.owner, "admin")
            self.assertTrue(any(d.kind == PROPERTY for d in content.definitions))
        types = {t.name for t in self.successResultOf(self.registry.list_resource_types())}
        self.assertEqual(types, {"OS::Glance::Image", "OS::Nova::Flavor", "OS::Cinder::Volume"})
        props = self.successResultOf(
            self.registry.list_definitions("OS::Compute::CPUPinning", PROPERTY)
        )
        self.assertIn("cpu_policy", [p.name for p in props])

    def test_loading_again_skips_or_overwrites(self) -> None:
        """A second load skips what is there; with overwrite it replaces it (a change made meanwhile is gone)."""
        _result(self, load_definitions(self.registry, self.runner))
        self.successResultOf(self.registry.delete_definition("OS::Compute::Watchdog", PROPERTY, "watchdog_action"))
        again = _result(self, load_definitions(self.registry, self.runner))
        self.assertEqual(again.loaded, ())
        self.assertIn("OS::Compute::Watchdog", again.skipped)
        self.assertEqual(self.successResultOf(self.registry.list_definitions("OS::Compute::Watchdog", PROPERTY)), [])
        replaced = _result(self, load_definitions(self.registry, self.runner, overwrite=True))
        self.assertIn("OS::Compute::Watchdog", replaced.loaded)
        names = [p.name for p in self.successResultOf(self.registry.list_definitions("OS::Compute::Watchdog", PROPERTY))]
        self.assertEqual(names, ["watchdog_action"])

    def test_glance_format_with_objects_and_tags(self) -> None:
        """A file in Glance's format, objects and tags included, loads as written; its owner is kept."""
        directory = Path(self.mktemp())
        directory.mkdir()
        (directory / "a.json").write_text(json.dumps({
            "namespace": "OS::Operator::Custom",
            "display_name": "Custom",
            "visibility": "private",
            "protected": False,
            "owner": "ops",
            "resource_type_associations": [{"name": "OS::Nova::Aggregate"}],
            "objects": [{"name": "Limits", "required": [], "properties": {"x": {"title": "X", "type": "integer"}}}],
            "tags": [{"name": "fast"}],
        }))
        (directory / "ignored.txt").write_text("not json")
        report = _result(self, load_definitions(self.registry, self.runner, directory))
        self.assertEqual(report.loaded, ("OS::Operator::Custom",))
        got = self.successResultOf(self.registry.get_namespace("OS::Operator::Custom"))
        self.assertEqual((got.owner, got.visibility), ("ops", "private"))
        page = self.successResultOf(self.registry.list_namespaces(NamespaceQuery(project_id="ops")))
        self.assertEqual([n.namespace for n in page], ["OS::Operator::Custom"])

    def test_bad_files_are_named(self) -> None:
        """A file that is no JSON, or no namespace, is refused with its name; an empty directory too."""
        directory = Path(self.mktemp())
        directory.mkdir()
        self.assertRaises(DefinitionError, read_definitions, directory)
        (directory / "broken.json").write_text("{")
        error = self.assertRaises(DefinitionError, read_definitions, directory)
        self.assertIn("broken.json", str(error))
        (directory / "broken.json").write_text(json.dumps({"display_name": "no namespace"}))
        error = self.assertRaises(DefinitionError, read_definitions, directory)
        self.assertIn("namespace", str(error))


class StartUpTests(SynchronousTestCase):
    def test_load_metadefs_option(self) -> None:
        """With load_metadefs, the registry service loads metadata_source_path (default: the shipped files) once migrated."""
        ini = Path(self.mktemp())
        ini.write_text("[DEFAULT]\nload_metadefs = true\n")
        config = load_config(str(ini))
        self.assertEqual(metadefs_path(config), "")
        self.assertIsNone(metadefs_path(load_config(None)))
        service = RegistryService("sqlite://", SynchronousRunner(), metadefs_path=metadefs_path(config))
        service.startService()
        registry: Any = self.successResultOf(service.when_ready())
        self.addCleanup(service.stopService)
        self.assertIn(
            "OS::Glance::Image", [t.name for t in self.successResultOf(registry.list_resource_types())]
        )


class CommandTests(SynchronousTestCase):
    def test_command_loads_into_the_configured_registry(self) -> None:
        """python -m glance_tx.metadefs.load --config loads into sql_connection, and says what it did."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        database = os.path.join(directory, "glance.sqlite")
        ini = os.path.join(directory, "glance-tx.ini")
        with open(ini, "w") as f:
            f.write(f"[DEFAULT]\nsql_connection = sqlite:///{database}\ndata_dir = {directory}\n")
        command = [sys.executable, "-m", "glance_tx.metadefs.load", "--config", ini]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
        self.assertEqual(first.returncode, 0, first.stderr)
        self.assertIn("loaded OS::Compute::CPUPinning", first.stdout)
        second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
        self.assertIn("skipped OS::Compute::CPUPinning", second.stdout)
        registry = sync_open(f"sqlite:///{database}")
        self.addCleanup(lambda: self.successResultOf(registry.close()))
        self.successResultOf(registry.get_namespace("OS::Compute::CPUPinning"))
        bad = subprocess.run(
            command + ["--path", directory], capture_output=True, text=True, env=env, timeout=120
        )
        self.assertEqual(bad.returncode, 1)
        self.assertIn("no definition files", bad.stderr)
