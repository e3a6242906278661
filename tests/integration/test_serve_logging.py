"""What `crowd-gateway serve` logs at the default level: a startup line with the config summary, a warning
when auth is off, and each request only with `--access-log` (issue 14: it logged nothing)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml

from tests.harness import Upstream, start_gateway


def serve_output(upstream: Upstream, tmp_path: Path, *extra: str) -> tuple[str, str]:
    """Start `serve`, call /healthz once, stop it; its stdout and stderr."""
    config = {"members": [{"name": n, "base_url": upstream.base_url(n), "model": n} for n in ("l1", "l2")],
              "ensembles": [{"name": "crowd", "members": ["l1", "l2"], "quorum": 1}]}
    (tmp_path / "gw.yaml").write_text(yaml.safe_dump(config))
    gw = start_gateway(tmp_path / "gw.yaml", tmp_path, env={"CROWD_GATEWAY_API_KEYS": ""}, args=extra, pipes=True)
    try:
        httpx.get(f"{gw.url}/healthz").raise_for_status()
    finally:
        gw.close()
    out, err = gw.proc.communicate()
    return out, err


@pytest.mark.parametrize("access_log", [False, True])
def test_startup_line_auth_warning_and_optional_access_log(upstream: Upstream, tmp_path: Path,
                                                           access_log: bool) -> None:
    out, err = serve_output(upstream, tmp_path, *(["--access-log"] if access_log else []))
    assert "ensembles crowd (2 members, majority); 2 members; store memory; auth off" in err
    assert "WARNING:  auth is off: $CROWD_GATEWAY_API_KEYS is empty" in err
    assert ('"GET /healthz HTTP/1.1" 200' in out) is access_log
