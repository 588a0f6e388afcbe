#!/bin/sh
# Runs the rebalancer when it has the admin credentials. Without them it cannot work (the
# gateway made its own key at first start and printed it once: `podman-compose logs gateway`),
# so it says so and exits 0, and compose (restart: on-failure) leaves it stopped instead of
# restarting it forever. Set CYXCLOUD_ACCESS_KEY and CYXCLOUD_SECRET_KEY, then
# `podman-compose up -d rebalancer`.
set -eu
if [ -z "${CYXCLOUD_ACCESS_KEY:-}" ] || [ -z "${CYXCLOUD_SECRET_KEY:-}" ]; then
  echo "cyxcloud-rebalancer: not started: set CYXCLOUD_ACCESS_KEY and CYXCLOUD_SECRET_KEY" \
    "(the gateway's admin key)" >&2
  exit 0
fi
exec /usr/bin/cyxcloud-rebalancer --config /etc/cyxcloud/rebalancer.toml "$@"
