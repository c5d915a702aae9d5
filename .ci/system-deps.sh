#!/usr/bin/env bash
# System packages the test suite drives for real: Debian's Chromium (studio tests) and a JDK (Spark in local mode).
# Installs only what is missing, and only where it can (root with apt-get); otherwise says what to install.
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || missing+=(chromium)
command -v java >/dev/null 2>&1 || missing+=(default-jre-headless)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing system packages: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    echo "missing system packages: ${missing[*]}; install them (e.g. sudo apt-get install ${missing[*]}) and retry" >&2
    exit 1
fi
