package e2e

import (
	"encoding/json"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
)

// seedSnippet is the seed's sandbox_image stack, imported and used the seed's way.
const seedSnippet = "import numpy as np, pandas, matplotlib, scipy, sympy, requests; print(np.random.rand(5))"

// seedStack is what scripts/run installs into the host (the default image) for the seed.
var seedStack = []string{"numpy", "pandas", "matplotlib", "scipy", "sympy", "requests"}

// fiveFloats reports whether out is numpy's print of a 5-vector of floats in [0, 1).
func fiveFloats(out string) bool {
	out = strings.TrimSpace(out)
	inner, ok := strings.CutPrefix(out, "[")
	if inner, ok = strings.CutSuffix(inner, "]"); !ok {
		return false
	}
	f := strings.Fields(inner)
	if len(f) != 5 {
		return false
	}
	for _, s := range f {
		v, err := strconv.ParseFloat(s, 64)
		if err != nil || v < 0 || v >= 1 {
			return false
		}
	}
	return true
}

// TestDefaultImageSeedStack: after the README's first command (scripts/run, which installs the
// stack from Debian into the host), a default one-shot — no image named, so the host image —
// imports the seed's stack and prints 5 floats, through `airlock run` and through the
// seed-compatible POST /execute.
func TestDefaultImageSeedStack(t *testing.T) {
	mustEngine(t)
	for _, m := range seedStack {
		if _, err := os.Stat("/usr/lib/python3/dist-packages/" + m); err != nil {
			t.Fatalf("python3-%s is not installed: scripts/run installs it (run it, or apt-get install python3-%s): %v", m, m, err)
		}
	}
	t.Run("airlock run", func(t *testing.T) {
		out, stderr, code := runCLI(t, seedSnippet, "run --timeout 60 -")
		if code != 0 || !fiveFloats(out) {
			t.Errorf("got %q (exit %d, stderr %q), want 5 floats", out, code, stderr)
		}
	})
	t.Run("POST /execute", func(t *testing.T) {
		a := newAPIServer(t, engine.Config{})
		body, _ := json.Marshal(api.ExecuteRequest{Code: seedSnippet, Timeout: 60})
		var res api.ExecuteResponse
		if status := a.call("POST", "/execute", strings.NewReader(string(body)), &res); status != 200 || !res.Success || !fiveFloats(res.Stdout) {
			t.Errorf("got %d %+v, want 200 and 5 floats", status, res)
		}
	})
}

func TestFiveFloats(t *testing.T) {
	for _, tt := range []struct {
		out  string
		want bool
	}{
		{"[0.5488135  0.71518937 0.60276338 0.54488318 0.4236548 ]\n", true},
		{"[0.1 0.2 0.3 0.4]", false},
		{"[0.1 0.2 0.3 0.4 1.5]", false},
		{"0.1 0.2 0.3 0.4 0.5", false},
	} {
		if got := fiveFloats(tt.out); got != tt.want {
			t.Errorf("fiveFloats(%q) = %v, want %v", tt.out, got, tt.want)
		}
	}
}
