# Shared by scripts/test and .ci/run: system packages, build environment, test services.
# shellcheck shell=bash

# Debian packages, in groups, each with a command or file that proves it is installed:
# - build: what compiling the daemons needs beyond Rust and a C compiler (the storage node
#   links Debian's RocksDB; bindgen needs libclang);
# - run: what `cyxcloud up` needs at run time (the drive mounts through fusermount3);
# - test: what the test command needs on top (database and cache servers, the S3 clients,
#   systemd-analyze for the installers' unit files).
CYX_PACKAGES_BUILD=(
  "clang:clang"
  "libclang-dev:/usr/lib/llvm-14/lib/libclang.so"
  "librocksdb-dev:/usr/include/rocksdb/db.h"
  "pkg-config:pkg-config"
)
CYX_PACKAGES_RUN=(
  "fuse3:fusermount3"
)
CYX_PACKAGES_TEST=(
  "postgresql:/usr/lib/postgresql"
  "redis-server:redis-server"
  "python3:python3"
  "procps:/usr/bin/kill"
  # Fault tests: a node partitioned off in its own network namespace.
  "iproute2:ip"
  "nftables:nft"
  # The drive tests run real tools on the mount.
  "git:git"
  # S3 API tests (gateway): real clients, and a venv for the PyPI ones.
  "rclone:rclone"
  "s3cmd:s3cmd"
  "s3fs:s3fs"
  "python3-venv:/usr/share/doc/python3-venv"
  # installers/check: unit files are verified with systemd-analyze.
  "systemd:systemd-analyze"
)

# PyPI clients of the S3 tests, in a venv the tests find through CYXCLOUD_S3_VENV.
CYX_S3_VENV=${CYXCLOUD_S3_VENV:-$HOME/.cache/cyxcloud-s3-venv}
CYX_PIP_PACKAGES=("boto3" "awscli")

cyx_log() { printf '\033[1m[cyxcloud]\033[0m %s\n' "$*" >&2; }

