from setuptools import find_packages, setup

setup(
    name="glance-tx",
    version="0.1.0",
    description="A VM image service (OpenStack Glance APIs) on the Twisted reactor",
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["glance_tx", "glance_tx.*"]) + ["twisted.plugins"],
    package_data={
        "glance_tx.registry": ["migrations/*.py", "migrations/versions/*.py"],
        "glance_tx.metadefs": ["definitions/*.json"],
    },
    include_package_data=True,
    install_requires=[
        "twisted[tls] >= 24.7, < 27",
        "klein >= 24.8, < 25",
        "treq >= 24.9, < 27",
        "sqlalchemy >= 2.0, < 2.2",
        "alembic >= 1.13, < 2",
        "zope.interface >= 6.0",
        "attrs >= 23.1",
        # SigV4 signing for the S3 store (glance_tx/store/s3_client.py).
        "botocore >= 1.34, < 2",
        # The disk image format inspector OpenStack maintains
        # (glance_tx/formats/inspection.py); pinned in constraints.txt.
        "oslo.utils[image-inspection] >= 10, < 11",
        # Glance's policy engine and rule language (glance_tx/policy.py).
        "oslo.policy >= 4.0, < 7",
        # The glance-tx command line (glance_tx/cli); pinned in constraints.txt.
        "click >= 8.1, < 9",
    ],
    extras_require={
        "postgresql": ["psycopg[binary] >= 3.1, < 4"],
        "test": [
            # S3 store tests: a real S3 server (tools/run-tests starts
            # moto_server) and boto3 to check what the store left (issue 8).
            "moto[server] >= 5.0, < 6",
            "boto3 >= 1.34, < 2",
            "psycopg[binary] >= 3.1, < 4",
            "sphinx >= 7",
            "ruff",
            "mypy",
            "mypy-zope",
            # The real OpenStack clients, driven over real sockets by
            # tests/test_clients_*.py (issue 3).
            "python-glanceclient >= 4.0, < 5",
            "openstacksdk >= 4.0, < 5",
            # A one-node Swift that tools/run-tests starts, and the client
            # the Swift store tests check it with (issue 8); pinned in
            # constraints.txt.
            "swift",
            "python-swiftclient",
            # The OpenAPI document checked against real responses, and a
            # seeded schemathesis run against a live server (issue 13).
            "jsonschema >= 4.18",
            "openapi-spec-validator >= 0.7",
            "schemathesis >= 4.0, < 5",
        ],
    },
    entry_points={"console_scripts": ["glance-tx = glance_tx.cli:main"]},
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
    ],
)
