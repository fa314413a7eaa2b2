package sandboxmain

import (
	"strings"
	"testing"
)

// TestCompatible: a separate sandbox binary serves a daemon only of the same ABI, Go version and
// zygote script, and of the same revision and tree state where both recorded one.
func TestCompatible(t *testing.T) {
	self := BuildID()
	if f := strings.Split(self, "|"); len(f) != 5 || f[4] == "" {
		t.Fatalf("BuildID %q: want five fields ending in the zygote script's digest", self)
	}
	for _, tc := range []struct {
		name        string
		self, other string
		want        bool
	}{
		{"this build", self, self, true},
		{"same revision", ABI + "|go1|abc|false|d1", ABI + "|go1|abc|false|d1", true},
		{"a malformed ID", ABI + "|go1||||d1", ABI + "|go1|abc|false|d1", false},
		{"one without a revision", ABI + "|go1|||d1", ABI + "|go1|abc|true|d1", true},
		{"another zygote script", ABI + "|go1|||d1", ABI + "|go1|||d2", false},
		{"another zygote script, same revision", ABI + "|go1|abc|true|d1", ABI + "|go1|abc|true|d2", false},
		{"another revision", ABI + "|go1|abc|false|d1", ABI + "|go1|abd|false|d1", false},
		{"another tree state", ABI + "|go1|abc|false|d1", ABI + "|go1|abc|true|d1", false},
		{"another Go", ABI + "|go1|abc|false|d1", ABI + "|go2|abc|false|d1", false},
		{"another ABI", ABI + "|go1|abc|false|d1", "airlock-sandbox/0|go1|abc|false|d1", false},
		{"a binary from before the digest", ABI + "|go1|abc|false|d1", ABI + "|go1|abc|false", false},
	} {
		if got := Compatible(tc.self, tc.other); got != tc.want {
			t.Errorf("%s: Compatible(%q, %q) = %v, want %v", tc.name, tc.self, tc.other, got, tc.want)
		}
	}
}
