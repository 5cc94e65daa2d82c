#!/usr/bin/env bash
# Fetch the open-source Hazelcast member jars (core + SQL) from Maven Central.
# Usage: fetch-jars.sh [VERSION]   (or OBF_HZ_VERSION=VERSION; default: hazelcast.version in pom.xml)
# The default version goes to .hazelcast/lib/ (or $OBF_HZ_LIB), any other to .hazelcast/lib-VERSION/
# (git-ignored; the version matrix, `make test-versions`). Idempotent: does nothing when present.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
default_version="$(sed -n 's:.*<hazelcast.version>\(.*\)</hazelcast.version>.*:\1:p' "$here/pom.xml")"
version="${1:-${OBF_HZ_VERSION:-$default_version}}"
if [[ ! "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
  echo "fetch-jars: bad version '$version' (expected e.g. 5.5.0)" >&2; exit 2
fi
if [[ "$version" == "$default_version" ]]; then
  lib="${OBF_HZ_LIB:-$root/.hazelcast/lib}"
else
  lib="$root/.hazelcast/lib-$version"
fi
if [[ -f "$lib/hazelcast-$version.jar" && -f "$lib/hazelcast-sql-$version.jar" ]]; then
  exit 0
fi
command -v mvn >/dev/null || { echo "fetch-jars: Maven (mvn) is required to fetch the Hazelcast jars" >&2; exit 1; }
echo "fetch-jars: fetching Hazelcast $version member jars into $lib" >&2
mkdir -p "$lib"
mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies -Dhazelcast.version="$version" -DoutputDirectory="$lib"
test -f "$lib/hazelcast-$version.jar" && test -f "$lib/hazelcast-sql-$version.jar"
