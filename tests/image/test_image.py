"""The gateway's container image, built and run for real: deploy/image.sh builds it with podman (layers cached),
the container runs with its own command and port, the way the chart runs it (read-only root, /tmp a tmpfs, uid
10001, no capabilities, no new privileges), and answers /readyz and one annotation through the official client
from members served by the scripted upstream on the host's 127.0.0.1 (reached from the container's own network
namespace through slirp4netns, which forwards the published port back)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.harness import ROOT, Upstream, free_port, member

pytestmark = pytest.mark.image

IMAGE_SH = ROOT / "deploy" / "image.sh"
TAG = "localhost/crowd-gateway:image-tier"
UID = 10001
LOCKED_DOWN = ["--read-only", "--tmpfs", "/tmp", "--user", f"{UID}:{UID}", "--cap-drop", "ALL",
               "--security-opt", "no-new-privileges"]
MEMBERS = ("a", "b", "c")
HOST_LOOPBACK = "10.0.2.2"  # the host's 127.0.0.1 as slirp4netns shows it to the container
NETWORK = "slirp4netns:allow_host_loopback=true"


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    """podman with the configuration deploy/image.sh writes for this machine (runtime, cgroups, ulimits)."""
    proc = subprocess.run([str(IMAGE_SH), "podman", *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"podman {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def image() -> str:
    """The image id, built (or found up to date in the layer cache) by deploy/image.sh, whose progress goes to the
    terminal as it happens (`make test-image` runs pytest with -s)."""
    proc = subprocess.run([str(IMAGE_SH), "build", TAG], stdout=subprocess.PIPE, text=True, timeout=3600)
    assert proc.returncode == 0, "deploy/image.sh build failed: its output is above"
    return proc.stdout.strip().splitlines()[-1]


def gateway_config(upstream: Upstream) -> dict[str, Any]:
    base = upstream.url.replace("127.0.0.1", HOST_LOOPBACK)
    return {"members": [member(upstream, name, base_url=f"{base}/m/{name}/v1") for name in MEMBERS],
            "ensembles": [{"name": "crowd", "members": list(MEMBERS), "aggregator": "majority", "quorum": 2,
                           "deadline_s": 10}]}


class Container:
    """A gateway container, known by its id, its port 8080 published on the host's 127.0.0.1:`port`."""

    def __init__(self, cid: str, port: int) -> None:
        self.id = cid
        self.url = f"http://127.0.0.1:{port}"

    def wait_ready(self, timeout: float = 60) -> httpx.Response:
        """The first answer of /readyz; fails with the container's log if it exits or never answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                return httpx.get(f"{self.url}/readyz", timeout=2)
            except httpx.TransportError:
                state = podman("inspect", "--format", "{{.State.Running}}", self.id).stdout.strip()
                assert state == "true", f"the container exited:\n{self.logs()}"
                time.sleep(0.2)
        raise AssertionError(f"/readyz did not answer within {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        proc = podman("logs", self.id, check=False)
        return proc.stdout + proc.stderr

    def host_pid(self) -> int:
        return int(podman("inspect", "--format", "{{.State.Pid}}", self.id).stdout)


@pytest.fixture(scope="module")
def container(image: str, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    for name in MEMBERS:
        upstream.script(name, answer="positive")
    config = tmp_path_factory.mktemp("image") / "config.yaml"
    config.write_text(yaml.safe_dump(gateway_config(upstream)))
    config.chmod(0o644)
    port = free_port()
    # No health-check timer (it needs systemd); `podman healthcheck run` still runs the image's check.
    run = podman("run", "--detach", *LOCKED_DOWN, "--network", NETWORK, "--publish", f"127.0.0.1:{port}:8080",
                 "--health-interval", "disable", "--volume", f"{config}:/etc/crowd-gateway/config.yaml:ro", image)
    served = Container(run.stdout.strip(), port)
    try:
        yield served
    finally:
        podman("stop", "--time", "10", served.id, check=False)
        podman("rm", "--force", served.id, check=False)


def test_ready_and_annotates_through_the_official_client(container: Container) -> None:
    from openai import OpenAI

    ready = container.wait_ready()
    assert ready.status_code == 200, ready.text
    client = OpenAI(base_url=f"{container.url}/v1", api_key="unused", max_retries=0)
    answer = client.chat.completions.create(model="crowd", messages=[{"role": "user", "content": "Great film!"}],
                                            extra_body={"labels": ["positive", "negative"]})
    assert answer.choices[0].message.content == "positive"
    annotation = answer.model_extra["annotation"]
    assert annotation["label"] == "positive"
    assert sorted(vote["member"] for vote in annotation["votes"]) == sorted(MEMBERS)


def test_serves_as_uid_10001_without_capabilities_on_a_read_only_root(container: Container) -> None:
    container.wait_ready()
    status = dict(line.split(":", 1) for line in
                  Path(f"/proc/{container.host_pid()}/status").read_text().splitlines())
    assert status["Uid"].split() == [str(UID)] * 4 and status["Gid"].split() == [str(UID)] * 4
    assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
    assert status["NoNewPrivs"].strip() == "1"
    as_root = podman("exec", "--user", "0", container.id, "touch", "/probe", check=False)
    assert as_root.returncode != 0 and "Read-only file system" in as_root.stderr
    podman("exec", container.id, "touch", "/tmp/probe")  # the tmpfs stays writable


def test_health_check_of_the_image_passes(container: Container) -> None:
    container.wait_ready()
    assert podman("healthcheck", "run", container.id, check=False).returncode == 0


def test_installed_package_imports_from_outside_any_source_tree(image: str) -> None:
    """The smoke test the build runs, again on the finished image: from /, as the runtime user, read-only."""
    probe = ("import gateway, gateway.app, routers, ensembles, os; "
             "print(gateway.__file__, os.path.exists('/src'))")
    run = podman("run", "--rm", *LOCKED_DOWN, "--network", "none", "--workdir", "/", "--entrypoint", "python",
                 image, "-c", probe)
    location, source_tree = run.stdout.split()
    assert location.startswith("/opt/venv/lib/") and source_tree == "False"
