#!/bin/sh
# Initialises the database cluster on first start, then runs PostgreSQL in the foreground.
set -eu
bin=/usr/lib/postgresql/15/bin
data=/var/lib/postgresql/data/pgdata
: "${POSTGRES_USER:=cyxcloud}" "${POSTGRES_DB:=$POSTGRES_USER}" "${PGPORT:=5432}"
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
: "${LISTEN_ADDRESSES:=127.0.0.1}"
if [ ! -s "$data/PG_VERSION" ]; then
  pw=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pw"
  "$bin/initdb" -D "$data" -U "$POSTGRES_USER" --pwfile="$pw" --auth=scram-sha-256 -E UTF8 >/dev/null
  rm -f "$pw"
  "$bin/pg_ctl" -D "$data" -o "-p $PGPORT -c listen_addresses=''" -w start >/dev/null
  if [ "$POSTGRES_DB" != postgres ]; then
    PGPASSWORD=$POSTGRES_PASSWORD "$bin/psql" -h /run/postgresql -p "$PGPORT" -U "$POSTGRES_USER" \
      -d postgres -qc "CREATE DATABASE \"$POSTGRES_DB\""
  fi
  "$bin/pg_ctl" -D "$data" -w stop >/dev/null
fi
exec "$bin/postgres" -D "$data" -p "$PGPORT" -c listen_addresses="$LISTEN_ADDRESSES" \
  -c unix_socket_directories=/run/postgresql
