package image

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/netpolicy"
)

// BuildSpec is an image to build the way Modal's Image builder does: a base, then steps, each
// a layer (or, for env and workdir, a change of the config) cached by hash of (parent, step).
type BuildSpec struct {
	Name          string      // name:tag the result gets
	Base          string      // an image in the store, or DebianBase
	PythonVersion string      // "3.11" or "3.11.2": checked against the base's python3
	Steps         []BuildStep // in order
}

// BuildStep is one step; exactly one field is set.
type BuildStep struct {
	AptInstall  []string          `json:"apt_install,omitempty"`
	PipInstall  []string          `json:"pip_install,omitempty"`
	RunCommands []string          `json:"run_commands,omitempty"`
	Copy        *CopyStep         `json:"copy,omitempty"`
	Env         map[string]string `json:"env,omitempty"`
	Workdir     string            `json:"workdir,omitempty"`
}

// CopyStep puts one file at Dst: Content (base64) or Src, a file under the build context.
type CopyStep struct {
	Content string `json:"content,omitempty"`
	Src     string `json:"src,omitempty"`
	Dst     string `json:"dst"`
	Mode    string `json:"mode,omitempty"` // octal, "0644" by default
}

// DebianBase is the base bootstrapped from Debian's archive (debian_linux.go).
const DebianBase = "debian"

// Limits of a spec.
const (
	MaxBuildSteps = 100
	MaxCopyBytes  = 16 << 20 // one copied file
	maxListItems  = 256
	maxStepLog    = 5000 // log lines streamed per step; the rest are counted
	maxLogLine    = 4096
)

var (
	aptName     = regexp.MustCompile(`^[a-z0-9][a-z0-9+.\-]*(:[a-z0-9]+)?(=[A-Za-z0-9.+~:\-]+)?$`)
	envName     = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	pyVersion   = regexp.MustCompile(`^3\.[0-9]+(\.[0-9]+)?$`)
	octalMode   = regexp.MustCompile(`^0?[0-7]{3}$`)
	pythonReply = regexp.MustCompile(`Python (3\.[0-9]+\.[0-9]+)`)
)

func invalid(format string, args ...any) error {
	return api.Errorf(api.ErrInvalidArgument, format, args...)
}

// Validate checks the spec whole before anything runs: a bad spec is a 400, never a half
// build.
func (sp *BuildSpec) Validate() error {
	if sp.Name == "" {
		return invalid("name is required")
	}
	if _, err := canonical(sp.Name); err != nil {
		return err
	}
	if sp.Base == "" {
		return invalid("base is required: an image reference or %q", DebianBase)
	}
	if strings.ContainsAny(sp.Base, " \t\n\x00") {
		return invalid("base %q: not an image reference", sp.Base)
	}
	if sp.PythonVersion != "" && !pyVersion.MatchString(sp.PythonVersion) {
		return invalid("python_version %q: want 3.N or 3.N.M", sp.PythonVersion)
	}
	if len(sp.Steps) > MaxBuildSteps {
		return invalid("%d steps: at most %d", len(sp.Steps), MaxBuildSteps)
	}
	for i := range sp.Steps {
		if err := sp.Steps[i].validate(); err != nil {
			return invalid("step %d: %v", i+1, err)
		}
	}
	return nil
}

// Kind names the step's one field.
func (st *BuildStep) Kind() string {
	var kinds []string
	if st.AptInstall != nil {
		kinds = append(kinds, "apt_install")
	}
	if st.PipInstall != nil {
		kinds = append(kinds, "pip_install")
	}
	if st.RunCommands != nil {
		kinds = append(kinds, "run_commands")
	}
	if st.Copy != nil {
		kinds = append(kinds, "copy")
	}
	if st.Env != nil {
		kinds = append(kinds, "env")
	}
	if st.Workdir != "" {
		kinds = append(kinds, "workdir")
	}
	return strings.Join(kinds, "+")
}

