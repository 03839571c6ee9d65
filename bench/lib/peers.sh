#!/usr/bin/env bash
# Installs the programs the benchmarks compare safepool with, and the tools
# they use, from Debian packages. Idempotent: it does nothing when every
# package is already installed.
#
#   bench/lib/peers.sh            # install what is missing
set -euo pipefail

packages=(parallel time python3-joblib python3-pebble python3-billiard python3-psutil python3-matplotlib)

missing=()
for p in "${packages[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
		missing+=("$p")
	fi
done
# GNU parallel asks for a citation once; this answers it for this machine.
mkdir -p ~/.parallel && touch ~/.parallel/will-cite
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
	echo "peers.sh: missing packages: ${missing[*]}; install them with apt-get as root" >&2
	exit 1
fi
echo "peers.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Wait for another apt-get holding the lock rather than fail.
lock=(-o DPkg::Lock::Timeout=600)
apt-get "${lock[@]}" update -qq >/dev/null
apt-get "${lock[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
