#!/usr/bin/env bash
# Install the Debian packages buddylab needs on the host, only those missing:
# those of images/host-packages.txt, or of the list given as the argument
# (images/lava-packages.txt for the optional LAVA tests).
# Uses the host's own apt as it is configured; changes no apt configuration.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
list=${1:-$here/host-packages.txt}
mapfile -t wanted < <(grep -v '^\s*#' "$list" | grep -v '^\s*$')
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
# Another apt may hold the lock (shared machines): wait for it rather than fail.
apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null
apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}" >/dev/null