// list checks one list field: not empty, bounded, each item passing ok.
func list(field string, xs []string, ok func(string) bool) error {
	if len(xs) == 0 {
		return fmt.Errorf("%s is empty", field)
	}
	if len(xs) > maxListItems {
		return fmt.Errorf("%s: %d items, at most %d", field, len(xs), maxListItems)
	}
	for _, x := range xs {
		if !ok(x) {
			return fmt.Errorf("%s: %q is not allowed", field, x)
		}
	}
	return nil
}

func (st *BuildStep) validate() error {
	switch k := st.Kind(); k {
	case "apt_install":
		return list(k, st.AptInstall, aptName.MatchString)
	case "pip_install":
		// Passed as arguments, never through a shell; a leading '-' would be a pip option.
		return list(k, st.PipInstall, func(s string) bool {
			return s != "" && s[0] != '-' && len(s) <= 512 && !strings.ContainsFunc(s, func(r rune) bool { return r <= ' ' || r == 0x7f })
		})
	case "run_commands":
		return list(k, st.RunCommands, func(s string) bool { return strings.TrimSpace(s) != "" && !strings.ContainsRune(s, 0) })
	case "copy":
		return st.Copy.validate()
	case "env":
		if len(st.Env) == 0 {
			return fmt.Errorf("env is empty")
		}
		for k, v := range st.Env {
			if !envName.MatchString(k) || strings.ContainsRune(v, 0) {
				return fmt.Errorf("env %q: want NAME=value", k)
			}
		}
		return nil
	case "workdir":
		if !cleanAbs(st.Workdir) {
			return fmt.Errorf("workdir %q: want a clean absolute path", st.Workdir)
		}
		return nil
	case "":
		return fmt.Errorf("no step given (one of apt_install, pip_install, run_commands, copy, env, workdir)")
	default:
		return fmt.Errorf("one step at a time, got %s", k)
	}
}

func cleanAbs(p string) bool {
	return filepath.IsAbs(p) && filepath.Clean(p) == p && !strings.ContainsRune(p, 0)
}

func (c *CopyStep) validate() error {
	if !cleanAbs(c.Dst) || c.Dst == "/" {
		return fmt.Errorf("copy: dst %q: want a clean absolute file path", c.Dst)
	}
	if (c.Content == "") == (c.Src == "") {
		return fmt.Errorf("copy: give one of content (base64) and src")
	}
	if c.Src != "" && !filepath.IsLocal(c.Src) {
		return fmt.Errorf("copy: src %q: want a path inside the build context", c.Src)
	}
	if c.Content != "" {
		if base64.StdEncoding.DecodedLen(len(c.Content)) > MaxCopyBytes {
			return fmt.Errorf("copy: content over %d bytes", MaxCopyBytes)
		}
		if _, err := base64.StdEncoding.DecodeString(c.Content); err != nil {
			return fmt.Errorf("copy: content is not base64: %v", err)
		}
	}
	if c.Mode != "" && !octalMode.MatchString(c.Mode) {
		return fmt.Errorf("copy: mode %q: want octal like 0644", c.Mode)
	}
	return nil
}

// StepRun is one command a build step runs in a sandbox of its parent image.
type StepRun struct {
	Cmd     []string         // argv; Cmd[0] an absolute path or a name on the image's PATH
	Env     []string         // NAME=value beyond the image's own
	Workdir string           // the image's working directory, or "" for /
	Network netpolicy.Policy // what the step asks for; the operator's modes may narrow it
	// NeedsNetwork: the step cannot work without Network (apt, pip), so where the operator
	// does not offer it the step fails clearly rather than run offline.
	NeedsNetwork bool
	Stdin        []byte
}

