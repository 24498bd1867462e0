"""A boto3 Batch client aimed at a Kiln server, with AWS's standard credential and region chain."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

import boto3
import botocore.session
import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from kiln.config import DEFAULT_ENDPOINT


def default_endpoint() -> str:
    return os.environ.get("AWS_ENDPOINT_URL_BATCH") or os.environ.get("AWS_ENDPOINT_URL") or DEFAULT_ENDPOINT


def _credentials_and_region() -> tuple[Credentials | None, str]:
    session = botocore.session.get_session()
    return session.get_credentials(), session.get_config_variable("region") or "us-east-1"


def sign_request(request: httpx.Request) -> httpx.Request:
    """Sign a request to Kiln's own endpoints (`/kiln/v1/logs`) as boto3 signs Batch calls, so they
    pass a `kiln server --auth sigv4`; a server without authentication ignores the signature."""
    credentials, region = _credentials_and_region()
    credentials = credentials or Credentials("kiln", "kiln")
    aws_request = AWSRequest(method=request.method, url=str(request.url), data=request.content)
    aws_request.headers["host"] = request.headers["host"]
    SigV4Auth(credentials.get_frozen_credentials(), "batch", region).add_auth(aws_request)
    for name in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token"):
        if name in aws_request.headers:
            request.headers[name] = aws_request.headers[name]
    return request


def relay_signer(method: str, url: str, headers: dict[str, str], streamed: bool) -> dict[str, str]:
    """Headers that sign a request to the server's relay (kiln/render/relay_fs.py); an upload is
    signed with an unsigned payload, as S3 uploads are, so that it can stream."""
    credentials, region = _credentials_and_region()
    credentials = credentials or Credentials("kiln", "kiln")
    request = AWSRequest(method=method, url=url, data=b"", headers=headers)
    request.headers["host"] = urlsplit(url).netloc
    if streamed:
        request.headers["X-Amz-Content-SHA256"] = "UNSIGNED-PAYLOAD"
    SigV4Auth(credentials.get_frozen_credentials(), "batch", region).add_auth(request)
    names = ("Authorization", "X-Amz-Date", "X-Amz-Security-Token", "X-Amz-Content-SHA256")
    return {name: request.headers[name] for name in names if name in request.headers}


def batch_client(endpoint_url: str | None) -> Any:
    """Standard chain first; dummy credentials and us-east-1 only when nothing is configured
    (a Kiln server without authentication ignores them)."""
    credentials, region = _credentials_and_region()
    kwargs: dict[str, Any] = {}
    if credentials is None:
        kwargs = {"aws_access_key_id": "kiln", "aws_secret_access_key": "kiln"}
    return boto3.client(
        "batch",
        endpoint_url=endpoint_url or default_endpoint(),
        region_name=region,
        config=Config(retries={"mode": "standard", "max_attempts": 3}),
        **kwargs,
    )
