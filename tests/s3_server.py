"""
The moto S3 server the S3 tests run against, started once per test run.

C{tools/run-tests} starts C{moto_server} on a free loopback port and runs
C{python -m tests.s3_server URL}: that creates an IAM user allowed C{s3:*}
with an access key, turns moto's signature checking on (C{POST
/moto-api/reset-auth} with 0: from then on every request must be signed by a
known key, so wrong keys fail as they do on AWS), and prints
C{http://ACCESS:SECRET@host:port}, which run-tests exports as
C{GLANCE_TX_TEST_S3_URL}. Tests read it through L{s3_server}; without it
they skip, except under C{CI=true}, where they fail.

Moto's part-size floor is lowered by run-tests (C{S3_UPLOAD_PART_MIN_SIZE})
so that multipart tests can use small parts; AWS's is 5 MiB, which the
store's configuration enforces.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
import uuid
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from attrs import frozen
from twisted.trial.unittest import SkipTest

S3_ENV = "GLANCE_TX_TEST_S3_URL"
REGION = "us-east-1"
#: The part size tests use; run-tests lets moto accept parts this small.
TEST_PART_SIZE = 8 * 1024


@frozen
class S3Server:
    """Where the test S3 server is and the key pair it accepts."""

    endpoint: str
    access_key: str
    secret_key: str

    def boto3(self, secret_key: str | None = None) -> Any:
        """A boto3 S3 client: the store's own kind of client, to check on it."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
        )

    def new_bucket(self) -> str:
        """A fresh, empty bucket, so tests never see each other's objects."""
        name = f"test-{uuid.uuid4().hex}"
        self.boto3().create_bucket(Bucket=name)
        return name


def s3_server(case: Any) -> S3Server:
    """The server from the environment; skip (fail under CI) without one."""
    url = os.environ.get(S3_ENV)
    if not url:
        problem = f"{S3_ENV} is not set (tools/run-tests starts moto_server)"
        if os.environ.get("CI") == "true":
            case.fail(f"S3 tests cannot run under CI: {problem}")
        raise SkipTest(f"S3 tests not run: {problem}")
    parts = urlsplit(url)
    assert parts.username and parts.password and parts.hostname and parts.port
    return S3Server(
        endpoint=f"{parts.scheme}://{parts.hostname}:{parts.port}",
        access_key=unquote(parts.username),
        secret_key=unquote(parts.password),
    )


def set_up(endpoint: str) -> str:
    """Give moto a user and key, turn signature checks on, return the URL."""
    import boto3

    iam = boto3.client(
        "iam",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="setup",
        aws_secret_access_key="setup",
    )
    iam.create_user(UserName="glance-tx")
    iam.put_user_policy(
        UserName="glance-tx",
        PolicyName="s3",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
            }
        ),
    )
    key = iam.create_access_key(UserName="glance-tx")["AccessKey"]
    request = urllib.request.Request(
        endpoint + "/moto-api/reset-auth",
        data=b"0",
        method="POST",
        headers={"Content-Type": "text/plain"},
    )
    urllib.request.urlopen(request, timeout=30).read()
    parts = urlsplit(endpoint)
    access, secret = (quote(key[k], safe="") for k in ("AccessKeyId", "SecretAccessKey"))
    return f"{parts.scheme}://{access}:{secret}@{parts.netloc}"


if __name__ == "__main__":
    print(set_up(sys.argv[1]))
