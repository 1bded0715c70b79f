"""
Tests for the Swift API client, and for the one-node Swift the suite runs on.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.swift_cluster import swift_cluster, unique_container


class ClusterTests(SynchronousTestCase):
    """The one-node Swift from C{tools/run-tests} is up and usable."""

    def test_object_round_trip(self) -> None:
        """
        swiftclient logs in with tempauth and puts, reads back and deletes
        an object: fails if the cluster did not start, or started without a
        working ring, memcached or tempauth.
        """
        connection = swift_cluster(self).connection()
        container = unique_container()
        connection.put_container(container)
        connection.put_object(container, "hello", b"hello, swift")
        headers, body = connection.get_object(container, "hello")
        self.assertEqual(body, b"hello, swift")
        self.assertEqual(headers["content-length"], "12")
        connection.delete_object(container, "hello")
        connection.delete_container(container)
