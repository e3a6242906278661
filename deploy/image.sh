#!/usr/bin/env bash
# Builds the gateway's container image (deploy/Dockerfile) with podman on a Debian machine that can reach
# only package registries: registry images cannot be pulled, so the base image is bootstrapped from Debian
# packages with mmdebstrap (same suite as the host, python3 and venv from Debian) and kept as a local image
# named after a hash of its recipe. Podman is configured for VMs without systemd, with cgroup v1 and low
# resource limits (runc, cgroupfs, default_ulimits) through the containers.conf this script writes and points
# CONTAINERS_CONF at. pip inside the build sees the host's CA bundle and index settings (build secrets, never
# stored in a layer). Layers are cached: after a code-only change only the project's wheel is rebuilt.
# Runs as root (what CI does): rootful podman, mmdebstrap in root mode.
# Usage: deploy/image.sh build [TAG]      build (cached), print the image id; TAG defaults to crowd-gateway:dev
#        deploy/image.sh podman ARGS...   podman with this script's configuration (the image tier runs it)
# CROWD_CACHE overrides ~/.cache/crowd-gateway (the containers.conf and the build lock live under it).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${CROWD_CACHE:-$HOME/.cache/crowd-gateway}"
STATE="$CACHE/podman"
export CONTAINERS_CONF="$STATE/containers.conf"
BASE_PACKAGES="python3,python3-venv,ca-certificates,passwd"
# Below this VM's hard limits (open files 20000, processes 96551): podman asks for more by default and runc fails.
ULIMITS='"nofile=8192:8192", "nproc=8192:8192"'
[ "$(id -u)" -eq 0 ] || { echo "image: run as root (rootful podman; mmdebstrap in root mode)" >&2; exit 1; }

install_tools() {
  local need=()
  command -v podman >/dev/null || need+=(podman)
  command -v runc >/dev/null || need+=(runc)
  command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
  command -v slirp4netns >/dev/null || need+=(slirp4netns)   # a container's own network that reaches the host
  [ ${#need[@]} -eq 0 ] && return 0
  echo "image: installing ${need[*]} from Debian (once)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

configure_podman() {
  mkdir -p "$STATE"
  local conf
  conf=$(cat <<EOF
# Written by deploy/image.sh (CONTAINERS_CONF points here). runc: crun fails on this VM's cgroup v1 hierarchy;
# cgroupfs and a file event log: no systemd; default_ulimits: a container's limits must stay below the host's.
[containers]
default_ulimits = [$ULIMITS]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
)
  [ -f "$CONTAINERS_CONF" ] && [ "$(cat "$CONTAINERS_CONF")" = "$conf" ] && return 0
  printf '%s\n' "$conf" > "$CONTAINERS_CONF.tmp"
  mv -f "$CONTAINERS_CONF.tmp" "$CONTAINERS_CONF"
}

# The base image: a minimal Debian of the host's suite with python3 and venv. Its tag is a hash of the
# recipe below, so a changed recipe builds a new base and an unchanged one is never rebuilt.
base_image() {
  local suite mirror security recipe tag old
  suite="$(. /etc/os-release && [ "$ID" = debian ] && echo "$VERSION_CODENAME")" \
    || { echo "image: the base is bootstrapped from Debian; this host is not Debian" >&2; exit 1; }
  mirror="deb http://deb.debian.org/debian $suite $suite-updates main"
  security="deb http://deb.debian.org/debian-security $suite-security main"
  local args=(--variant=minbase --include="$BASE_PACKAGES"
              --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*'
              --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*'
              "$suite" - "$mirror" "$security")
  recipe="mmdebstrap ${args[*]}"
  tag="localhost/crowd-gateway-base:$(printf '%s' "$recipe" | sha256sum | cut -c1-16)"
  if ! podman image exists "$tag"; then
    echo "image: bootstrapping the base $tag with mmdebstrap ($suite; once per recipe)" >&2
    mmdebstrap --quiet "${args[@]}" \
      | podman import --quiet --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$tag" >/dev/null
    old=$(podman images --filter reference=localhost/crowd-gateway-base --format '{{.Repository}}:{{.Tag}}' \
          | grep -vx "$tag" || true)
    [ -z "$old" ] || podman rmi $old >/dev/null
  fi
  echo "$tag"
}

# Writes to $1 the host's pip settings that matter inside the build (index, extra index, trusted hosts, timeout;
# from the pip config files and PIP_* variables, as pip itself reads them) with `cert` pointing at $2, where the
# build mounts the host's CA bundle; prints the path of that bundle (pip's `cert`, else the system's).
pip_config() {
  python3 - "$1" "$2" <<'PY'
import configparser, os, sys
here = os.path.expanduser
files = ["/etc/xdg/pip/pip.conf", "/etc/pip.conf", here("~/.pip/pip.conf"), here("~/.config/pip/pip.conf")]
if os.environ.get("PIP_CONFIG_FILE"):
    files.append(os.environ["PIP_CONFIG_FILE"])
parser = configparser.RawConfigParser()
parser.read(files)
keys = ["index-url", "extra-index-url", "trusted-host", "timeout", "retries", "cert"]
settings = {k: parser.get(s, k) for s in ("global", "install") if parser.has_section(s)
            for k in keys if parser.has_option(s, k)}
for key in keys:
    env = os.environ.get("PIP_" + key.upper().replace("-", "_")) or (
        os.environ.get("PIP_DEFAULT_TIMEOUT") if key == "timeout" else None)
    if env:
        settings[key] = env
for key in ("index-url", "extra-index-url"):  # a file:// index is a directory of the host, not of the build
    urls = [url for url in settings.get(key, "").split() if not url.startswith("file:")]
    settings.pop(key, None)
    if urls:
        settings[key] = " ".join(urls)
ca = settings.pop("cert", None) or os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt"
if not os.access(ca, os.R_OK):
    sys.exit(f"image: no readable CA bundle at {ca}")
settings["cert"] = sys.argv[2]
with open(sys.argv[1], "w") as out:
    out.write("[global]\n")
    for key, value in settings.items():
        out.write(f"{key} = " + "\n    ".join(value.split()) + "\n")
print(ca)
PY
}

build() {
  local tag="${1:-crowd-gateway:dev}" base work ca before after
  base="$(base_image)"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' RETURN
  ca="$(pip_config "$work/pip.conf" /etc/ssl/certs/pip-ca.crt)"
  before="$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)"
  echo "image: building $tag (deploy/Dockerfile; cached layers are reused, a cold build takes minutes)" >&2
  # Each step's line goes to stderr as it starts, so a long build shows where it is.
  podman build --format=docker --layers --pull=never --network=host -f "$REPO/deploy/Dockerfile" \
    --build-arg PYTHON_IMAGE="$base" --secret id=pip.conf,src="$work/pip.conf" \
    --secret id=pip-ca.crt,src="$ca" -t "$tag" "$REPO" >&2
  after="$(podman image inspect --format '{{.Id}}' "$tag")"
  # The image this tag named before, and the layers only it used: gone, so rebuilds do not pile up.
  if [ -n "$before" ] && [ "$before" != "$after" ]; then podman rmi "$before" >/dev/null 2>&1 || true; fi
  echo "$after"
}

case "${1:-build}" in
  build)
    install_tools; configure_podman
    exec 9>"$STATE/build.lock"; flock 9   # one build at a time on this machine
    build "${2:-}" ;;
  podman) shift; install_tools; configure_podman; exec podman "$@" ;;
  *) echo "usage: $0 build [TAG] | podman ARGS..." >&2; exit 2 ;;
esac
