package engine

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/airlockhq/airlock/api"
)

// Recoverer is implemented by runtimes whose sandboxes outlive the daemon.
type Recoverer interface {
	Recover(ctx context.Context) ([]Recovered, error)
}

// Recovered is a sandbox a previous daemon left running.
type Recovered struct {
	ID   string
	Inst Instance
	Meta []byte
}

// sandboxMeta is what the engine keeps with a sandbox so a restarted daemon can adopt it.
type sandboxMeta struct {
	Req     api.CreateSandboxRequest `json:"req"`
	Created time.Time                `json:"created"`
	Expires time.Time                `json:"expires"`
	Idle    time.Duration            `json:"idle"`
	Owner   string                   `json:"owner,omitempty"`
}

// Recover adopts the long-lived sandboxes a previous daemon left running and destroys the rest
// (one-shot sandboxes, whose caller is gone). Call it once, before serving.
func (e *Engine) Recover(ctx context.Context) (adopted, destroyed int, err error) {
	rec, ok := e.cfg.Runtime.(Recoverer)
	if !ok {
		return 0, 0, nil
	}
	found, err := rec.Recover(ctx)
	for _, r := range found {
		var m sandboxMeta
		if !strings.HasPrefix(r.ID, "sb-") || json.Unmarshal(r.Meta, &m) != nil || m.Req.BlockNetwork == nil {
			e.destroy(ctx, r.ID, r.Inst)
			destroyed++
			continue
		}
		release, err := e.acquireSandbox(m.Owner)
		if err != nil {
			e.cfg.Logger.WarnContext(ctx, "no slot for a recovered sandbox; destroying it", "sandbox", r.ID)
			e.destroy(ctx, r.ID, r.Inst)
			destroyed++
			continue
		}
		sb := &Sandbox{id: r.ID, inst: r.Inst, client: r.Inst.Agent(), created: m.Created,
			expires: m.Expires, idle: m.Idle, req: m.Req, release: release, lastActive: time.Now(), owner: m.Owner}
		e.mu.Lock()
		e.live[r.ID] = r.Inst
		e.sandboxes[r.ID] = sb
		e.mu.Unlock()
		adopted++
	}
	if err != nil {
		err = errors.Join(errors.New("recover sandboxes"), err)
	}
	return adopted, destroyed, err
}
