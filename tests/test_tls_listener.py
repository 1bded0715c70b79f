"""
TLS on the API port, over a real socket: glance-tx started from a
configuration with Glance's C{cert_file} and C{key_file} (an C{ssl:}
endpoint string; C{--port ssl:...} takes the same path), with a
certificate made for the test by L{tests.tls.certificate_authority}, and
a treq client that verifies it against that CA.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.ssl import Certificate
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    ResponseFailed,
    ResponseNeverReceived,
)

from glance_tx.config import load_config
from tests.live_server import listening_port, settled_client, start_glance_tx
from tests.tls import certificate_authority


class TLSListenerTests(TestCase):
    timeout = 60

    async def start(self) -> None:
        ca = certificate_authority()
        pem = self.mktemp()
        with open(pem, "wb") as f:
            f.write(ca.server_pem)
        os.chmod(pem, 0o600)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(
                "[DEFAULT]\nbind_host = 127.0.0.1\nbind_port = 0\n"
                f"cert_file = {pem}\nkey_file = {pem}\n"
            )
        config = load_config(path, data_dir=os.path.abspath(self.mktemp()))
        self.assertTrue(config.endpoint.startswith("ssl:0:"), config.endpoint)
        service = await start_glance_tx(config, self.addCleanup, "tls-tests")
        self.port = listening_port(service)
        # A client that trusts only the test CA; settled_client's pool
        # (plain) checks that the port refuses cleartext.
        self.plain = settled_client(self)
        pool = HTTPConnectionPool(reactor, persistent=False)
        policy = BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(ca.ca_pem))
        self.treq = HTTPClient(Agent(reactor, contextFactory=policy, pool=pool))
        self.addCleanup(pool.closeCachedConnections)

    async def glance(self, *args: str) -> tuple[int, str]:
        """Run python-glanceclient's C{glance} against the https URL (noauth)."""
        env = {
            k: v for k, v in os.environ.items()
            if not k.startswith("OS_") and k.lower() not in ("https_proxy", "http_proxy")
            and k != "PYTHONPATH"
            # requests lets these override the client's --os-cacert.
            and k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
        }
        env["HOME"] = os.path.abspath(self.mktemp())
        # A thread: the client blocks; stdin closed, or image-create would
        # wait for image data on it.
        done = await deferToThread(
            subprocess.run,
            [os.path.join(os.path.dirname(sys.executable), "glance"),
             "--os-image-url", f"https://127.0.0.1:{self.port}", "--os-auth-token", "notused",
             *args],
            env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
        )
        out, err, code = done.stdout, done.stderr, done.returncode
        return code, (out + err).decode(errors="replace")

    async def call(self, method: str, path: str, data: Any = None, **headers: str) -> Any:
        response = await self.treq.request(
            method, f"https://127.0.0.1:{self.port}{path}",
            headers={k: [v] for k, v in headers.items()}, data=data,
        )
        return response, await response.content()

    async def test_image_over_tls(self) -> None:
        """
        Over https, verified against the CA: version discovery names
        https URLs, and an image goes up and comes back byte for byte.
        """
        await self.start()
        response, body = await self.call("GET", "/versions")
        self.assertEqual(response.code, 300)  # Multiple Choices, as Glance
        hrefs = [link["href"] for v in json.loads(body)["versions"] for link in v["links"]]
        self.assertTrue(hrefs and all(h.startswith("https://127.0.0.1:") for h in hrefs), hrefs)
        response, body = await self.call(
            "POST", "/v2/images",
            json.dumps({"name": "tls", "disk_format": "raw", "container_format": "bare"}).encode(),
            **{"Content-Type": "application/json"},
        )
        self.assertEqual(response.code, 201, body)
        image_id = json.loads(body)["id"]
        data = os.urandom(3 << 20)
        response, body = await self.call(
            "PUT", f"/v2/images/{image_id}/file", data,
            **{"Content-Type": "application/octet-stream"},
        )
        self.assertEqual(response.code, 204, body)
        response, body = await self.call("GET", f"/v2/images/{image_id}/file")
        self.assertEqual(response.code, 200)
        self.assertTrue(body == data, "the bytes differ")

    async def test_glanceclient_verifies(self) -> None:
        """
        python-glanceclient with C{--os-cacert} (the test CA) creates and
        lists an image over https; given another CA, it refuses the
        certificate.
        """
        await self.start()
        ca = certificate_authority().write(self)
        code, out = await self.glance(
            "--os-cacert", ca, "image-create", "--name", "tls-cli",
            "--disk-format", "raw", "--container-format", "bare",
        )
        self.assertEqual(code, 0, out)
        code, out = await self.glance("--os-cacert", ca, "image-list")
        self.assertEqual(code, 0, out)
        self.assertIn("tls-cli", out)
        # Another CA: refused. (Without --os-cacert, glanceclient's token
        # and URL mode does not verify at all: verify=None.)
        code, out = await self.glance(
            "--os-cacert", certificate_authority("another CA").write(self), "image-list"
        )
        self.assertNotEqual(code, 0, out)
        self.assertIn("CERTIFICATE_VERIFY_FAILED", out.upper().replace(" ", "_"))

    async def test_untrusted_and_cleartext_refused(self) -> None:
        """
        A client that does not trust the CA fails the handshake; plain HTTP
        to the TLS port gets no HTTP answer.
        """
        await self.start()
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        other = certificate_authority("another CA")
        policy = BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(other.ca_pem))
        untrusting = HTTPClient(Agent(reactor, contextFactory=policy, pool=pool))
        with self.assertRaises((ResponseNeverReceived, ResponseFailed)) as caught:
            await untrusting.get(f"https://127.0.0.1:{self.port}/versions")
        self.assertIn("certificate verify failed", repr(caught.exception))
        with self.assertRaises((ResponseNeverReceived, ResponseFailed)):
            response = await self.plain.get(f"http://127.0.0.1:{self.port}/versions")
            await response.content()