// StepRunner runs build steps. It runs run in a fresh sandbox of parent whose root is writable
// and whose processes run as the image's root (no capabilities), writes the command's output to
// log, and when the command exits 0 returns the sandbox's writable layer as an OCI layer tar
// (the caller closes it); the sandbox is gone by the time RunStep returns. A command that
// exits otherwise is not an error: exitCode says so (layer is then nil).
type StepRunner interface {
	RunStep(ctx context.Context, parent *Image, run StepRun, log io.Writer) (layer io.ReadCloser, exitCode int, err error)
}

// BuildEvent is one event of a build's progress.
type BuildEvent struct {
	Type    string        // "step" (starting), "log", "done" (a step), "image" (the result), "error"
	Step    int           // 1-based; 0 is the base
	Steps   int           // how many steps the spec has
	Kind    string        // the step's kind, or "base"
	Cached  bool          // a step: its result was in the cache
	Line    string        // a log line (bounded)
	Elapsed time.Duration // a done step; the whole build for image
	Image   *Image        // the result (image), or a step's (done)
	Err     error         // error
}

// Builder builds images from specs in a store, running steps through a StepRunner.
type Builder struct {
	Store  *Store
	Runner StepRunner
	Logger *slog.Logger
	// Debian makes the base "debian" when the store has none; nil is Bootstrap (debootstrap).
	Debian func(ctx context.Context, log io.Writer) (*Image, error)
}

// Build builds sp (validated here) and names the result sp.Name. Src paths of copy steps are
// read below contextDir; with contextDir "" they are refused. emit is called, from this
// goroutine only, with each event; the final one is the image or the error.
func (b *Builder) Build(ctx context.Context, sp *BuildSpec, contextDir string, emit func(BuildEvent)) (*Image, error) {
	start := time.Now()
	img, err := b.build(ctx, sp, contextDir, emit)
	if err != nil {
		emit(BuildEvent{Type: "error", Steps: len(sp.Steps), Err: err, Elapsed: time.Since(start)})
		return nil, err
	}
	emit(BuildEvent{Type: "image", Steps: len(sp.Steps), Image: img, Elapsed: time.Since(start)})
	return img, nil
}

func (b *Builder) build(ctx context.Context, sp *BuildSpec, contextDir string, emit func(BuildEvent)) (*Image, error) {
	if err := sp.Validate(); err != nil {
		return nil, err
	}
	if b.Runner == nil {
		return nil, api.Errorf(api.ErrUnimplemented, "this daemon cannot run build steps")
	}
	n := len(sp.Steps)
	t0 := time.Now()
	emit(BuildEvent{Type: "step", Steps: n, Kind: "base", Line: sp.Base})
	parent, err := b.base(ctx, sp.Base, &stepLog{emit: emit, steps: n})
	if err != nil {
		return nil, err
	}
	var releases []func()
	defer func() {
		for _, r := range releases {
			r()
		}
	}()
	// Every image of the chain is leased until the end: unnamed, a prune would take it.
	releases = append(releases, b.Store.Lease(parent))
	emit(BuildEvent{Type: "done", Steps: n, Kind: "base", Image: parent, Elapsed: time.Since(t0)})
	if sp.PythonVersion != "" {
		if err := b.checkPython(ctx, parent, sp.PythonVersion); err != nil {
			return nil, err
		}
	}
	for i := range sp.Steps {
		st := &sp.Steps[i]
		t := time.Now()
		key, err := stepKey(parent.ID, st)
		if err != nil {
			return nil, err
		}
		cached := b.cached(key)
		emit(BuildEvent{Type: "step", Step: i + 1, Steps: n, Kind: st.Kind(), Cached: cached != nil})
		next := cached
		if next == nil {
			if next, err = b.runStep(ctx, parent, st, contextDir, &stepLog{emit: emit, step: i + 1, steps: n}); err != nil {
				return nil, fmt.Errorf("step %d (%s): %w", i+1, st.Kind(), err)
			}
			if err := b.Store.setCache(key, next.ID); err != nil {
				return nil, err
			}
		}
		releases = append(releases, b.Store.Lease(next))
		emit(BuildEvent{Type: "done", Step: i + 1, Steps: n, Kind: st.Kind(), Cached: cached != nil, Image: next, Elapsed: time.Since(t)})
		parent = next
	}
	if err := b.Store.Tag(parent.ID, sp.Name); err != nil {
		return nil, err
	}
	return b.Store.Resolve(parent.ID)
}

