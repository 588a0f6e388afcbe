# Shared by installers/build, installers/check, installers/fresh-root and installers/test-*.
# shellcheck shell=bash

# Where clean Debian roots made by debootstrap are kept between runs.
CYX_ROOTS=${CYXCLOUD_ROOTS:-/var/tmp/cyxcloud-roots}
CYX_SUITE=bookworm
CYX_MIRROR=${CYXCLOUD_DEBIAN_MIRROR:-http://deb.debian.org/debian}

# The packages' version: the workspace version, then the commit count and hash, so every
# commit's packages upgrade the previous ones.
cyx_package_version() {
  local v n h
  v=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
  n=$(git rev-list --count HEAD 2>/dev/null || echo 0)
  h=$(git rev-parse --short=8 HEAD 2>/dev/null || echo 0)
  echo "$v+git$n.$h"
}

# Debian packages that provide the shared libraries the given binaries link, comma separated.
cyx_shlib_depends() {
  local libs
  libs=$(ldd "$@" | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u)
  [[ -n $libs ]] || return 0
  local lib pkgs=()
  for lib in $libs; do
    pkgs+=("$(dpkg -S "$(readlink -f "$lib")" 2>/dev/null | head -1 | cut -d: -f1)")
    [[ -n ${pkgs[-1]} ]] || pkgs[-1]=$(dpkg -S "$lib" | head -1 | cut -d: -f1)
  done
  printf '%s\n' "${pkgs[@]}" | sort -u | paste -sd, | sed 's/,/, /g'
}

# A maintainer script with the shared system-user functions in place of @SYSTEM_USER@.
cyx_inline_system_user() {
  local shared
  shared=$(grep -v '^#' "$(dirname "${BASH_SOURCE[0]}")/debian/system-user.sh")
  awk -v shared="$shared" '$0 == "@SYSTEM_USER@" { print shared; next } { print }'
}

# podman on these machines: runc (crun refuses cgroups v1 hybrid mode) and resource limits
# no higher than the ones the machine allows (the defaults ask for more and are refused).
cyx_podman_env() {
  command -v podman >/dev/null || {
    [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null || {
      echo "podman is not installed" >&2
      return 1
    }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman podman-compose runc >/dev/null
  }
  if [[ -z ${CONTAINERS_CONF:-} && ! -e /etc/containers/containers.conf ]]; then
    export CONTAINERS_CONF=$CYX_ROOTS/containers.conf
    mkdir -p "$CYX_ROOTS"
    local nofile nproc
    nofile=$(ulimit -Hn)
    nproc=$(($(ulimit -Hu) < 32768 ? $(ulimit -Hu) : 32768))
    cat > "$CONTAINERS_CONF" <<CONF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
CONF
  fi
}

# A clean Debian root (debootstrap, minbase variant) at $CYX_ROOTS/NAME, made once.
cyx_clean_root() {
  local name=$1 dir=$CYX_ROOTS/$1
  if [[ ! -x $dir/bin/sh ]]; then
    command -v debootstrap >/dev/null ||
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null
    rm -rf "$dir.tmp"
    mkdir -p "$CYX_ROOTS"
    cyx_log "debootstrap $CYX_SUITE (minbase) into $dir"
    debootstrap --variant=minbase "$CYX_SUITE" "$dir.tmp" "$CYX_MIRROR" >"$CYX_ROOTS/$name.log" 2>&1 || {
      tail -20 "$CYX_ROOTS/$name.log" >&2
      return 1
    }
    mv "$dir.tmp" "$dir"
  fi
  echo "$dir"
}

# The base image of every CyxCloud container: the clean root, imported into podman.
cyx_base_image() {
  if ! podman image exists localhost/cyxcloud/debian:$CYX_SUITE; then
    local root
    root=$(cyx_clean_root base)
    cyx_log "importing $root as localhost/cyxcloud/debian:$CYX_SUITE"
    tar -C "$root" -c . | podman import -q - "localhost/cyxcloud/debian:$CYX_SUITE" >/dev/null
  fi
}

# podman-compose from PyPI in a venv: Debian 12's 1.0.3 adds a bridge network to services with
# `network_mode: host` and podman refuses them.
cyx_podman_compose() {
  local venv=$CYX_ROOTS/compose-venv
  if [[ ! -x $venv/bin/podman-compose ]]; then
    mkdir -p "$CYX_ROOTS"
    /usr/bin/python3 -m venv "$venv" >&2
    "$venv/bin/pip" install -q --disable-pip-version-check "podman-compose>=1.1" >&2
  fi
  echo "$venv/bin/podman-compose"
}
