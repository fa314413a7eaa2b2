package cli

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/airlockhq/airlock"
)

// envAnnotation names, on a flag bound by flagEnv, the AIRLOCK_* variable that sets it.
const envAnnotation = "airlock-env"

// flagEnv binds the flag name straight to the field p of a component's Config, together with
// the variable env: a flag given on the command line wins, then the variable (applied by
// applyEnv once the command line is parsed), then the value *p held at binding, its default.
// p is a *int, *int64, *uint64, *float64, *time.Duration, *string, *bool or a pflag.Value
// (such as *byteSize); any other type is a programming error.
func flagEnv(fs *pflag.FlagSet, p any, name, env, usage string) {
	usage += " (env " + env + ")"
	switch p := p.(type) {
	case *int:
		fs.IntVar(p, name, *p, usage)
	case *int64:
		fs.Int64Var(p, name, *p, usage)
	case *uint64:
		fs.Uint64Var(p, name, *p, usage)
	case *float64:
		fs.Float64Var(p, name, *p, usage)
	case *time.Duration:
		fs.DurationVar(p, name, *p, usage)
	case *string:
		fs.StringVar(p, name, *p, usage)
	case *bool:
		fs.BoolVar(p, name, *p, usage)
	case pflag.Value:
		fs.Var(p, name, usage)
	default:
		panic(fmt.Sprintf("flagEnv --%s: unsupported type %T", name, p))
	}
	if err := fs.SetAnnotation(name, envAnnotation, []string{env}); err != nil {
		panic(err) // the flag was just defined
	}
}

// applyEnv sets every flag bound by flagEnv and not given on the command line from its
// variable, if that is set. A malformed value is an error naming the variable, never ignored.
func applyEnv(fs *pflag.FlagSet) error {
	var errs []error
	fs.VisitAll(func(f *pflag.Flag) {
		env := f.Annotations[envAnnotation]
		if len(env) == 0 || f.Changed {
			return
		}
		v := os.Getenv(env[0])
		if v == "" {
			return
		}
		if err := f.Value.Set(v); err != nil {
			errs = append(errs, fmt.Errorf("%s=%q (for --%s): %w", env[0], v, f.Name, err))
		}
	})
	return errors.Join(errs...)
}

// byteSize is a byte count given as a number with an optional binary unit: 1048576, 512MiB,
// 8GiB (K, M, G and T, with or without "iB", are powers of 1024).
type byteSize int64

var byteUnits = []struct {
	suffix string
	shift  uint
}{{"TiB", 40}, {"GiB", 30}, {"MiB", 20}, {"KiB", 10}, {"T", 40}, {"G", 30}, {"M", 20}, {"K", 10}, {"B", 0}}

func (b *byteSize) Set(s string) error {
	num, shift := s, uint(0)
	for _, u := range byteUnits {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			num, shift = n, u.shift
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
	if err != nil || n < 0 || n > (1<<62)>>shift {
		return fmt.Errorf("want a byte count such as 512MiB, got %q", s)
	}
	*b = byteSize(n << shift)
	return nil
}

func (b *byteSize) String() string {
	n := int64(*b)
	for _, u := range byteUnits[:4] {
		if n != 0 && n%(1<<u.shift) == 0 {
			return strconv.FormatInt(n>>u.shift, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}

func (b *byteSize) Type() string { return "bytes" }

// warnLogger is the logger of the commands other than serve: warnings and errors, as text.
func warnLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// clientOptions are the flags of every command that talks to a daemon.
type clientOptions struct {
	server string // empty: no daemon (run and repl then embed an engine)
	apiKey string
}

// bindClientFlags binds --server and --api-key with AIRLOCK_SERVER and AIRLOCK_API_KEY; the
// server o holds is the default.
func bindClientFlags(fs *pflag.FlagSet, o *clientOptions, serverUsage string) {
	flagEnv(fs, &o.server, "server", "AIRLOCK_SERVER", serverUsage)
	flagEnv(fs, &o.apiKey, "api-key", "AIRLOCK_API_KEY", "API key for the daemon")
}

func (o *clientOptions) client() *airlock.Client { return airlock.New(o.server, o.apiKey) }
