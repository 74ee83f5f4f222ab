#!/usr/bin/env bash
# Makes the development CA and a server certificate for localhost / 127.0.0.1 / ::1.
# For development and tests only: the private keys are committed on purpose.
# Run from anywhere: bash certs-dev/make-certs.sh (writes next to this script).
set -euo pipefail
cd "$(dirname "$0")"
days=3650
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout ca.key -out ca.crt -days "$days" -subj "/CN=swiftgate development CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout server.key -out server.csr -subj "/CN=localhost" 2>/dev/null
cat > server.ext <<'EXT'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1
EXT
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
  -out server.crt -days "$days" -extfile server.ext 2>/dev/null
# PKCS#8 keys, which every TLS stack reads.
openssl pkcs8 -topk8 -nocrypt -in server.key -out server.key.p8 && mv server.key.p8 server.key
rm -f server.csr server.ext ca.srl
chmod 600 ca.key server.key
echo "wrote $(pwd)/{ca.crt,ca.key,server.crt,server.key}"
