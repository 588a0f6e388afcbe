#!/bin/sh
# Installs and starts a CyxCloud storage node on this machine (Debian/Ubuntu, as root):
# installs the cyxcloud-node package, writes /etc/cyxcloud/node.toml from a few questions
# (or flags), starts the service and prints the node's status once it has registered.
#
#   sudo sh install-node.sh                                   # asks the questions
#   sudo sh install-node.sh --package ./cyxcloud-node_*.deb --gateway gw.example.com \
#        --storage-gb 500 --name node-7 --region eu --datacenter fra1 --rack r3 --yes
#
# Flags: --package DEB (default: the cyxcloud-node package from the configured apt sources),
# --gateway HOST[:HTTP_PORT] (the gateway; its gRPC port comes from its /api/info),
# --storage-gb N, --name NAME, --region R, --datacenter D, --rack K,
# --public-address URL (how others reach this node's gRPC, e.g. http://203.0.113.7:50051),
# --grpc-port P, --p2p-port P, --metrics-port P, --bootstrap MULTIADDR,
# --ca-cert F (the cluster CA, the gateway's /var/lib/cyxcloud-gateway/tls/ca.pem; on the
# gateway's machine it is found there),
# --join-token-file F (the cluster's join token, the gateway's /etc/cyxcloud/join-token;
# without it the one already in /etc/cyxcloud/join-token, or the operator account, is used),
# --email E --password-file F (the operator account: first login of the node),
# --yes (never ask: flags and defaults only), --timeout SECS (wait for registration, 120).
set -eu

die() { echo "install-node: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (sudo sh $0 ...)"

package="" gateway="" storage_gb="" name="" region="" datacenter="" rack="" public_address=""
grpc_port=50051 p2p_port=4001 metrics_port=9090 bootstrap="" email="" password_file=""
join_token_file="" ca_cert=""
yes=0 timeout=120
while [ $# -gt 0 ]; do
  case $1 in
    --package) package=$2; shift ;;
    --gateway) gateway=$2; shift ;;
    --storage-gb) storage_gb=$2; shift ;;
    --name) name=$2; shift ;;
    --region) region=$2; shift ;;
    --datacenter) datacenter=$2; shift ;;
    --rack) rack=$2; shift ;;
    --public-address) public_address=$2; shift ;;
    --grpc-port) grpc_port=$2; shift ;;
    --p2p-port) p2p_port=$2; shift ;;
    --metrics-port) metrics_port=$2; shift ;;
    --bootstrap) bootstrap=$2; shift ;;
    --join-token-file) join_token_file=$2; shift ;;
    --ca-cert) ca_cert=$2; shift ;;
    --email) email=$2; shift ;;
    --password-file) password_file=$2; shift ;;
    --yes | -y) yes=1 ;;
    --timeout) timeout=$2; shift ;;
    -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done

# ask VAR "question" DEFAULT: keeps a value given by flag, else asks (or takes the default).
ask() {
  eval "cur=\${$1}"
  if [ -n "$cur" ]; then return; fi
  if [ "$yes" = 1 ] || [ ! -t 0 ]; then
    eval "$1=\$3"
    return
  fi
  printf '%s [%s]: ' "$2" "$3"
  read -r answer || answer=""
  [ -n "$answer" ] || answer=$3
  eval "$1=\$answer"
}

ask gateway "Gateway address (host or host:port of its HTTP API)" "localhost:8080"
ask storage_gb "Storage to offer, in GB" "100"
ask name "Node name" "$(hostname)"
ask region "Region (empty: none)" ""
ask datacenter "Datacenter (empty: none)" ""
ask rack "Rack (empty: none)" ""

case $storage_gb in '' | *[!0-9.]*) die "--storage-gb must be a number, not '$storage_gb'" ;; esac
for p in "$grpc_port" "$p2p_port" "$metrics_port"; do
  case $p in '' | *[!0-9]*) die "ports are numbers, not '$p'" ;; esac
