"""A real S3-compatible server for the tests: moto's server (``python -m moto.server``), a process of its own that
speaks S3's HTTP API (signed requests, path-style buckets, conditional and listing calls), started once per test
session on a free port. MinIO would do as well but is not installable here (no PyPI wheel, no Debian package).

``s3_server``: the running server; ``s3_images``: a fresh bucket, as the ``[storage]`` settings that point at it.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

# moto takes any signed request (it does not check credentials); the region is S3's default
CREDENTIALS = {"s3_access_key_id": "test-key", "s3_secret_access_key": "test-secret", "s3_region": "us-east-1"}


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    def client(self):
        """boto3's client, to see the bucket with another implementation of S3 than the store's."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=CREDENTIALS["s3_access_key_id"],
            aws_secret_access_key=CREDENTIALS["s3_secret_access_key"],
            region_name=CREDENTIALS["s3_region"],
        )

    def new_bucket(self) -> str:
        name = f"images-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str) -> list[str]:
        """Every object's key in ``bucket``, as S3 lists them."""
        listing = self.client().list_objects_v2(Bucket=bucket)
        return sorted(o["Key"] for o in listing.get("Contents", []))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    port = _free_port()
    log: Path = tmp_path_factory.mktemp("s3") / "moto.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the S3 server did not start: {log.read_text()}") from None
                time.sleep(0.1)
        yield S3Server(f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def s3_images(s3_server: S3Server) -> dict[str, str]:
    """``[storage]`` settings for a fresh bucket (the images under the prefix ``bot/images``)."""
    return {"images": f"s3://{s3_server.new_bucket()}/bot/images", "s3_endpoint": s3_server.endpoint, **CREDENTIALS}
