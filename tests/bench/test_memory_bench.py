"""The memory benches: bench.memprobe --tls (OpenSSL's share of a node connection) and bench.conn_floor."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from bench.memprobe import SSL_MODE_RELEASE_BUFFERS, ssl_ctx_mode

REPO = Path(__file__).resolve().parents[2]


def test_the_mode_is_read_from_the_context_it_was_set_on() -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    mode = ssl_ctx_mode(context)
    assert mode is not None
    # CPython sets it on every context: OpenSSL frees an idle connection's record buffers.
    assert mode & SSL_MODE_RELEASE_BUFFERS


def test_a_pointer_that_does_not_answer_like_the_context_is_not_trusted() -> None:
    class Impostor(ssl.SSLContext):
        @property  # type: ignore[misc]
        def options(self) -> ssl.Options:  # what OpenSSL holds no longer matches
            return ssl.Options(0x1234)

    assert ssl_ctx_mode(Impostor(ssl.PROTOCOL_TLS_SERVER)) is None


def test_tls_report_runs_and_names_what_it_measured() -> None:
    result = subprocess.run([sys.executable, "-m", "bench.memprobe", "--tls", "5"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "SSL_MODE_RELEASE_BUFFERS set" in result.stdout
    assert "no client certificate" in result.stdout and "KiB" in result.stdout


def test_without_probes_or_tls_the_usage_says_what_to_give() -> None:
    result = subprocess.run([sys.executable, "-m", "bench.memprobe"], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert "give two probes" in result.stderr


@pytest.mark.parametrize("options, kind", [([], "mutual-TLS"), (["--plain"], "plain-TCP")])
def test_conn_floor_holds_its_connections_and_reports_per_connection(options: list[str], kind: str) -> None:
    result = subprocess.run([sys.executable, "-m", "bench.conn_floor", "--conns", "20", *options], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"20 {kind} websockets held" in result.stdout and "KB per connection" in result.stdout


def test_conn_floor_refuses_a_count_it_cannot_hold() -> None:
    result = subprocess.run([sys.executable, "-m", "bench.conn_floor", "--conns", "0"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--conns: between 1 and 20000" in result.stderr


def test_proxy_conns_reports_the_three_ways_in() -> None:
    result = subprocess.run([sys.executable, "-m", "bench.proxy_conns", "--conns", "10"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for mode in ("without the option", "with it, an address not listed", "with it, from the balancer"):
        assert mode in result.stdout and "KB per connection" in result.stdout, result.stdout
