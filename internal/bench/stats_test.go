package bench

import (
	"testing"
	"time"

	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/runtime/native"
)

func TestSummarize(t *testing.T) {
	t.Parallel()
	msList := func(v ...int) []time.Duration {
		out := make([]time.Duration, len(v))
		for i, x := range v {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = 100 - i // reversed: Summarize must sort
	}
	tests := []struct {
		name    string
		samples []time.Duration
		want    Stats
	}{
		{"empty", nil, Stats{}},
		{"one", msList(7), Stats{N: 1, P50: 7, P90: 7, P99: 7, Mean: 7, Min: 7, Max: 7}},
		{"two", msList(4, 2), Stats{N: 2, P50: 2, P90: 4, P99: 4, Mean: 3, Min: 2, Max: 4}},
		{"ten", msList(10, 9, 8, 7, 6, 5, 4, 3, 2, 1), Stats{N: 10, P50: 5, P90: 9, P99: 10, Mean: 5.5, Min: 1, Max: 10}},
		{"hundred", msList(hundred...), Stats{N: 100, P50: 50, P90: 90, P99: 99, Mean: 50.5, Min: 1, Max: 100}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := Summarize(tt.samples); got != tt.want {
				t.Errorf("Summarize: got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		cfg       Config
		noAdapter bool
		ok        bool
	}{
		{"defaults", Config{}, false, true},
		{"negative n", Config{N: -1}, false, false},
		{"zero clients", Config{Concurrency: []int{0}}, false, false},
		{"negative warmup", Config{Warmup: -1}, false, false},
		{"negative runs", Config{Runs: -5}, false, false},
		{"no adapter", Config{}, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if !tt.noAdapter {
				tt.cfg.Env.EngineRuntime = func(*native.Runtime) engine.Runtime { return nil }
			}
			tt.cfg.setDefaults()
			if err := tt.cfg.Validate(); (err == nil) != tt.ok {
				t.Errorf("Validate: got %v, want ok=%v", err, tt.ok)
			}
		})
	}
}
