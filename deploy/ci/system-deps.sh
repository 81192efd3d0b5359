#!/usr/bin/env bash
# System packages the tests need, installed from Debian when missing:
#   java + mvn  - the local Kafka broker (resolved from Maven Central)
#   prometheus  - a real Prometheus server scrapes the services in the metrics tests; its promtool
#                 checks and tests the alert rules
#   chromium    - renders the HTML comparison report in a headless-browser test
#   helm        - lints and renders the Helm chart (built from the Go module proxy by helm.sh)
#   curl        - a real HTTP client against the gateway (tests/integration/test_gateway.py)
#   wrk         - the HTTP load tool of bench/gateway_overhead.py
# Runs as part of `make test`; idempotent and quick when everything is there.
set -euo pipefail

bash "$(dirname "${BASH_SOURCE[0]}")/helm.sh"

missing=()
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v prometheus >/dev/null || missing+=(prometheus)
command -v promtool >/dev/null || missing+=(prometheus)  # the same package: the alert rules' tests
command -v chromium >/dev/null || missing+=(chromium)
command -v curl >/dev/null || missing+=(curl)
command -v wrk >/dev/null || missing+=(wrk)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "missing system packages: ${missing[*]}" >&2
  echo "install them (Debian/Ubuntu: sudo apt-get install ${missing[*]}) and run again" >&2
  exit 1
fi
echo "installing ${missing[*]} (apt-get)..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# The prometheus package would start its own daemon; the tests start their own servers.
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d.rdv && chmod +x /usr/sbin/policy-rc.d.rdv
if [ ! -e /usr/sbin/policy-rc.d ]; then cp /usr/sbin/policy-rc.d.rdv /usr/sbin/policy-rc.d; added_policy=1; fi
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
if [ "${added_policy:-0}" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
rm -f /usr/sbin/policy-rc.d.rdv
