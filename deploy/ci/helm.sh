#!/usr/bin/env bash
# Builds the pinned `helm` from the Go module proxy into .cache/bin/helm (the chart tests in
# tests/unit/test_helm_chart.py lint and render deploy/helm/rendezvous-serving with it).
# Runs as part of `make test` (via deploy/ci/system-deps.sh); idempotent and quick when the
# pinned version is already there. Go's own module and build caches are left where Go keeps
# them, so a fresh clone on a machine that built helm before only links it again.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bin_dir="${HELM_BIN_DIR:-$repo_root/.cache/bin}"
helm="$bin_dir/helm"

# Bump the recipe when the build flags below change, so older binaries are rebuilt.
stamp="$bin_dir/helm.built"
recipe="$HELM_VERSION recipe=2"

installed_version() {
  "$helm" version --template '{{.Version}}' 2>/dev/null || true
}

if [ -x "$helm" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$recipe" ] \
  && [ "$(installed_version)" = "$HELM_VERSION" ]; then
  exit 0
fi

if ! command -v go >/dev/null; then
  # Debian's golang-go (1.19 on bookworm) is too old for helm v3.22 and cannot fetch a newer
  # toolchain itself, so there is no useful fallback: say what is needed.
  echo "go is needed to build helm $HELM_VERSION (Go >= 1.21 on PATH; helm's go.mod names the minimum)" >&2
  exit 1
fi

echo "building helm $HELM_VERSION from the Go module proxy into $bin_dir (takes a few minutes the first time)..." >&2
mkdir -p "$bin_dir"
rm -f "$stamp"
export CGO_ENABLED=0 GOTOOLCHAIN=local

# Stamp the binary as helm's own release build (its Makefile) does: the version, so
# `helm version` reports it, and the default Kubernetes version of `helm template`/`lint`
# (1.<client-go minor>), which a plain `go install` leaves at 1.20.
gomod="$(go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')"
client_go="$(awk '$1 == "k8s.io/client-go" { print $2 }' "$gomod")"   # e.g. v0.37.0

# A Go older than helm's go.mod asks for builds with a newer toolchain, which Go (>= 1.21)
# fetches from the module proxy like any module: HELM_GO_TOOLCHAIN names the one to use.
needed_go="$(awk '$1 == "go" { print $2; exit }' "$gomod")"          # e.g. 1.26.0
local_go="$(go env GOVERSION)"; local_go="${local_go#go}"
if [ "$(printf '%s\n%s\n' "$needed_go" "$local_go" | sort -V | head -n1)" != "$needed_go" ]; then
  GOTOOLCHAIN="${HELM_GO_TOOLCHAIN:-go1.27.3}"
  echo "Go $local_go is older than the $needed_go helm needs: building with $GOTOOLCHAIN" >&2
fi

kube_major=$(( $(echo "${client_go#v}" | cut -d. -f1) + 1 ))
kube_minor="$(echo "$client_go" | cut -d. -f2)"
ldflags="-s -w"
ldflags+=" -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
ldflags+=" -X helm.sh/helm/v3/internal/version.metadata="
for pkg in pkg/lint/rules pkg/chartutil; do
  ldflags+=" -X helm.sh/helm/v3/$pkg.k8sVersionMajor=$kube_major"
  ldflags+=" -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$kube_minor"
done

GOBIN="$bin_dir" go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"

actual="$(installed_version)"
if [ "$actual" != "$HELM_VERSION" ]; then
  echo "built helm reports version '$actual', expected $HELM_VERSION" >&2
  exit 1
fi
echo "$recipe" > "$stamp"
echo "helm $HELM_VERSION ready (default Kubernetes $kube_major.$kube_minor): $helm" >&2
