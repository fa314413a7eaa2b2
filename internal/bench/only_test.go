package bench

import (
	"slices"
	"testing"
)

// TestOnly: --only keeps bare python (every ratio's base) and go-judge (measured only when
// asked for) and the named targets and sections; without it everything is measured.
func TestOnly(t *testing.T) {
	all := []string{KeyBare, KeyBwrap, KeyEngine, KeyHTTPZygote, KeyGoJudge}
	for _, tc := range []struct {
		name      string
		only      []string
		want      []string
		wantPool  bool
		wantPhase bool
	}{
		{"everything", nil, all, true, true},
		{"zygote only", []string{KeyHTTPZygote}, []string{KeyBare, KeyHTTPZygote, KeyGoJudge}, false, false},
		{"a section", []string{"pool"}, []string{KeyBare, KeyGoJudge}, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{Only: tc.only}
			var ts []*target
			for _, k := range all {
				ts = append(ts, &target{Target: Target{Key: k}})
			}
			var got []string
			for _, tg := range cfg.only(ts) {
				got = append(got, tg.Key)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("targets: got %v, want %v", got, tc.want)
			}
			if got := cfg.wants("pool"); got != tc.wantPool {
				t.Errorf("wants(pool): got %v, want %v", got, tc.wantPool)
			}
			if got := cfg.wants("phases"); got != tc.wantPhase {
				t.Errorf("wants(phases): got %v, want %v", got, tc.wantPhase)
			}
		})
	}
}
