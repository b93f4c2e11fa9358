#!/usr/bin/env bash
# Installs the services the integration tests start themselves (today: Debian's PostgreSQL for
# tests/test_deployment.py, run through scripts/pg.sh). Idempotent: does nothing when present.
# Source it and call ci_services, or run it.
set -euo pipefail

ci_services() {
  if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    return 0
  fi
  if ! command -v apt-get >/dev/null; then
    echo "ci-services: no PostgreSQL and no apt-get; tests/test_deployment.py will skip" >&2
    return 0
  fi
  if [[ $(id -u) -ne 0 ]]; then
    echo "ci-services: PostgreSQL is not installed (apt-get install postgresql as root);" \
         "tests/test_deployment.py will skip" >&2
    return 0
  fi
  env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  ci_services
fi
