// Package judge serves the request shapes of four code-judge systems, so their clients can
// switch to Airlock by changing a URL: Piston v2 (piston.go), Judge0 CE (judge0.go), go-judge
// (gojudge.go) and codapi (codapi.go). Each is a front end over the engine's one-shot path,
// never a second engine: every run is a fresh sandbox with the engine's admission, per-key
// quotas and limits (engine.RunProgram for a language's source, engine.RunCommand for
// go-judge's argv). /shared/COMPAT.md §4–§7 gives the shapes and the credentials.
//
// Each API keeps its own credential header and error shape (Judge0's 401 has an empty body,
// go-judge's 400 is a JSON string, codapi's errors are its exec answer with ok false), so a
// stock client reads every answer it gets. The key itself is checked by the server
// (Config.Authorize), the same keys as /v1.
package judge

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
)

// Authorizer checks key, the credential a request carried in its API's own way ("" when it
// carried none), and returns the caller's context (its owner set, engine.WithOwner) and a
// release for its in-flight slot. The error is api.ErrUnauthenticated or
// api.ErrResourceExhausted.
type Authorizer func(r *http.Request, key string) (ctx context.Context, release func(), err error)

// Config configures the judge front ends.
type Config struct {
	Engine       *engine.Engine
	Logger       *slog.Logger
	Authorize    Authorizer
	MaxBodyBytes int64 // request body cap; default 10 MiB
	// Judge0 bounds the submissions Judge0 keeps; zero values mean the defaults.
	Judge0 Judge0Limits
}

// Judge is the four front ends; Handlers gives their http.Handlers by mount prefix.
type Judge struct {
	cfg    Config
	judge0 *judge0
	cache  *fileCache // go-judge's copyOutCached files
}

// New returns the judge front ends over cfg.Engine.
func New(cfg Config) (*Judge, error) {
	if cfg.Engine == nil || cfg.Authorize == nil {
		return nil, errors.New("judge: an engine and an authorizer are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxBodyBytes == 0 {
		cfg.MaxBodyBytes = 10 << 20
	}
	j := &Judge{cfg: cfg, cache: newFileCache()}
	j.judge0 = newJudge0(j, cfg.Judge0)
	return j, nil
}

// Handlers maps each mount prefix (COMPAT.md §1) to its API, to be served with the prefix
// stripped.
func (j *Judge) Handlers() map[string]http.Handler {
	return map[string]http.Handler{
		"/piston":  j.piston(),
		"/judge0":  j.judge0.routes(),
		"/gojudge": j.gojudge(),
		"/codapi":  j.codapi(),
	}
}

// Close stops Judge0's queued submissions and waits for those running; the engine's own
// Close ends their sandboxes.
func (j *Judge) Close() { j.judge0.close() }

// bearer is the key of an "Authorization: Bearer KEY" header, "" without one.
func bearer(r *http.Request) string {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return ""
	}
	return strings.TrimSpace(tok)
}

// basicPassword is the password of HTTP Basic credentials (the user name is ignored: the
// Piston client can only send a key as URL userinfo), "" without them.
func basicPassword(r *http.Request) string {
	_, pw, ok := r.BasicAuth()
	if !ok {
		return ""
	}
	return pw
}

// readJSON decodes the body into v whatever its Content-Type (the Piston client labels JSON
// text/plain); unknown fields are ignored, as the judges do. The message is for the client.
func (j *Judge) readJSON(w http.ResponseWriter, r *http.Request, v any) error {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, j.cfg.MaxBodyBytes))
	var maxErr *http.MaxBytesError
	switch {
	case errors.As(err, &maxErr):
		return errors.New("request body is too large")
	case err != nil:
		return errors.New("request body could not be read")
	case len(bytes.TrimSpace(b)) == 0:
		return errors.New("request body is empty")
	}
	if err := json.Unmarshal(b, v); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return errors.New("field " + typeErr.Field + " must be " + typeErr.Type.String() + ", not JSON " + typeErr.Value)
		}
		return errors.New("malformed JSON: " + strings.TrimPrefix(err.Error(), "json: "))
	}
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.Encode(v)
}

// publicMessage is what a client may see of an engine error: the message of a 4xx, a fixed
// text for anything internal (logged by the caller).
func publicMessage(err error) (code, message string) {
	d := api.PublicDetail(err)
	return d.Code, d.Message
}

// httpStatus is the status the /v1 API gives an error code; the judge APIs that answer
// engine errors with an HTTP error use the same mapping for the codes they share.
func httpStatus(code string) int {
	switch code {
	case api.CodeInvalidArgument:
		return http.StatusBadRequest
	case api.CodeUnauthenticated:
		return http.StatusUnauthorized
	case api.CodeNotFound:
		return http.StatusNotFound
	case api.CodeResourceExhausted:
		return http.StatusTooManyRequests
	case api.CodeUnavailable:
		return http.StatusServiceUnavailable
	case api.CodeTimeout:
		return http.StatusGatewayTimeout
	default:
		return http.StatusInternalServerError
	}
}

// logInternal logs err when it is an internal failure (the client sees only a fixed text).
func (j *Judge) logInternal(ctx context.Context, api string, err error) {
	if code, _ := publicMessage(err); httpStatus(code) >= 500 {
		j.cfg.Logger.ErrorContext(ctx, "judge run failed", "api", api, "err", err)
	}
}

// capture keeps one stage's output as the engine reports it: each stream's raw bytes (not
// yet made valid UTF-8, so base64 answers round-trip binary output) and both interleaved in
// the order they came. The engine passes on only what fits its output limit, so each buffer
// is bounded by it. Calls come from one goroutine.
type capture struct {
	stdout, stderr, both bytes.Buffer
}

func (c *capture) add(stream int, b []byte) {
	if stream == engine.StreamStderr {
		c.stderr.Write(b)
	} else {
		c.stdout.Write(b)
	}
	c.both.Write(b)
}

// limits turn a judge's own time limits into the sandbox's: the engine enforces a wall clock
// of at least its minimum timeout (1 s by default), so a shorter limit is checked afterwards
// against the run's measured wall and CPU time instead of being refused.
type limits struct {
	wall, cpu time.Duration // the judge's limits; 0 = none
}

// timeout is the sandbox's wall clock for l: the wall limit, else twice the CPU limit (a
// program blocked on nothing still ends), raised to the engine's minimum; 0 (the engine's
// default) without either.
func (l limits) timeout(e *engine.Engine) time.Duration {
	t := l.wall
	if t == 0 {
		t = 2 * l.cpu
	}
	if t == 0 {
		return 0
	}
	lim := e.Limits()
	return min(max(t, time.Duration(lim.MinTimeout*float64(time.Second))), time.Duration(lim.MaxTimeout*float64(time.Second)))
}

// exceeded reports whether res broke l: the sandbox's timeout fired, or its wall or CPU time
// passed the judge's limit.
func (l limits) exceeded(res *engine.Result) bool {
	return res.TimedOut || (l.wall > 0 && res.Duration > l.wall) || (l.cpu > 0 && res.CPUTime > l.cpu)
}

// decodeB64 decodes standard base64, tolerating the line breaks Ruby's and Python's encoders
// insert (Judge0's clients send those).
func decodeB64(s string) ([]byte, error) {
	s = strings.Map(func(r rune) rune {
		if r == '\n' || r == '\r' {
			return -1
		}
		return r
	}, s)
	return base64.StdEncoding.DecodeString(s)
}
