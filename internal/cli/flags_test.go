package cli

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

// TestFlagEnv: a flag given on the command line beats its variable, the variable beats the
// default, and a malformed variable is an error naming it.
func TestFlagEnv(t *testing.T) {
	type conf struct {
		N    int
		D    time.Duration
		B    int64
		S    string
		On   bool
		F    float64
		NoFD uint64
	}
	bind := func(c *conf) *pflag.FlagSet {
		fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
		flagEnv(fs, &c.N, "n", "AIRLOCK_TEST_N", "")
		flagEnv(fs, &c.D, "d", "AIRLOCK_TEST_D", "")
		flagEnv(fs, (*byteSize)(&c.B), "b", "AIRLOCK_TEST_B", "")
		flagEnv(fs, &c.S, "s", "AIRLOCK_TEST_S", "")
		flagEnv(fs, &c.On, "on", "AIRLOCK_TEST_ON", "")
		flagEnv(fs, &c.F, "f", "AIRLOCK_TEST_F", "")
		flagEnv(fs, &c.NoFD, "nofd", "AIRLOCK_TEST_NOFD", "")
		return fs
	}
	def := conf{N: 1, D: time.Second, B: 1 << 20, S: "def", F: 0.5, NoFD: 7}
	for _, tt := range []struct {
		name    string
		args    []string
		env     map[string]string
		want    conf
		wantErr string
	}{
		{name: "default", want: def},
		{name: "env beats default",
			env:  map[string]string{"AIRLOCK_TEST_N": "2", "AIRLOCK_TEST_D": "2m", "AIRLOCK_TEST_B": "512MiB", "AIRLOCK_TEST_S": "env", "AIRLOCK_TEST_ON": "true", "AIRLOCK_TEST_F": "1.5", "AIRLOCK_TEST_NOFD": "8"},
			want: conf{N: 2, D: 2 * time.Minute, B: 512 << 20, S: "env", On: true, F: 1.5, NoFD: 8}},
		{name: "flag beats env",
			args: []string{"--n=3", "--d=3s", "--b=3G", "--s=flag", "--on=false", "--f=2", "--nofd=9"},
			env:  map[string]string{"AIRLOCK_TEST_N": "2", "AIRLOCK_TEST_D": "2m", "AIRLOCK_TEST_B": "512MiB", "AIRLOCK_TEST_S": "env", "AIRLOCK_TEST_ON": "true", "AIRLOCK_TEST_F": "1.5", "AIRLOCK_TEST_NOFD": "8"},
			want: conf{N: 3, D: 3 * time.Second, B: 3 << 30, S: "flag", F: 2, NoFD: 9}},
		{name: "an empty variable is unset", env: map[string]string{"AIRLOCK_TEST_N": ""}, want: def},
		{name: "bad int", env: map[string]string{"AIRLOCK_TEST_N": "many"}, wantErr: `AIRLOCK_TEST_N="many" (for --n)`},
		{name: "bad duration", env: map[string]string{"AIRLOCK_TEST_D": "60"}, wantErr: `AIRLOCK_TEST_D="60" (for --d)`},
		{name: "bad bytes", env: map[string]string{"AIRLOCK_TEST_B": "lots"}, wantErr: `AIRLOCK_TEST_B="lots" (for --b): want a byte count`},
		{name: "bad bool", env: map[string]string{"AIRLOCK_TEST_ON": "maybe"}, wantErr: `AIRLOCK_TEST_ON="maybe"`},
		{name: "a bad variable under a flag is not read", args: []string{"--n=4"}, env: map[string]string{"AIRLOCK_TEST_N": "many"},
			want: conf{N: 4, D: time.Second, B: 1 << 20, S: "def", F: 0.5, NoFD: 7}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			c := def
			fs := bind(&c)
			if err := fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			err := applyEnv(fs)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c != tt.want {
				t.Errorf("got %+v, want %+v", c, tt.want)
			}
		})
	}
}

func TestByteSize(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want int64
		str  string
		bad  bool
	}{
		{in: "1048576", want: 1 << 20, str: "1MiB"},
		{in: "512MiB", want: 512 << 20, str: "512MiB"},
		{in: "8G", want: 8 << 30, str: "8GiB"},
		{in: "1536KiB", want: 1536 << 10, str: "1536KiB"},
		{in: "100B", want: 100, str: "100"},
		{in: "0", want: 0, str: "0"},
		{in: "-1MiB", bad: true},
		{in: "1.5GiB", bad: true},
		{in: "99999999TiB", bad: true},
		{in: "", bad: true},
	} {
		t.Run(tt.in, func(t *testing.T) {
			var b byteSize
			err := b.Set(tt.in)
			if tt.bad {
				if err == nil {
					t.Fatalf("Set(%q) = %d, want an error", tt.in, b)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := int64(b); got != tt.want {
				t.Errorf("got %d, want %d", got, tt.want)
			}
			if got := b.String(); got != tt.str {
				t.Errorf("String() = %q, want %q", got, tt.str)
			}
		})
	}
}

// envName is the variable a flag's name calls for: --max-concurrent is AIRLOCK_MAX_CONCURRENT.
func envName(flag string) string {
	return "AIRLOCK_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// TestServeFlagsHaveEnv: every flag of `airlock serve` is bound with its AIRLOCK_* variable,
// named after the flag, says so in its usage, and is in README's operator-knobs paragraph.
func TestServeFlagsHaveEnv(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, knobs, ok := strings.Cut(string(readme), "Operator knobs of `airlock serve`")
	knobs, _, _ = strings.Cut(knobs, "\n\n")
	if !ok {
		t.Fatal("README has no operator-knobs paragraph")
	}
	serveCmd().Flags().VisitAll(func(f *pflag.Flag) {
		want := envName(f.Name)
		if got := f.Annotations[envAnnotation]; len(got) != 1 || got[0] != want {
			t.Errorf("--%s is bound to variable %q, want %s", f.Name, got, want)
		}
		if !strings.Contains(f.Usage, "(env "+want+")") {
			t.Errorf("--%s usage %q does not name %s", f.Name, f.Usage, want)
		}
		if !strings.Contains(knobs, "`--"+f.Name+"`") {
			t.Errorf("--%s is missing from README's operator knobs", f.Name)
		}
	})
}

// TestBadEnvStopsServe: a malformed variable stops `airlock serve` before it builds anything,
// naming the variable; it used to be ignored (AIRLOCK_UID_BASE) and the default used instead.
func TestBadEnvStopsServe(t *testing.T) {
	t.Setenv("AIRLOCK_UID_BASE", "two-million")
	root := newRoot()
	// Should the variable be ignored, serve stops at the missing key file, before any engine.
	root.SetArgs([]string{"serve", "--api-key-file", t.TempDir() + "/none"})
	err := root.ExecuteContext(t.Context())
	if err == nil || !strings.Contains(err.Error(), `AIRLOCK_UID_BASE="two-million"`) {
		t.Fatalf("got error %v, want one naming AIRLOCK_UID_BASE", err)
	}
}
