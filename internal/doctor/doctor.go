// Package doctor checks whether a host can run the Airlock daemon, and says how to fix what it
// finds: the kernel's namespaces and features, the cgroup version, controllers and delegation,
// the user-namespace sysctls and LSM restrictions, the PTY pool, overlayfs, loop devices and
// ext4, nftables and NAT, the state directory's file system and free space, and the tools the
// default image binds from the host.
//
// It runs in two steps. Gather reads the host — files below Config.Root (/ on a real host, a
// fixture directory in tests) and, on Linux, a few system calls tried for real (clone with every
// namespace flag, landlock_create_ruleset, close_range, pidfd_open, clone3 into a cgroup, an
// nftables NAT table in a throwaway network namespace) — into Facts. Check then turns Facts and
// the daemon's Config into Findings, a pure function that tests feed fake views. `airlock doctor`
// prints every finding; `airlock serve` runs the same Check at start and refuses to start on a
// FAIL, which this package keeps for what makes every sandbox fail.
package doctor

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// Status is how a finding bears on the daemon.
type Status int

const (
	// OK: the daemon has what it needs.
	OK Status = iota
	// Info: worth knowing, nothing to do.
	Info
	// Warn: some sandboxes or features will not work, or the host is tight; the fix says how.
	Warn
	// Fail: no sandbox can work; serve refuses to start.
	Fail
)

func (s Status) String() string {
	switch s {
	case OK:
		return "ok"
	case Info:
		return "info"
	case Warn:
		return "warn"
	case Fail:
		return "FAIL"
	}
	return fmt.Sprintf("Status(%d)", int(s))
}

// MarshalText writes the status as in the text report, lower case ("fail").
func (s Status) MarshalText() ([]byte, error) { return []byte(strings.ToLower(s.String())), nil }

// Finding is the result of one check.
type Finding struct {
	Check  string `json:"check"`         // short name, e.g. "userns", "cgroup-controllers"
	Status Status `json:"status"`        // ok, info, warn or fail
	Detail string `json:"detail"`        // what was found
	Fix    string `json:"fix,omitempty"` // the exact command or setting that fixes it
}

// Report is every finding, in check order.
type Report struct {
	Findings []Finding `json:"findings"`
}

// Worst returns the most serious status in r (OK for none).
func (r Report) Worst() Status {
	w := OK
	for _, f := range r.Findings {
		w = max(w, f.Status)
	}
	return w
}

// Failures returns the findings with status Fail.
func (r Report) Failures() []Finding { return r.with(Fail) }

// Warnings returns the findings with status Warn.
func (r Report) Warnings() []Finding { return r.with(Warn) }

func (r Report) with(s Status) []Finding {
	var out []Finding
	for _, f := range r.Findings {
		if f.Status == s {
			out = append(out, f)
		}
	}
	return out
}

// WriteText prints one line per finding, "ok    check  detail", and the fix below a finding
// that has one.
func (r Report) WriteText(w io.Writer) error {
	width := 0
	for _, f := range r.Findings {
		width = max(width, len(f.Check))
	}
	for _, f := range r.Findings {
		if _, err := fmt.Fprintf(w, "%-4s  %-*s  %s\n", f.Status, width, f.Check, f.Detail); err != nil {
			return err
		}
		if f.Fix != "" {
			if _, err := fmt.Fprintf(w, "      %*s  fix: %s\n", width, "", f.Fix); err != nil {
				return err
			}
		}
	}
	fails, warns := len(r.Failures()), len(r.Warnings())
	_, err := fmt.Fprintf(w, "%d checks: %d FAIL, %d warn\n", len(r.Findings), fails, warns)
	return err
}

// WriteJSON writes r as one indented JSON object.
func (r Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// Config is what the checks need to know of the daemon they check for. Zero values mean the
// defaults serve has.
type Config struct {
	// Root is where the host's file system is read from: "" or "/" on a real host, a fixture
	// directory (holding proc/, sys/, dev/, usr/ …) in tests. System-call probes always run
	// against the real host.
	Root string
	// StateDir is the daemon's state directory (default /var/lib/airlock); it need not exist yet.
	StateDir string
	// Sandboxes is how many sandboxes may be alive at once (--max-sandboxes), and PTYsPerSandbox
	// the terminals each may open: the PTY pool must hold their product.
	Sandboxes, PTYsPerSandbox int
}

func (c Config) withDefaults() Config {
	if c.Root == "" {
		c.Root = "/"
	}
	if c.StateDir == "" {
		c.StateDir = "/var/lib/airlock"
	}
	return c
}

// Run gathers the facts of the host c describes and checks them.
func Run(c Config) Report {
	c = c.withDefaults()
	return Check(Gather(c), c)
}
