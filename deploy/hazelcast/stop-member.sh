#!/usr/bin/env bash
# Stop the local member started by start-member.sh (same --dir): SIGTERM, then
# SIGKILL after a deadline. Idempotent.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
exec "${OBF_PYTHON:-$root/.venv/bin/python}" -m obf_features_worker.cli member stop "$@"