done
case $gateway in http://* | https://*) http=$gateway ;; *) http=https://$gateway ;; esac
case ${http#*://} in *:*) ;; *) http=$http:8080 ;; esac
if [ -n "$email" ] && [ -z "$password_file" ]; then
  die "--email needs --password-file (the operator account's password, one line)"
fi

# 1. The package.
export DEBIAN_FRONTEND=noninteractive
if [ -n "$package" ]; then
  [ -f "$package" ] || die "no such package file: $package"
  case $package in /*) ;; *) package=$(pwd)/$package ;; esac
  apt-get install -y -q "$package" >/dev/null || {
    apt-get update -q >/dev/null
    apt-get install -y -q "$package" >/dev/null
  }
elif ! dpkg-query -W -f='${Status}' cyxcloud-node 2>/dev/null | grep -q 'ok installed'; then
  apt-get install -y -q cyxcloud-node >/dev/null ||
    die "cannot install cyxcloud-node from the apt sources; pass --package with the .deb"
fi

# 2. Where the gateway's gRPC API is: its /api/info names the port (the host is the one we
# reach its HTTP API at: the gateway may report a wildcard bind address).
command -v curl >/dev/null || apt-get install -y -q curl >/dev/null
# The cluster CA: given, or the gateway's own on its machine; kept as /etc/cyxcloud/ca.pem.
[ -n "$ca_cert" ] || [ ! -r /var/lib/cyxcloud-gateway/tls/ca.pem ] || ca_cert=/var/lib/cyxcloud-gateway/tls/ca.pem
if [ -n "$ca_cert" ]; then
  [ -r "$ca_cert" ] || die "cannot read the CA certificate $ca_cert"
  install -m 0644 "$ca_cert" /etc/cyxcloud/ca.pem
fi
case $http in
  https://*) [ -r /etc/cyxcloud/ca.pem ] ||
    die "the gateway serves TLS: give its cluster CA with --ca-cert (its /var/lib/cyxcloud-gateway/tls/ca.pem)" ;;
esac
host=${http#*://}
host=${host%:*}
info=$(curl -fsS --max-time 10 --cacert /etc/cyxcloud/ca.pem "$http/api/info" 2>/dev/null) ||
  die "the gateway does not answer at $http/api/info; check --gateway, --ca-cert and that it runs"
grpc_port_gw=$(printf '%s' "$info" | sed -n 's/.*"grpc_address":"[^"]*:\([0-9][0-9]*\)".*/\1/p')
[ -n "$grpc_port_gw" ] || die "$http/api/info does not look like a CyxCloud gateway: $info"
case $info in *'"grpc_address":"https://'*) grpc=https://$host:$grpc_port_gw ;; *) grpc=http://$host:$grpc_port_gw ;; esac

# 3. The configuration.
peers="[]"
[ -z "$bootstrap" ] || peers="[\"$bootstrap\"]"
register_api=false
if [ -n "$email" ]; then
  register_api=true
  install -m 0640 -g cyxcloud "$password_file" /etc/cyxcloud/node-password
  printf 'CYXWIZ_EMAIL=%s\nCYXWIZ_PASSWORD_FILE=/etc/cyxcloud/node-password\n' "$email" \
    > /etc/cyxcloud/node.env
fi
umask 027
if [ -n "$join_token_file" ]; then
  [ -r "$join_token_file" ] || die "cannot read the join token file $join_token_file"
  if [ "$(readlink -f "$join_token_file")" != /etc/cyxcloud/join-token ]; then
    install -m 0640 -g cyxcloud "$join_token_file" /etc/cyxcloud/join-token
  fi
elif [ ! -e /etc/cyxcloud/join-token ] && [ -z "$email" ]; then
  echo "install-node: no join token (--join-token-file) and no operator account (--email):" \
    "the gateway will refuse this node until /etc/cyxcloud/join-token holds the cluster's token" >&2
fi
cat > /etc/cyxcloud/node.toml <<TOML
# Written by install-node.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ); edit and restart the service.
[node]
id = ""
name = "$name"
region = "$region"
datacenter = "$datacenter"
rack = "$rack"

[storage]
data_dir = "/var/lib/cyxcloud-node"
max_capacity_gb = $storage_gb
compression = true

[network]
bind_address = "0.0.0.0"
grpc_port = $grpc_port
p2p_port = $p2p_port
public_address = "$public_address"
bootstrap_peers = $peers

[central]
address = "$grpc"
register = true
join_token_file = "/etc/cyxcloud/join-token"
ca_cert_file = "/etc/cyxcloud/ca.pem"

[cyxwiz_api]
base_url = "$http"
register = $register_api

[metrics]
enabled = true
port = $metrics_port
TOML
chgrp cyxcloud /etc/cyxcloud/node.toml

# 4. Start it and wait until it has registered with the gateway.
if [ ! -d /run/systemd/system ]; then
  die "systemd does not run this machine: start the node with
  runuser -u cyxcloud -- cyxcloud-node --config /etc/cyxcloud/node.toml"
fi
systemctl enable cyxcloud-node.service >/dev/null 2>&1
systemctl restart cyxcloud-node.service
deadline=$(($(date +%s) + timeout))
health=""
while [ "$(date +%s)" -lt "$deadline" ]; do
  if ! systemctl is-active --quiet cyxcloud-node.service &&
    [ "$(systemctl show -p ActiveState --value cyxcloud-node.service)" = failed ]; then
    journalctl -u cyxcloud-node.service -n 20 --no-pager >&2 || true
    die "the node failed to start (log above)"
  fi
  health=$(curl -fsS --max-time 2 "http://127.0.0.1:$metrics_port/health" 2>/dev/null || true)
  case $health in *'"registered":true'*) break ;; esac
  sleep 1
done
case $health in
  *'"registered":true'*) ;;
  *)
    journalctl -u cyxcloud-node.service -n 20 --no-pager >&2 || true
    die "the node did not register with the gateway at $grpc within ${timeout}s (log above)"
    ;;
esac
echo "cyxcloud-node is running and registered with $grpc"
echo "$health"
echo "Status: systemctl status cyxcloud-node; metrics: http://127.0.0.1:$metrics_port/metrics"