// base resolves the spec's base, bootstrapping Debian's when asked and absent.
func (b *Builder) base(ctx context.Context, ref string, log io.Writer) (*Image, error) {
	if ref == DebianBase {
		if img, err := b.Store.Resolve(DebianImageName); err == nil {
			return img, nil
		}
		if b.Debian != nil {
			return b.Debian(ctx, log)
		}
		return b.Store.Bootstrap(ctx, log)
	}
	img, err := b.Store.Resolve(ref)
	if errors.Is(err, api.ErrNotFound) {
		return nil, api.Errorf(api.ErrNotFound, "base image %q is not in the store: pull or import it first", ref)
	}
	return img, err
}

// stepKey is the cache key of st on parent: sha256 of the parent's id and the step's
// canonical JSON (encoding/json sorts map keys, so env steps are canonical too).
func stepKey(parent string, st *BuildStep) (string, error) {
	b, err := json.Marshal(st)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	io.WriteString(h, parent)
	h.Write([]byte{0})
	h.Write(b)
	return hex.EncodeToString(h.Sum(nil)), nil
}

// runStep makes st's image on parent: a config change for env and workdir, a sandbox run and
// its writable layer for the others.
func (b *Builder) runStep(ctx context.Context, parent *Image, st *BuildStep, contextDir string, log *stepLog) (*Image, error) {
	switch {
	case st.Env != nil:
		keys := make([]string, 0, len(st.Env))
		for k := range st.Env {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		return b.Store.withConfig(parent, "ENV "+strings.Join(keys, " "), func(c *v1.Config) {
			for _, k := range keys {
				c.Env = slices.DeleteFunc(c.Env, func(e string) bool { return strings.HasPrefix(e, k+"=") })
				c.Env = append(c.Env, k+"="+st.Env[k])
			}
		})
	case st.Workdir != "":
		return b.Store.withConfig(parent, "WORKDIR "+st.Workdir, func(c *v1.Config) { c.WorkingDir = st.Workdir })
	}
	run, err := stepRun(st, contextDir)
	if err != nil {
		return nil, err
	}
	run.Workdir = parent.Config.WorkingDir
	layer, code, err := b.Runner.RunStep(ctx, parent, run, log)
	log.flush()
	if err != nil {
		return nil, err
	}
	if code != 0 {
		if layer != nil {
			layer.Close()
		}
		return nil, api.Errorf(api.ErrInvalidArgument, "exited with status %d%s", code, log.tailText())
	}
	defer layer.Close()
	return b.Store.Commit(ctx, parent, layer, "")
}

// aptScript installs its arguments. The step's root has no capabilities: apt's download
// sandbox user (setuid to _apt) is off, and the _apt-owned partial directories, which root
// cannot enter without CAP_DAC_OVERRIDE, are made anew by apt as root's.
const aptScript = `set -e
rm -rf /var/lib/apt/lists/partial /var/cache/apt/archives/partial
apt-get -o APT::Sandbox::User=root -q update
apt-get -o APT::Sandbox::User=root -y -q --no-install-recommends install "$@"
apt-get clean
rm -rf /var/lib/apt/lists/*`

// pipScript installs its arguments with the image's python3 (found on the image's PATH).
const pipScript = `exec python3 -m pip install --no-cache-dir --root-user-action=ignore "$@"`

// copyScript writes stdin to $1 (making its directory) with mode $2, inside the sandbox, so
// the image's own symlinks resolve inside the image.
const copyScript = `set -e
mkdir -p -- "$(dirname -- "$1")"
cat > "$1"
chmod "$2" "$1"`

func stepRun(st *BuildStep, contextDir string) (StepRun, error) {
	internet := netpolicy.Policy{Mode: netpolicy.Internet}
	switch {
	case st.AptInstall != nil:
		return StepRun{Cmd: append([]string{"/bin/sh", "-c", aptScript, "sh"}, st.AptInstall...),
			Env: []string{"DEBIAN_FRONTEND=noninteractive"}, Network: internet, NeedsNetwork: true}, nil
	case st.PipInstall != nil:
		return StepRun{Cmd: append([]string{"/bin/sh", "-c", pipScript, "sh"}, st.PipInstall...),
			Env: []string{"PIP_DISABLE_PIP_VERSION_CHECK=1"}, Network: internet, NeedsNetwork: true}, nil
	case st.RunCommands != nil:
		return StepRun{Cmd: []string{"/bin/sh", "-c", "set -e\n" + strings.Join(st.RunCommands, "\n")}, Network: internet}, nil
	case st.Copy != nil:
		content, err := st.Copy.read(contextDir)
		if err != nil {
			return StepRun{}, err
		}
		mode := st.Copy.Mode
		if mode == "" {
			mode = "0644"
		}
		return StepRun{Cmd: []string{"/bin/sh", "-c", copyScript, "sh", st.Copy.Dst, mode}, Stdin: content}, nil
	}
	return StepRun{}, invalid("no step given")
}

// read returns the file to copy: the content, or src read below contextDir without leaving it
// (os.Root: no .. and no symlink out).
func (c *CopyStep) read(contextDir string) ([]byte, error) {
	if c.Content != "" {
		return base64.StdEncoding.DecodeString(c.Content)
	}
	if contextDir == "" {
		return nil, invalid("copy: src %q needs a build context; send the file as content", c.Src)
	}
	root, err := os.OpenRoot(contextDir)
	if err != nil {
		return nil, fmt.Errorf("build context: %w", err)
	}
	defer root.Close()
	f, err := root.Open(c.Src)
	if err != nil {
		return nil, invalid("copy: src %q: %v", c.Src, errors.Unwrap(err))
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxCopyBytes+1))
	if err != nil {
		return nil, invalid("copy: src %q: %v", c.Src, err)
	}
	if len(b) > MaxCopyBytes {
		return nil, invalid("copy: src %q is over %d bytes", c.Src, MaxCopyBytes)
	}
	return b, nil
}

