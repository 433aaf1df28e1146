#!/usr/bin/env bash
# Install the Debian packages buddylab needs on the host, only those missing.
# Uses the host's own apt as it is configured; changes no apt configuration.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
mapfile -t wanted < <(grep -v '^\s*#' "$here/host-packages.txt" | grep -v '^\s*$')
missing=()
for pkg in "${wanted[@]}"; do
	status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
	[ "$status" = installed ] || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
	echo "buddylab: missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
	exit 3
fi
echo "buddylab: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
