# Shared by scripts/run and scripts/test: a root shell, Go on PATH, Debian packages on demand.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  exec sudo -E "$0" "$@"
fi
export PATH="/usr/local/go/bin:$PATH"
export CGO_ENABLED=0

# pkg_why says why a Debian package is needed, for the line printed before installing it.
pkg_why() {
  case "$1" in
    python3) echo "the interpreter one-shot runs and sessions execute in the sandboxes" ;;
    bubblewrap) echo "the benchmark tests compare sandbox start-up with bubblewrap's" ;;
    python3-numpy | python3-matplotlib | python3-pandas | python3-scipy | python3-sympy | python3-requests)
      echo "the default image carries the seed's stack (numpy, pandas, matplotlib, scipy, sympy, requests)" ;;
    python3-pip | python3-wheel) echo "the session tests pip-install wheels from a wheel directory" ;;
    busybox-static) echo "the image tests build their OCI images from a static busybox" ;;
    qemu-system-x86) echo "scripts/vm-cgroup2 boots a cgroup v2 guest to run the tests in" ;;
    cpio) echo "scripts/vm-cgroup2 packs the guest's initramfs" ;;
    linux-image-amd64) echo "the kernel scripts/vm-cgroup2 boots" ;;
    *) echo "needed by $(basename "$0")" ;;
  esac
}

# need_pkgs installs the Debian packages whose files are missing: pairs of "file package". It
# says what it installs and why before apt-get runs (which can take a minute on a fresh host).
need_pkgs() {
  local missing=()
  while [ $# -gt 0 ]; do
    [ -e "$1" ] || missing+=("$2")
    shift 2
  done
  if [ ${#missing[@]} -gt 0 ]; then
    local p
    for p in "${missing[@]}"; do
      echo "installing Debian package $p with apt-get: $(pkg_why "$p")" >&2
    done
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2 </dev/null ||
      { echo "apt-get install failed; running apt-get update once and retrying" >&2
        apt-get update -q >&2 </dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2 </dev/null; }
  fi
}

# check_go refuses a Go older than go.mod's go line, with what to do, instead of a compile
# error deep in the build.
check_go() {
  command -v go >/dev/null || { echo "Go $(go_wanted) or newer is required: install it from https://go.dev/dl/ into /usr/local/go" >&2; exit 1; }
  local want have
  want=$(go_wanted)
  have=$(go env GOVERSION | sed 's/^go//; s/[^0-9.].*$//')
  if [ "$(printf '%s\n%s\n' "$want" "$have" | sort -V | head -n1)" != "$want" ]; then
    echo "Go $want or newer is required (go.mod), but $(command -v go) is Go $have: install a newer one from https://go.dev/dl/ into /usr/local/go" >&2
    exit 1
  fi
}

# go_wanted is the Go version go.mod asks for.
go_wanted() { sed -n 's/^go \([0-9.]*\).*/\1/p' go.mod; }

build() {
  check_go
  echo "building bin/airlock and bin/airlock-sandbox (the first build also compiles the standard library: up to a minute)" >&2
  go build -trimpath -ldflags "-s -w" -o bin/airlock ./cmd/airlock
  # What runs inside each sandbox (its init and agent): airlock uses it when it sits beside it.
  go build -trimpath -ldflags "-s -w" -o bin/airlock-sandbox ./cmd/airlock-sandbox
}
