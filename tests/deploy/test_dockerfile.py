"""The gateway image, checked without a Docker engine: hadolint, and the facts the chart relies on
(non-root user, entry point, health check, port, config path, build context)."""

from __future__ import annotations

import fnmatch
import json
import shlex
import subprocess
import tomllib

import yaml

from tests.deploy.k8s_support import CHART, REPO, TOOLS_SH

DOCKERFILE = REPO / "deploy" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def test_hadolint_passes() -> None:
    proc = subprocess.run([str(TOOLS_SH), "hadolint"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"deploy/tools.sh hadolint failed:\n{proc.stderr}"
    lint = subprocess.run([proc.stdout.strip(), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_multi_stage_build_copies_only_the_venv() -> None:
    froms = [args for word, args in instructions() if word == "FROM"]
    assert len(froms) >= 2 and " AS build" in froms[0]
    copies = [args for word, args in final_stage() if word == "COPY"]
    assert copies == ["--from=build /opt/venv /opt/venv"]


def test_dependencies_come_from_the_hashed_lock_before_the_code() -> None:
    """The lock alone decides the dependency layer (cached across code changes); the code comes after it."""
    steps = instructions()
    copies = [i for i, (word, args) in enumerate(steps) if word == "COPY" and not args.startswith("--from")]
    lock = next(i for i in copies if "deploy/requirements.lock" in steps[i][1])
    install = next(i for i, (word, args) in enumerate(steps) if word == "RUN" and "--require-hashes -r" in args)
    code = next(i for i in copies if steps[i][1].startswith("gateway"))
    assert copies[0] == lock < install < code


def test_final_stage_imports_the_installed_package_from_root_as_its_user() -> None:
    """The build's smoke test runs where no source tree can shadow the installed package."""
    stage = final_stage()
    smoke = next(i for i, (word, args) in enumerate(stage) if word == "RUN" and "import gateway.app" in args)
    before = stage[:smoke]
    assert [args for word, args in before if word == "WORKDIR"][-1] == "/"
    assert [args for word, args in before if word == "USER"] == [dict(stage)["USER"]]


def test_runs_as_non_root_with_the_console_script() -> None:
    stage = dict(final_stage())
    user = stage["USER"].split(":")[0]
    assert user.isdigit() and int(user) != 0
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert chart_values["gateway"]["podSecurityContext"]["runAsUser"] == int(user)
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert json.loads(stage["ENTRYPOINT"]) == ["crowd-gateway"] and "crowd-gateway" in scripts
    cmd = json.loads(stage["CMD"])
    assert cmd[:3] == ["serve", "--config", "/etc/crowd-gateway/config.yaml"]
    assert cmd[cmd.index("--port") + 1] == "8080" and stage["EXPOSE"] == "8080"


def test_health_check_probes_healthz() -> None:
    stage = dict(final_stage())
    assert "/healthz" in stage["HEALTHCHECK"] and "127.0.0.1:8080" in stage["HEALTHCHECK"]


def test_build_context_holds_what_copy_needs() -> None:
    """Every COPY source exists and survives .dockerignore (an allowlist); the venv and .git do not."""
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [p.strip() for p in lines if p.strip() and not p.startswith("#")]

    def included(path: str) -> bool:
        keep = True
        for pattern in patterns:
            negate = pattern.startswith("!")
            pattern = pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
                keep = negate
        return keep

    sources = []
    for word, args in instructions():
        if word == "COPY" and not args.startswith("--from"):
            sources += shlex.split(args)[:-1]
    assert sources, "no COPY from the build context"
    for source in sources:
        if any(c in source for c in "*?["):  # a glob may match nothing (an optional file)
            assert included(source.replace("[", "").replace("]", "")), f"COPY {source}: excluded by .dockerignore"
            continue
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        assert included(source), f"COPY {source}: excluded by .dockerignore"
    for private in (".venv", ".git", "tests", "deploy/rendered"):
        assert not included(private), f"{private} would be sent to the Docker daemon"
