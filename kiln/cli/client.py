"""A boto3 Batch client aimed at a Kiln server, with AWS's standard credential and region chain."""

from __future__ import annotations

import os
from typing import Any

import boto3
import botocore.session
from botocore.config import Config

from kiln.config import DEFAULT_ENDPOINT


def default_endpoint() -> str:
    return os.environ.get("AWS_ENDPOINT_URL_BATCH") or os.environ.get("AWS_ENDPOINT_URL") or DEFAULT_ENDPOINT


def batch_client(endpoint_url: str | None) -> Any:
    """Standard chain first; dummy credentials and us-east-1 only when nothing is configured
    (a Kiln server without authentication ignores them)."""
    session = botocore.session.get_session()
    region = session.get_config_variable("region") or "us-east-1"
    kwargs: dict[str, Any] = {}
    if session.get_credentials() is None:
        kwargs = {"aws_access_key_id": "kiln", "aws_secret_access_key": "kiln"}
    return boto3.client(
        "batch",
        endpoint_url=endpoint_url or default_endpoint(),
        region_name=region,
        config=Config(retries={"mode": "standard", "max_attempts": 3}),
        **kwargs,
    )
