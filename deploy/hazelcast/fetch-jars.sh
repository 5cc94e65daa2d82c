#!/usr/bin/env bash
# Fetch the open-source Hazelcast member jars (core + SQL) from Maven Central
# into .hazelcast/lib/ (git-ignored). Idempotent: does nothing when present.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
lib="${OBF_HZ_LIB:-$root/.hazelcast/lib}"
version="$(sed -n 's:.*<hazelcast.version>\(.*\)</hazelcast.version>.*:\1:p' "$here/pom.xml")"
if [[ -f "$lib/hazelcast-$version.jar" && -f "$lib/hazelcast-sql-$version.jar" ]]; then
  exit 0
fi
command -v mvn >/dev/null || { echo "fetch-jars: Maven (mvn) is required to fetch the Hazelcast jars" >&2; exit 1; }
echo "fetch-jars: fetching Hazelcast $version member jars into $lib" >&2
mkdir -p "$lib"
mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies -DoutputDirectory="$lib"
test -f "$lib/hazelcast-$version.jar" && test -f "$lib/hazelcast-sql-$version.jar"
