package engine

import (
	"math"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/layout"
	"github.com/airlockhq/airlock/internal/netpolicy"
)

// The rules every request type is normalized with, each in one place. A request type's
// normalize calls these; nothing re-checks a normalized value.

func invalid(format string, args ...any) error {
	return api.Errorf(api.ErrInvalidArgument, format, args...)
}

// bound refuses v outside lo…hi, naming it as the caller sees it, in unit. NaN is outside
// every range. Out-of-bounds values are errors, never silently clamped.
func bound[T int64 | float64](name string, v, lo, hi T, unit string) error {
	if math.IsNaN(float64(v)) || v < lo || v > hi {
		return invalid("%s %v%s is outside %v…%v%s", name, v, unit, lo, hi, unit)
	}
	return nil
}

// boundDuration is bound for a duration, shown in seconds.
func boundDuration(name string, d, lo, hi time.Duration) error {
	return bound(name, d.Seconds(), lo.Seconds(), hi.Seconds(), " s")
}

// boundMemory is bound for a memory size in bytes, checked and shown in whole MiB (the API's
// unit).
func boundMemory(name string, b, lo, hi int64) error {
	return bound(name, b>>20, lo>>20, hi>>20, "")
}

// minCPU is the smallest CPU share a sandbox may ask for.
const minCPU = 0.05

// normalizeCPU returns cpu, or def when it is 0, within minCPU…max.
func normalizeCPU(cpu, def, hi float64) (float64, error) {
	if cpu == 0 {
		return def, nil
	}
	return cpu, bound("cpu", cpu, minCPU, hi, "")
}

// normalizeMemory returns b, or def when it is 0, within lo…hi.
func (c *Config) normalizeMemory(b int64) (int64, error) {
	if b == 0 {
		return c.DefaultMemory, nil
	}
	return b, boundMemory("memory_mb", b, c.MinMemory, c.MaxMemory)
}

// normalizeNetwork returns the policy a request gets: its own (the zero policy meaning the
// operator's default), validated and within the modes the operator allows.
func (c *Config) normalizeNetwork(p netpolicy.Policy) (netpolicy.Policy, error) {
	if p.Mode == "" && len(p.Allow) == 0 {
		p = c.DefaultNetwork
	}
	p = p.Normalize()
	if _, err := p.Rules(); err != nil {
		return p, invalid("%v", err)
	}
	if p.Mode != netpolicy.Block && !slices.Contains(c.NetworkModes, p.Mode) {
		return p, invalid("network mode %q is not allowed by this server (allowed: %s)", p.Mode,
			strings.Join(modeNames(c.NetworkModes), ", "))
	}
	return p, nil
}

// modeNames spells modes for messages and the API, block always first.
func modeNames(modes []netpolicy.Mode) []string {
	out := []string{string(netpolicy.Block)}
	for _, m := range modes {
		if m != netpolicy.Block {
			out = append(out, string(m))
		}
	}
	return out
}

// MaxEnvBytes bounds an environment: the "NAME=value" strings with their NULs, in all. It
// keeps every entry under execve's MAX_ARG_STRLEN (128 KiB) and leaves most of ARG_MAX to the
// command line, so an environment accepted here never makes an exec fail with E2BIG.
const MaxEnvBytes = 128 << 10

// checkEnv refuses names the kernel cannot pass, NUL bytes, and environments over MaxEnvBytes.
func checkEnv(env map[string]string) error {
	total := 0
	for k, v := range env {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return invalid("env name %q is invalid", k)
		}
		if strings.ContainsRune(v, 0) {
			return invalid("env %s contains a NUL byte", k)
		}
		total += len(k) + 1 + len(v) + 1
	}
	if total > MaxEnvBytes {
		return invalid("env is %d bytes (NAME=value with a NUL each); the limit is %d", total, MaxEnvBytes)
	}
	return nil
}

// Path bounds, checked up front so a path the sandbox could never create is a 400, not a
// setup failure: NAME_MAX per component, and PATH_MAX (4096 with its NUL) less room for one
// more component, both because a directory whose children cannot be named is of no use and
// because the agent and runtime reach paths through a short prefix (/proc/self/fd/N, a mount
// point) that the kernel counts too.
const (
	maxNameBytes = 255
	maxPathBytes = 4096 - 1 - (maxNameBytes + 1)
)

// checkPathLength refuses a path longer than PATH_MAX or with a component longer than NAME_MAX.
func checkPathLength(what, p string) error {
	if len(p) > maxPathBytes {
		return invalid("%s is %d bytes long; the limit is %d", what, len(p), maxPathBytes)
	}
	for c := range strings.SplitSeq(p, "/") {
		if len(c) > maxNameBytes {
			return invalid("%s has a %d-byte component; the limit is %d", what, len(c), maxNameBytes)
		}
	}
	return nil
}

// checkWorkdir refuses a workdir that is not a clean absolute path, or lies in a system
// directory (layout.System) outside the writable ones.
func checkWorkdir(w string) error {
	if err := checkPathLength("workdir", w); err != nil {
		return err
	}
	if !path.IsAbs(w) || path.Clean(w) != w || w == "/" || strings.ContainsRune(w, 0) {
		return invalid("workdir %q must be a clean absolute path", w)
	}
	if !layout.Writable(w) && layout.System(w) {
		return invalid("workdir %q may not be inside the image's system directories", w)
	}
	return nil
}

// filePath resolves a one-shot's file name: relative names land in the workspace; the result
// must lie strictly inside a writable directory. (The agent confines paths regardless.)
func filePath(name string) (string, error) {
	if name == "" || strings.ContainsRune(name, 0) {
		return "", invalid("file name %q is invalid", name)
	}
	p := name
	if !path.IsAbs(p) {
		p = path.Join(layout.Workspace, p)
	}
	p = path.Clean(p)
	if p != layout.Workspace && p != layout.Tmp && layout.Writable(p) {
		return p, nil
	}
	return "", invalid("file %q must be inside %s or %s", name, layout.Workspace, layout.Tmp)
}

// The exit statuses the engine reports for what ended a program, as a shell would.
const (
	exitTimeout = 124 // timeout(1)
	exitOOM     = 137 // 128 + SIGKILL, the OOM killer's signal
)

// exitStatus is the one place that gives a timeout and an OOM kill their exit status: code
// is the process's own, timedOut and oom what the engine learnt of its end.
func exitStatus(code int, timedOut, oom bool) int {
	switch {
	case timedOut:
		return exitTimeout
	case oom:
		return exitOOM
	}
	return code
}
