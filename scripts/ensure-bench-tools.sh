#!/usr/bin/env sh
# Make sure the benchmarks' outside tools are here: h2load (Debian nghttp2-client), the HTTP/2
# protocol ceiling bench/apns.py measures the APNs emulator with. Installed with apt-get when
# missing and we are root (or have sudo); otherwise the benchmark reports that phase as skipped.
set -eu
if command -v h2load >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "h2load is missing and there is no apt-get: install nghttp2 (h2load) by hand" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "h2load is missing: run 'apt-get install nghttp2-client' as root" >&2
        exit 0
    fi
    SUDO="sudo"
fi
echo "installing Debian package: nghttp2-client (h2load)" >&2
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q nghttp2-client
