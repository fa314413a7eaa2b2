// Package secrets stores named secrets: sets of environment variables that an API key saves
// once and then names on runs, sandboxes and sessions (as Modal's Secret.from_name). Each
// secret is one file under the state directory, encrypted with AES-256-GCM under the
// operator's key and bound (as additional data) to its owner and name, so a file copied to
// another owner or renamed does not decrypt. Values leave the store only through Resolve,
// for injection into a sandbox; Info, which listings return, holds the variables' names only.
package secrets

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/airlockhq/airlock/api"
)

// Bounds of one owner's secrets.
const (
	MaxSecrets    = 100      // secrets per owner
	MaxVars       = 100      // variables per secret
	MaxValueBytes = 64 << 10 // names and values of one secret together
)

var (
	nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	envRE  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,127}$`)
)

// magic starts every secret file (and names its format's version).
const magic = "airlock-secret-v1\n"

// Info describes a secret without its values.
type Info struct {
	Name    string
	Keys    []string // the variables' names, sorted
	Created time.Time
	Updated time.Time
}

// payload is what a secret file holds, encrypted.
type payload struct {
	Values  map[string]string `json:"values"`
	Created time.Time         `json:"created"`
	Updated time.Time         `json:"updated"`
}

// Store is the secrets of every owner, in one directory.
type Store struct {
	dir  string
	aead cipher.AEAD

	mu sync.Mutex // serializes writers, so a count check and its write are one step
}

// LoadKey reads the operator's key file: 32 bytes, as themselves, as 64 hex digits or as
// base64 (surrounding white space ignored). A file others can read is refused: the key opens
// every tenant's secrets.
func LoadKey(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("secrets key file: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("secrets key file %s is readable by others (mode %v): chmod 600 it", path, st.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("secrets key file: %w", err)
	}
	if len(b) == 32 {
		return b, nil
	}
	s := strings.TrimSpace(string(b))
	if k, err := hex.DecodeString(s); err == nil && len(k) == 32 {
		return k, nil
	}
	if k, err := base64.StdEncoding.DecodeString(s); err == nil && len(k) == 32 {
		return k, nil
	}
	return nil, fmt.Errorf("secrets key file %s must hold 32 bytes (raw, 64 hex digits or base64), e.g. from `openssl rand -hex 32`", path)
}

// Open returns the store in dir (created 0700), encrypting under key (32 bytes).
func Open(dir string, key []byte) (*Store, error) {
	if len(key) != 32 {
		return nil, errors.New("secrets: the key must be 32 bytes (AES-256)")
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("secrets: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("secrets: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("secrets directory: %w", err)
	}
	return &Store{dir: dir, aead: aead}, nil
}

// ownerDir is where owner's secrets live; the owner is a hex hash of its key, or "" without
// keys.
func (s *Store) ownerDir(owner string) string {
	if owner == "" {
		owner = "_"
	}
	return filepath.Join(s.dir, owner)
}

func (s *Store) path(owner, name string) string {
	return filepath.Join(s.ownerDir(owner), name+".secret")
}

func additional(owner, name string) []byte { return []byte(magic + owner + "\x00" + name) }

// checkName refuses a name that is not 1…64 characters of [A-Za-z0-9._-] starting with a
// letter or digit.
func checkName(name string) error {
	if !nameRE.MatchString(name) {
		return api.Errorf(api.ErrInvalidArgument, "secret name %q must be 1…64 characters of [A-Za-z0-9._-], starting with a letter or digit", name)
	}
	return nil
}

// checkValues refuses an empty or oversized set, and variable names the environment cannot
// hold. The messages name variables, never values.
func checkValues(values map[string]string) error {
	if len(values) == 0 || len(values) > MaxVars {
		return api.Errorf(api.ErrInvalidArgument, "a secret holds 1…%d variables, not %d", MaxVars, len(values))
	}
	total := 0
	for k, v := range values {
		if !envRE.MatchString(k) {
			return api.Errorf(api.ErrInvalidArgument, "variable name %q must match [A-Za-z_][A-Za-z0-9_]* (at most 128 characters)", k)
		}
		if strings.ContainsRune(v, 0) {
			return api.Errorf(api.ErrInvalidArgument, "the value of %s contains a NUL byte", k)
		}
		total += len(k) + len(v)
	}
	if total > MaxValueBytes {
		return api.Errorf(api.ErrInvalidArgument, "a secret's names and values take at most %d bytes together, not %d", MaxValueBytes, total)
	}
	return nil
}

// Put creates the secret name of owner, or replaces its variables.
func (s *Store) Put(owner, name string, values map[string]string) (Info, error) {
	if err := checkName(name); err != nil {
		return Info{}, err
	}
	if err := checkValues(values); err != nil {
		return Info{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now().UTC()
	p := payload{Values: values, Created: now, Updated: now}
	old, err := s.read(owner, name)
	switch {
	case err == nil:
		p.Created = old.Created
	case errors.Is(err, api.ErrNotFound):
		names, err := s.names(owner)
		if err != nil {
			return Info{}, err
		}
		if len(names) >= MaxSecrets {
			return Info{}, api.Errorf(api.ErrResourceExhausted, "this API key has %d secrets, the limit; delete some", len(names))
		}
	default:
		return Info{}, err
	}
	plain, err := json.Marshal(p)
	if err != nil {
		return Info{}, fmt.Errorf("encode secret: %w", err)
	}
	nonce := make([]byte, s.aead.NonceSize())
	rand.Read(nonce)
	out := append([]byte(magic), nonce...)
	out = s.aead.Seal(out, nonce, plain, additional(owner, name))
	clear(plain)
	if err := writeFile(s.ownerDir(owner), s.path(owner, name), out); err != nil {
		return Info{}, fmt.Errorf("store secret %s: %w", name, err)
	}
	return info(name, p), nil
}

// writeFile writes b to path atomically (a temporary file, synced, renamed over it), 0600 in a
// 0700 directory.
func writeFile(dir, path string, b []byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // after the rename, nothing
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// read decrypts one secret; api.ErrNotFound when owner has none of that name.
func (s *Store) read(owner, name string) (payload, error) {
	b, err := os.ReadFile(s.path(owner, name))
	if errors.Is(err, fs.ErrNotExist) {
		return payload{}, api.Errorf(api.ErrNotFound, "no secret %q", name)
	}
	if err != nil {
		return payload{}, fmt.Errorf("read secret %s: %w", name, err)
	}
	rest, ok := strings.CutPrefix(string(b), magic)
	if !ok || len(rest) < s.aead.NonceSize() {
		return payload{}, fmt.Errorf("secret %s: not a secret file", name)
	}
	nonce, sealed := []byte(rest[:s.aead.NonceSize()]), []byte(rest[s.aead.NonceSize():])
	plain, err := s.aead.Open(nil, nonce, sealed, additional(owner, name))
	if err != nil {
		// A different operator key, or a file moved between owners or names.
		return payload{}, fmt.Errorf("secret %s does not decrypt under this daemon's secrets key: %w", name, err)
	}
	defer clear(plain)
	var p payload
	if err := json.Unmarshal(plain, &p); err != nil {
		return payload{}, fmt.Errorf("secret %s: %w", name, err)
	}
	return p, nil
}

// names lists owner's secret names, sorted.
func (s *Store) names(owner string) ([]string, error) {
	ents, err := os.ReadDir(s.ownerDir(owner))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list secrets: %w", err)
	}
	var out []string
	for _, e := range ents {
		if n, ok := strings.CutSuffix(e.Name(), ".secret"); ok && e.Type().IsRegular() && nameRE.MatchString(n) {
			out = append(out, n)
		}
	}
	return out, nil
}

func info(name string, p payload) Info {
	return Info{Name: name, Keys: slices.Sorted(maps.Keys(p.Values)), Created: p.Created, Updated: p.Updated}
}

// List describes owner's secrets, sorted by name, without their values.
func (s *Store) List(owner string) ([]Info, error) {
	names, err := s.names(owner)
	if err != nil {
		return nil, err
	}
	out := make([]Info, 0, len(names))
	for _, n := range names {
		p, err := s.read(owner, n)
		if err != nil {
			return nil, err
		}
		out = append(out, info(n, p))
	}
	return out, nil
}

// Delete removes owner's secret name; api.ErrNotFound if there is none. Sandboxes that
// already resolved it keep its variables until they end.
func (s *Store) Delete(owner, name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	err := os.Remove(s.path(owner, name))
	if errors.Is(err, fs.ErrNotExist) {
		return api.Errorf(api.ErrNotFound, "no secret %q", name)
	}
	if err != nil {
		return fmt.Errorf("delete secret %s: %w", name, err)
	}
	return nil
}

// Resolve returns the variables of owner's secrets names, merged in order (a later secret's
// variable wins). It implements engine.Secrets.
func (s *Store) Resolve(ctx context.Context, owner string, names []string) (map[string]string, error) {
	env := map[string]string{}
	for _, n := range names {
		if err := checkName(n); err != nil {
			return nil, err
		}
		p, err := s.read(owner, n)
		if err != nil {
			return nil, err
		}
		maps.Copy(env, p.Values)
	}
	return env, nil
}