// checkPython runs python3 --version in a sandbox of the base (once per base: the answer is
// cached by the base's id) and compares it with want.
func (b *Builder) checkPython(ctx context.Context, base *Image, want string) error {
	key := "python3 --version\x00" + base.ID
	have := b.Store.cache()[key]
	if have == "" {
		var out bytes.Buffer
		layer, code, err := b.Runner.RunStep(ctx, base, StepRun{Cmd: []string{"/bin/sh", "-c", "python3 --version 2>&1"}}, &out)
		if layer != nil {
			layer.Close()
		}
		if err != nil {
			return fmt.Errorf("check the base's python: %w", err)
		}
		m := pythonReply.FindStringSubmatch(out.String())
		if code != 0 || m == nil {
			return api.Errorf(api.ErrInvalidArgument, "the base has no Python 3 (python3 --version: exit %d); python_version %s was asked", code, want)
		}
		have = m[1]
		if err := b.Store.setCache(key, have); err != nil {
			return err
		}
	}
	if have != want && !strings.HasPrefix(have, want+".") {
		short := strings.Join(strings.SplitN(have, ".", 3)[:2], ".")
		return api.Errorf(api.ErrInvalidArgument, "the base has Python %s; python_version %s was asked", short, want)
	}
	return nil
}

// cachePath is the build cache index: step key → image id (and base id → python version).
func (s *Store) cachePath() string { return filepath.Join(s.dir, "build-cache.json") }

