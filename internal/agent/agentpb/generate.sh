#!/bin/sh
# Regenerates the Go code for the agent wire protocol:
#   *.pb.go                    (protoc-gen-go)
#   agentpbconnect/*.connect.go (protoc-gen-connect-go)
#
# The generated files are committed, so building Airlock never needs protoc;
# run this only after editing a .proto file. Requires protoc (>= 3.15, for
# proto3 `optional`) and a Go toolchain. The two protoc plugins are built
# from the module graph, so their versions are exactly the
# google.golang.org/protobuf and connectrpc.com/connect versions in go.mod.
#
# Protos are compiled relative to the module root, so they register in the
# protobuf registry as "internal/agent/agentpb/<name>.proto" and cannot clash
# with another package's "process.proto".
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
rel=internal/agent/agentpb

command -v protoc >/dev/null 2>&1 || {
	echo "generate.sh: protoc not found in PATH" >&2
	exit 1
}

bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT INT TERM

cd "$root"
go build -o "$bin/" \
	google.golang.org/protobuf/cmd/protoc-gen-go \
	connectrpc.com/connect/cmd/protoc-gen-connect-go

# google/protobuf/timestamp.proto ships with protoc; distribution packages
# install it under /usr/include or /usr/local/include.
wkt=""
for d in /usr/include /usr/local/include; do
	if [ -f "$d/google/protobuf/timestamp.proto" ]; then
		wkt="-I$d"
		break
	fi
done

rm -f "$rel"/*.pb.go "$rel"/agentpbconnect/*.connect.go

# shellcheck disable=SC2086 # $wkt is intentionally unquoted (may be empty)
protoc \
	-I . $wkt \
	--plugin=protoc-gen-go="$bin/protoc-gen-go" \
	--plugin=protoc-gen-connect-go="$bin/protoc-gen-connect-go" \
	--go_out=. --go_opt=paths=source_relative \
	--connect-go_out=. --connect-go_opt=paths=source_relative \
	"$rel/process.proto" \
	"$rel/filesystem.proto" \
	"$rel/airlock.proto"

unformatted=$(gofmt -l "$rel")
if [ -n "$unformatted" ]; then
	echo "generate.sh: not gofmt-clean: $unformatted" >&2
	exit 1
fi
