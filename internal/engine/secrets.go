package engine

import (
	"context"
	"maps"
	"slices"

	"github.com/airlockhq/airlock/api"
)

// Secrets resolves named secrets (POST /v1/secrets) to the environment variables they hold.
// The engine asks for them only to inject them into the processes of the run, sandbox or
// session that names them: it never persists the values (a sandbox's record keeps the names),
// logs them or puts them in an answer or an audit record.
type Secrets interface {
	// Resolve returns the variables of the owner's secrets, merged in the order named;
	// api.ErrNotFound for a name the owner has no secret under.
	Resolve(ctx context.Context, owner string, names []string) (map[string]string, error)
}

// MaxSecretsPerRun bounds the named secrets one run, sandbox or session may name.
const MaxSecretsPerRun = 16

// ErrSecretsDisabled answers a request naming secrets on a daemon without a secrets key.
var ErrSecretsDisabled = api.Errorf(api.ErrUnimplemented, "named secrets are disabled on this daemon: its operator must start it with --secrets-key-file")

// checkSecretNames refuses too many or repeated names (the store checks each name's form).
func checkSecretNames(names []string) error {
	if len(names) > MaxSecretsPerRun {
		return invalid("%d secrets exceed the limit of %d", len(names), MaxSecretsPerRun)
	}
	s := slices.Clone(names)
	slices.Sort(s)
	if len(slices.Compact(s)) != len(names) {
		return invalid("secrets names a secret twice")
	}
	return nil
}

// resolveSecrets returns the variables of owner's secrets names; nil for none.
func (e *Engine) resolveSecrets(ctx context.Context, owner string, names []string) (map[string]string, error) {
	if len(names) == 0 {
		return nil, nil
	}
	if err := checkSecretNames(names); err != nil {
		return nil, err
	}
	if e.cfg.Secrets == nil {
		return nil, ErrSecretsDisabled
	}
	return e.cfg.Secrets.Resolve(ctx, owner, names)
}

// overlayEnv returns secret's variables with env's on top: a variable the caller sets by name
// wins over a secret's.
func overlayEnv(secret, env map[string]string) map[string]string {
	if len(secret) == 0 {
		return env
	}
	out := maps.Clone(secret)
	maps.Copy(out, env)
	return out
}

// withSecretEnv returns env over the sandbox's secrets. They are resolved once, on first use,
// and kept in memory only (a sandbox adopted after a restart resolves them again from its
// record's names).
func (sb *Sandbox) withSecretEnv(ctx context.Context, env map[string]string) (map[string]string, error) {
	if len(sb.spec.Secrets) == 0 {
		return env, nil
	}
	sb.secretMu.Lock()
	defer sb.secretMu.Unlock()
	if sb.secretEnv == nil {
		s, err := sb.e.resolveSecrets(ctx, sb.owner, sb.spec.Secrets)
		if err != nil {
			return nil, err
		}
		sb.secretEnv = s
		if sb.secretEnv == nil {
			sb.secretEnv = map[string]string{}
		}
	}
	return overlayEnv(sb.secretEnv, env), nil
}

// startWithSecrets starts a sandbox of kind after resolving its secrets, so that a name the
// owner has no secret under fails the creation before any sandbox is made, and keeps them for
// its processes.
func (e *Engine) startWithSecrets(ctx context.Context, kind Kind, seed string, s SandboxSpec, warmRepl bool) (_ *Sandbox, warm bool, _ error) {
	env, err := e.resolveSecrets(ctx, Owner(ctx), s.Secrets)
	if err != nil {
		return nil, false, err
	}
	sb, warm, err := e.startSandbox(ctx, kind, seed, s, warmRepl)
	if err != nil {
		return nil, false, err
	}
	if env != nil {
		sb.secretMu.Lock()
		sb.secretEnv = env
		sb.secretMu.Unlock()
	}
	return sb, warm, nil
}
