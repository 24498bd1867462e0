"""A short run of bench/load.py (8 boto3 clients for 10 s) against a real server: zero errors, no 5xx."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import start_server

BENCH = Path(__file__).resolve().parents[2] / "bench" / "load.py"


def test_eight_clients_for_ten_seconds_without_an_error(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    try:
        command = [sys.executable, str(BENCH), "--endpoint-url", server.endpoint, "--clients", "8", "--duration", "10"]
        result = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=180, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        report = json.loads(result.stdout)
        assert report["errors"] == 0 and report["server_errors"] == 0, report["error_samples"]
        for operation in ("submit", "describe", "list"):
            assert report["operations"][operation]["count"] > 0, report
        assert report["jobs_submitted"] == report["operations"]["submit"]["count"]
    finally:
        server.stop()
    log = (tmp_path / f"server-{server.port}.log").read_text()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