// cache reads the index; a missing or unreadable one is empty (a cache, not a record).
func (s *Store) cache() map[string]string {
	m := map[string]string{}
	b, err := os.ReadFile(s.cachePath())
	if err == nil {
		json.Unmarshal(b, &m)
	}
	return m
}

// setCache records key → value, under the store's lock (read, change, atomic replace).
func (s *Store) setCache(key, value string) error {
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	m := s.cache()
	m[key] = value
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return s.writeAtomic(s.cachePath(), b)
}

// cached is the image a step key recorded, if the store still has it.
func (b *Builder) cached(key string) *Image {
	id := b.Store.cache()[key]
	if id == "" {
		return nil
	}
	img, err := b.Store.Resolve(id)
	if err != nil {
		return nil // pruned since: rebuilt
	}
	return img
}

// withConfig adds an image with parent's layers and a config changed by change.
func (s *Store) withConfig(parent *Image, createdBy string, change func(*v1.Config)) (*Image, error) {
	raw, err := os.ReadFile(filepath.Join(s.dir, "blobs", digestPath(parent.ID)))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, api.Errorf(api.ErrConflict, "image %s was removed during the build; retry", parent.ShortID())
	}
	if err != nil {
		return nil, fmt.Errorf("config of %s: %w", parent.ID, err)
	}
	cf, err := v1.ParseConfigFile(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("config of %s: %w", parent.ID, err)
	}
	change(&cf.Config)
	now := time.Now().UTC()
	cf.Created = v1.Time{Time: now}
	cf.History = append(cf.History, v1.History{Created: v1.Time{Time: now}, CreatedBy: createdBy, EmptyLayer: true})
	if raw, err = json.Marshal(cf); err != nil {
		return nil, err
	}
	srcs := make([]layerSource, len(parent.Layers))
	for i, l := range parent.Layers {
		srcs[i] = layerSource{digest: l.Digest, diffID: l.DiffID, size: l.Size, mediaType: l.MediaType}
	}
	return s.commit(s.record(raw, cf, types.MediaType(parent.Manifest), "build on "+parent.ID, srcs), raw, nil, nil)
}

// stepLog turns a step's output into bounded log events and keeps its last lines for the
// error of a failed step.
type stepLog struct {
	emit        func(BuildEvent)
	step, steps int
	partial     []byte
	lines       int
	tail        []string
}

func (l *stepLog) Write(p []byte) (int, error) {
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		l.line(string(l.partial[:i]))
		l.partial = l.partial[i+1:]
	}
	if len(l.partial) > maxLogLine {
		l.line(string(l.partial))
		l.partial = l.partial[:0]
	}
	return len(p), nil
}

func (l *stepLog) line(s string) {
	s = strings.ToValidUTF8(strings.TrimRight(s, "\r"), "?")
	if len(s) > maxLogLine {
		s = s[:maxLogLine] + "…"
	}
	if l.tail = append(l.tail, s); len(l.tail) > 10 {
		l.tail = l.tail[1:]
	}
	l.lines++
	if l.lines <= maxStepLog {
		l.emit(BuildEvent{Type: "log", Step: l.step, Steps: l.steps, Line: s})
	} else if l.lines == maxStepLog+1 {
		l.emit(BuildEvent{Type: "log", Step: l.step, Steps: l.steps, Line: fmt.Sprintf("(log over %d lines: the rest is left out)", maxStepLog)})
	}
}

func (l *stepLog) flush() {
	if len(l.partial) > 0 {
		l.line(string(l.partial))
		l.partial = nil
	}
}

// tailText is the last lines of output, for an error message.
func (l *stepLog) tailText() string {
	if len(l.tail) == 0 {
		return ""
	}
	return ": " + strings.Join(l.tail, "\n")
}
