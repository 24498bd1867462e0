"""s3:// round trip against moto's S3 server on 127.0.0.1: the worker reads and writes objects only.

The subprocesses find the server the standard way, through `AWS_ENDPOINT_URL`, as any job
pointed at MinIO or another S3-compatible store would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import pytest

from .conftest import Run, run_worker
from .images import video_frames

BUCKET = "kiln-render-test"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "kiln-test",
    "AWS_SECRET_ACCESS_KEY": "kiln-test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def s3(s3_endpoint: str, sample_blend: Path) -> Any:
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="kiln-test",
        aws_secret_access_key="kiln-test",
    )
    client.create_bucket(Bucket=BUCKET)
    client.upload_file(str(sample_blend), BUCKET, "scenes/sample.blend")
    return client


def worker(s3_endpoint: str, *args: str, index: int = 0) -> Run:
    env = {**CREDENTIALS, "AWS_ENDPOINT_URL": s3_endpoint, "AWS_BATCH_JOB_ARRAY_INDEX": str(index)}
    return run_worker(*args, env=env)


def keys(s3: Any, prefix: str) -> list[str]:
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def test_render_and_stitch_on_s3(s3: Any, s3_endpoint: str, tmp_path: Path) -> None:
    source, output = f"s3://{BUCKET}/scenes/sample.blend", f"s3://{BUCKET}/jobs/one"
    settings = ["-f", "1", "--frame-end", "2", "--resolution-percent", "25"]  # 80x45: odd height
    for index in (0, 1):
        run = worker(s3_endpoint, "render", "-i", source, "-o", output, *settings, index=index)
        assert run.returncode == 0, run.stderr
        assert f"frame {index + 1} done" in run.stdout
    assert keys(s3, "jobs/one/") == [
        "jobs/one/frames/0001.png",
        "jobs/one/frames/0002.png",
        "jobs/one/frames/scene.json",
    ]

    retry = worker(s3_endpoint, "render", "-i", source, "-o", output, *settings, index=1)
    assert "frame 2 skipped: already in s3://" in retry.stdout

    stitched = worker(s3_endpoint, "stitch", "-i", output, "-o", output)
    assert stitched.returncode == 0, stitched.stderr
    s3.download_file(BUCKET, "jobs/one/output.mp4", str(tmp_path / "output.mp4"))
    frames, stream = video_frames(tmp_path / "output.mp4")
    assert len(frames) == 2
    assert (stream.width, stream.height) == (80, 46)


def test_a_missing_object_fails_in_one_line(s3: Any, s3_endpoint: str) -> None:
    run = worker(s3_endpoint, "render", "-i", f"s3://{BUCKET}/scenes/absent.blend", "-o", f"s3://{BUCKET}/x", "-f", "1")
    assert run.returncode == 1
    assert run.error_lines == [f"kiln-render: error: cannot read s3://{BUCKET}/scenes/absent.blend: no such file"]
    assert keys(s3, "x/") == []
