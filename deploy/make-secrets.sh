#!/bin/sh
# Makes the files a secure tfps deployment needs, with openssl alone: a private CA, a
# server certificate, a client certificate and a bearer token for each role. Nothing it
# writes belongs in git: run it where the deployment reads the files from.
#
# Usage: deploy/make-secrets.sh DIR [SERVER_NAME...]
#   DIR          where to write; refused if it already holds a CA (rotate by writing a new
#                directory and moving the files into place, see SECURITY.md)
#   SERVER_NAME  a DNS name or IP address clients reach the server by, such as tfps-0.tfps;
#                every shard's when sharded (all serve this one certificate); localhost
#                and 127.0.0.1 are always added, for the container health check
# CERT_DAYS sets how long the certificates are valid (default 365).
#
# Examples:
#   deploy/make-secrets.sh deploy/kubernetes/secrets \
#       tfps-0.tfps tfps-0.tfps.default.svc tfps-digits-ps-0.default.svc
#   deploy/make-secrets.sh deploy/kubernetes/secrets tfps-0.tfps tfps-1.tfps tfps-2.tfps
#   deploy/make-secrets.sh ./tfps-secrets my-host.example.com 10.0.0.5
#
# Writes (keys and tokens readable by the owner only):
#   DIR/ca.crt, DIR/ca.key                   the CA; keep ca.key away from the cluster
#   DIR/server/tls.crt, tls.key, ca.crt      the server's certificate (for client and server
#                                            authentication: the health check presents it
#                                            under mutual TLS) and the CA its clients need
#   DIR/server/tokens                        the tokens file: one 'ROLE TOKEN' line per role
#   DIR/ROLE/tls.crt, tls.key, ca.crt, token for ROLE in worker, admin, reader: a client's
#                                            certificate, the CA to trust, and its token
set -eu

if [ "$#" -lt 1 ]; then
    echo "usage: $0 DIR [SERVER_NAME...]" >&2
    exit 2
fi
out=$1
shift
days=${CERT_DAYS:-365}
roles="worker admin reader"

if [ -e "$out/ca.key" ]; then
    echo "$out/ca.key exists: refusing to replace a CA; write a new directory instead" >&2
    exit 1
fi
umask 077
mkdir -p "$out/server"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# subjectAltName entries: every name given, and the loopback names the health check uses.
names="DNS:localhost,IP:127.0.0.1"
for name in "$@"; do
    case $name in
        *:*) kind=IP ;;          # IPv6
        *[!0-9.]*) kind=DNS ;;
        *) kind=IP ;;            # digits and dots: IPv4
    esac
    names="$names,$kind:$name"
done

new_key() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"
}

# issue COMMON_NAME DIRECTORY EXTENDED_KEY_USAGE [SUBJECT_ALT_NAMES]
issue() {
    new_key "$2/tls.key"
    {
        echo "basicConstraints = critical, CA:FALSE"
        echo "keyUsage = critical, digitalSignature"
        echo "extendedKeyUsage = $3"
        if [ -n "${4:-}" ]; then echo "subjectAltName = $4"; fi
    } >"$work/extensions"
    openssl req -new -key "$2/tls.key" -subj "/CN=$1" -out "$work/request"
    openssl x509 -req -in "$work/request" -CA "$out/ca.crt" -CAkey "$out/ca.key" \
        -set_serial "0x$(openssl rand -hex 16)" -days "$days" -sha256 \
        -extfile "$work/extensions" -out "$2/tls.crt" 2>/dev/null
    cp "$out/ca.crt" "$2/ca.crt"
}

new_key "$out/ca.key"
openssl req -x509 -new -key "$out/ca.key" -subj "/CN=tfps CA" -days "$days" -sha256 \
    -addext "basicConstraints = critical, CA:TRUE, pathlen:0" \
    -addext "keyUsage = critical, keyCertSign, cRLSign" \
    -out "$out/ca.crt"

issue tfps-server "$out/server" "serverAuth, clientAuth" "$names"
: >"$out/server/tokens"
for role in $roles; do
    mkdir -p "$out/$role"
    issue "tfps-$role" "$out/$role" clientAuth
    token=$(openssl rand -hex 32)
    printf '%s' "$token" >"$out/$role/token"
    printf '%s %s\n' "$role" "$token" >>"$out/server/tokens"
done
echo "wrote a CA, a server certificate for $names, and a certificate and token for each of: $roles into $out"
