#!/usr/bin/env bash
# Start a local Hazelcast member (JVM, open-source jars) in the background:
# pid file + log file under --dir, returns once the member is ready or fails
# after --timeout seconds. Options: see `obf-features member start --help`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
"$root/deploy/hazelcast/fetch-jars.sh"
exec "${OBF_PYTHON:-$root/.venv/bin/python}" -m obf_features_worker.cli member start "$@"
