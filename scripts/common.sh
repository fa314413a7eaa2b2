# Shared by scripts/run and scripts/test: a root shell, Go on PATH, Debian packages on demand.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  exec sudo -E "$0" "$@"
fi
export PATH="/usr/local/go/bin:$PATH"
export CGO_ENABLED=0

# need_pkgs installs the Debian packages whose files are missing: pairs of "file package".
need_pkgs() {
  local missing=()
  while [ $# -gt 0 ]; do
    [ -e "$1" ] || missing+=("$2")
    shift 2
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2 </dev/null ||
      { apt-get update -q >&2 </dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2 </dev/null; }
  fi
}

build() {
  command -v go >/dev/null || { echo "Go is required (https://go.dev/dl/)" >&2; exit 1; }
  go build -trimpath -ldflags "-s -w" -o bin/airlock ./cmd/airlock
}
