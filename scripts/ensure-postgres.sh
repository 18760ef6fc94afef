#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers on 127.0.0.1:5432 with a `test` database and trust auth,
# installing Debian's package and starting a cluster when none runs. Tests that need it read
# RILLET_TEST_POSTGRES_URL (default postgresql+psycopg://postgres@127.0.0.1:5432/test).
set -euo pipefail
ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
if command -v pg_isready >/dev/null && ready; then
  psql -h 127.0.0.1 -U postgres -tAc "select 1 from pg_database where datname='test'" postgres 2>/dev/null | grep -q 1 \
    || createdb -h 127.0.0.1 -U postgres test 2>/dev/null || true
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "PostgreSQL is not running on 127.0.0.1:5432 and installing it needs root." >&2
  echo "Start one (see docker-compose.yml) or set RILLET_TEST_POSTGRES_URL to a reachable server." >&2
  exit 1
fi
if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
  echo "Installing PostgreSQL from Debian's packages..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
version=$(ls /etc/postgresql | sort -V | tail -n 1)
conf=/etc/postgresql/$version/main
# Loopback only, trust auth: a throwaway test server.
sed -i "s/^#\?listen_addresses.*/listen_addresses = '127.0.0.1'/" "$conf/postgresql.conf"
cat > "$conf/pg_hba.conf" <<HBA
local all all trust
host all all 127.0.0.1/32 trust
host all all ::1/128 trust
HBA
pg_ctlcluster --skip-systemctl-redirect "$version" main start || pg_ctlcluster --skip-systemctl-redirect "$version" main restart
for _ in $(seq 30); do ready && break; sleep 1; done
ready || { echo "PostgreSQL did not start; see /var/log/postgresql/" >&2; exit 1; }
createdb -h 127.0.0.1 -U postgres test 2>/dev/null || true
