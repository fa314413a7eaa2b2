package secrets

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/airlockhq/airlock/api"
)

func testStore(t *testing.T, key byte) (*Store, string) {
	t.Helper()
	dir := t.TempDir()
	s, err := Open(dir, bytes.Repeat([]byte{key}, 32))
	if err != nil {
		t.Fatal(err)
	}
	return s, dir
}

// TestRoundTripAndIsolation: values come back only through Resolve, for their owner; the
// file holds neither value nor variable name; a file moved to another owner or name, or read
// under another key, does not decrypt.
func TestRoundTripAndIsolation(t *testing.T) {
	t.Parallel()
	s, dir := testStore(t, 1)
	const value = "VALUE-MARKER-0001"
	info, err := s.Put("owner1", "db", map[string]string{"DB_PASSWORD": value, "DB_USER": "u"})
	if err != nil || info.Name != "db" || strings.Join(info.Keys, ",") != "DB_PASSWORD,DB_USER" {
		t.Fatalf("Put: %+v, %v", info, err)
	}
	env, err := s.Resolve(t.Context(), "owner1", []string{"db"})
	if err != nil || env["DB_PASSWORD"] != value {
		t.Fatalf("Resolve: %v, %v", env, err)
	}
	if _, err := s.Resolve(t.Context(), "owner2", []string{"db"}); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("another owner resolves it: %v, want not found", err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "owner1", "db.secret"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(b, []byte(value)) || bytes.Contains(b, []byte("DB_PASSWORD")) {
		t.Fatal("the file on disk holds the value or the variable's name")
	}
	st, _ := os.Stat(filepath.Join(dir, "owner1", "db.secret"))
	if st.Mode().Perm() != 0o600 {
		t.Errorf("file mode %v, want 0600", st.Mode().Perm())
	}
	// Moved to another owner, or renamed: the additional data no longer matches.
	os.MkdirAll(filepath.Join(dir, "owner2"), 0o700)
	os.WriteFile(filepath.Join(dir, "owner2", "db.secret"), b, 0o600)
	os.WriteFile(filepath.Join(dir, "owner1", "other.secret"), b, 0o600)
	for _, c := range [][2]string{{"owner2", "db"}, {"owner1", "other"}} {
		if _, err := s.Resolve(t.Context(), c[0], []string{c[1]}); err == nil || errors.Is(err, api.ErrNotFound) {
			t.Errorf("a file moved to %s/%s decrypts (%v)", c[0], c[1], err)
		}
	}
	other, _ := Open(dir, bytes.Repeat([]byte{2}, 32))
	if _, err := other.Resolve(t.Context(), "owner1", []string{"db"}); err == nil {
		t.Error("another operator key decrypts the secret")
	}
	tampered := bytes.Clone(b)
	tampered[len(tampered)-1] ^= 1
	os.WriteFile(filepath.Join(dir, "owner1", "db.secret"), tampered, 0o600)
	if _, err := s.Resolve(t.Context(), "owner1", []string{"db"}); err == nil {
		t.Error("a tampered file decrypts")
	}
}

func TestPutListDelete(t *testing.T) {
	t.Parallel()
	s, _ := testStore(t, 3)
	if _, err := s.Put("o", "a", map[string]string{"A": "1"}); err != nil {
		t.Fatal(err)
	}
	first, _ := s.List("o")
	if _, err := s.Put("o", "a", map[string]string{"B": "2"}); err != nil {
		t.Fatal(err)
	}
	list, err := s.List("o")
	if err != nil || len(list) != 1 || list[0].Keys[0] != "B" || !list[0].Created.Equal(first[0].Created) {
		t.Fatalf("after replacing: %+v, %v", list, err)
	}
	if err := s.Delete("o", "a"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete("o", "a"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("second delete: %v, want not found", err)
	}
	bad := []struct {
		name   string
		values map[string]string
	}{
		{"../etc", map[string]string{"A": "1"}},
		{"", map[string]string{"A": "1"}},
		{"ok", nil},
		{"ok", map[string]string{"1A": "1"}},
		{"ok", map[string]string{"A": "x\x00y"}},
		{"ok", map[string]string{"A": strings.Repeat("x", MaxValueBytes)}},
	}
	for _, c := range bad {
		if _, err := s.Put("o", c.name, c.values); !errors.Is(err, api.ErrInvalidArgument) {
			t.Errorf("Put(%q, %d vars): %v, want invalid argument", c.name, len(c.values), err)
		}
	}
}

func TestLoadKey(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	raw := bytes.Repeat([]byte{9}, 32)
	cases := []struct {
		name    string
		content []byte
		mode    os.FileMode
		ok      bool
	}{
		{"raw", raw, 0o600, true},
		{"hex", []byte(strings.Repeat("09", 32) + "\n"), 0o600, true},
		{"base64", []byte("CQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=\n"), 0o400, true},
		{"short", []byte("abc"), 0o600, false},
		{"world-readable", raw, 0o644, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(dir, c.name)
			os.WriteFile(p, c.content, c.mode)
			os.Chmod(p, c.mode)
			k, err := LoadKey(p)
			if c.ok && (err != nil || !bytes.Equal(k, raw)) {
				t.Fatalf("got %x, %v; want the key", k, err)
			}
			if !c.ok && err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

// BenchmarkResolve is what naming one secret adds to a one-shot run: reading its file and
// opening it with AES-256-GCM (a sandbox resolves its secrets once, at creation).
func BenchmarkResolve(b *testing.B) {
	s, err := Open(b.TempDir(), bytes.Repeat([]byte{1}, 32))
	if err != nil {
		b.Fatal(err)
	}
	if _, err := s.Put("o", "openai", map[string]string{"OPENAI_API_KEY": strings.Repeat("k", 64), "ORG": "x"}); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Resolve(b.Context(), "o", []string{"openai"}); err != nil {
			b.Fatal(err)
		}
	}
}
