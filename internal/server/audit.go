package server

import (
	"net/http"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/audit"
)

// The server audits only what the engine never sees: named secrets created and deleted (by
// name; never a value). Executions and lifecycle events are the engine's to audit
// (engine.Config.Audit), so that every front end is covered.

func (s *Server) auditSecret(r *http.Request, event, name string, err error) {
	if s.cfg.Audit == nil {
		return
	}
	rec := audit.Record{Time: time.Now().UTC(), Event: event, Secrets: []string{name}, Outcome: "ok"}
	if err != nil {
		rec.Outcome, rec.ErrorCode = "error", api.CodeOf(err)
	}
	s.cfg.Audit.Record(r.Context(), rec)
}
