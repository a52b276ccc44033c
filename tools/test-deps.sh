#!/bin/sh
# Installs the programs the tests run that requirements.txt cannot bring: Debian's prometheus
# package (prometheus and promtool, for tests/test_prometheus.py) and openssl (for
# deploy/make-secrets.sh). `make deps` runs this; it does nothing when both are there. It
# installs them with apt-get when run as root, and otherwise fails, naming what to install.
set -eu

missing=""
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
    missing=" prometheus"
fi
if ! command -v openssl >/dev/null 2>&1; then
    missing="$missing openssl"
fi
[ -n "$missing" ] || exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "The tests need programs that are not installed:$missing." >&2
    echo "Install them (on Debian or Ubuntu: sudo apt-get install$missing, the prometheus" >&2
    echo "package bringing promtool too), then run make again." >&2
    exit 1
fi
echo "installing$missing with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
# shellcheck disable=SC2086 # one word per package
apt-get install -y -qq --no-install-recommends $missing >/dev/null