# Names of the packages of the given groups (build, run, test) that are not installed.
cyx_missing_packages() {
  local group list spec pkg probe
  for group in "$@"; do
    case $group in
      build | run | test) list="CYX_PACKAGES_${group^^}[@]" ;;
      *) cyx_log "unknown package group $group"; return 2 ;;
    esac
    for spec in "${!list}"; do
      pkg=${spec%%:*}
      probe=${spec#*:}
      if [[ $probe == /* ]]; then
        [[ -e $probe ]] || echo "$pkg"
      else
        command -v "$probe" >/dev/null 2>&1 || echo "$pkg"
      fi
    done
  done
}

# Installs the missing packages of the given groups (default: all) with apt-get when root;
# otherwise prints the exact command to run and fails.
cyx_ensure_packages() {
  local groups=("$@") missing=()
  ((${#groups[@]})) || groups=(build run test)
  mapfile -t missing < <(cyx_missing_packages "${groups[@]}" | sort -u)
  if ((${#missing[@]})); then
    if ! command -v apt-get >/dev/null; then
      cyx_log "missing system packages (Debian names): ${missing[*]}; install their equivalents and run again"
      return 1
    fi
    if [[ $(id -u) != 0 ]]; then
      cyx_log "missing system packages: ${missing[*]}"
      cyx_log "install them with:  sudo apt-get install -y ${missing[*]}"
      return 1
    fi
    cyx_log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 || {
      apt-get update -q >/dev/null
      apt-get install -y -q "${missing[@]}" >/dev/null
    }
  fi
  if [[ " ${groups[*]} " == *" test "* ]]; then
    cyx_ensure_pip_clients
  fi
}

# boto3 and aws-cli (PyPI) in $CYX_S3_VENV; nothing to do when they already import.
cyx_ensure_pip_clients() {
  export CYXCLOUD_S3_VENV=$CYX_S3_VENV
  if "$CYX_S3_VENV/bin/python" -c 'import boto3, awscli' >/dev/null 2>&1 && [[ -x $CYX_S3_VENV/bin/aws ]]; then
    return 0
  fi
  cyx_log "installing ${CYX_PIP_PACKAGES[*]} (PyPI) into $CYX_S3_VENV"
  local py=/usr/bin/python3
  [[ -x $py ]] || py=python3
  "$py" -m venv "$CYX_S3_VENV" && "$CYX_S3_VENV/bin/pip" install -q --disable-pip-version-check "${CYX_PIP_PACKAGES[@]}"
}

# rust-toolchain.toml pins 1.95.0. A machine whose rustup only has "stable" at that version
# gets the name linked to it, so nothing is downloaded.
cyx_ensure_toolchain() {
  local want
  want=$(sed -n 's/^channel = "\(.*\)"/\1/p' rust-toolchain.toml)
  command -v rustup >/dev/null || return 0
  rustup toolchain list | grep -q "^$want" && return 0
  if [[ $(rustc +stable --version 2>/dev/null | awk '{print $2}') == "$want" ]]; then
    cyx_log "naming the installed stable toolchain $want"
    local dir=${RUSTUP_HOME:-$HOME/.rustup}/toolchains
    ln -sfn "$(rustc +stable --print sysroot)" "$dir/$want-$(rustc +stable -vV | sed -n 's/^host: //p')"
  fi
}

cyx_export_build_env() {
  # .cargo/config.toml points ROCKSDB_LIB_DIR at Debian's librocksdb (1 min cold build instead
  # of 22 min compiling RocksDB from C++). Nothing else to export today.
  :
}

# Starts throwaway PostgreSQL and Redis servers for the tests and exports their URLs as
# CYXCLOUD_TEST_DATABASE_URL and CYXCLOUD_TEST_REDIS_URL. Stopped when the shell exits.
cyx_start_services() {
  CYX_SERVICES_DIR=$(mktemp -d /tmp/cyxcloud-services.XXXXXX)
  chmod 755 "$CYX_SERVICES_DIR"
  trap cyx_stop_services EXIT
  local pgbin port rport
  pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  port=$(cyx_free_port)
  rport=$(cyx_free_port)
  if [[ -n $pgbin ]]; then
    local pgdata=$CYX_SERVICES_DIR/pg
    mkdir -p "$pgdata" && chown postgres: "$pgdata" 2>/dev/null || true
    local as_pg=()
    [[ $(id -u) == 0 ]] && as_pg=(runuser -u postgres --)
    "${as_pg[@]}" "$pgbin/initdb" -D "$pgdata" -U cyxcloud --auth=trust -E UTF8 >/dev/null
    "${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgdata" -l "$pgdata/log" -w \
      -o "-p $port -k $pgdata -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null
    CYX_PG=("${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgdata")
    export CYXCLOUD_TEST_DATABASE_URL="postgres://cyxcloud@127.0.0.1:$port/postgres"
    cyx_log "PostgreSQL on 127.0.0.1:$port"
  fi
  if command -v redis-server >/dev/null; then
    redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
      --dir "$CYX_SERVICES_DIR" --pidfile "$CYX_SERVICES_DIR/redis.pid" --logfile "$CYX_SERVICES_DIR/redis.log"
    export CYXCLOUD_TEST_REDIS_URL="redis://127.0.0.1:$rport/"
    cyx_log "Redis on 127.0.0.1:$rport"
  fi
}

cyx_stop_services() {
  [[ -n ${CYX_PG:-} ]] && "${CYX_PG[@]}" -m immediate -w stop >/dev/null 2>&1 || true
  if [[ -f ${CYX_SERVICES_DIR:-}/redis.pid ]]; then
    local pid
    pid=$(cat "$CYX_SERVICES_DIR/redis.pid")
    kill "$pid" 2>/dev/null || true
    # Redis writes its log on the way out: removing the directory before it is gone races
    # with that write ("Directory not empty") and would fail the test command.
    for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  fi
  if [[ -n ${CYX_SERVICES_DIR:-} ]]; then
    rm -rf "$CYX_SERVICES_DIR" 2>/dev/null || rm -rf "$CYX_SERVICES_DIR" 2>/dev/null || true
  fi
}

cyx_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
