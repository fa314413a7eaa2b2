package server

import (
	"net/http"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/audit"
)

// The server audits only what the engine never sees whole: named secrets created and deleted
// (by name; never a value), image pulls and builds as requests. Executions and lifecycle events
// are the engine's to audit (engine.Config.Audit), so that every front end is covered.

func (s *Server) auditSecret(r *http.Request, event, name string, err error) {
	if s.cfg.Audit == nil {
		return
	}
	rec := audit.Record{Time: time.Now().UTC(), Event: event, Secrets: []string{name}, Outcome: "ok"}
	if err != nil {
		rec.Outcome, rec.ErrorCode = "error", api.PublicDetail(err).Code
	}
	s.cfg.Audit.Record(r.Context(), rec)
}

// imageEvent is the audit event of the image routes the engine does not see whole: a pull (no
// sandbox at all) and a build (whose steps the engine audits one by one).
func imageEvent(pattern string) string {
	switch pattern {
	case "POST /v1/images/pull":
		return "image.pull"
	case "POST /v1/images":
		return "image.build"
	}
	return ""
}

// audited records a request of an image route: who, when, how long, and the error code it
// answered (a build that fails after its stream began answers its error in the stream, and is
// recorded ok; its steps' records say how each ended).
func (s *Server) audited(pattern string, h handlerFunc) handlerFunc {
	event := imageEvent(pattern)
	if event == "" {
		return h
	}
	return func(w http.ResponseWriter, r *http.Request) error {
		start := time.Now()
		err := h(w, r)
		if s.cfg.Audit != nil {
			rec := audit.Record{Time: start.UTC(), Event: event, Outcome: "ok", DurationMS: float64(time.Since(start).Microseconds()) / 1000}
			if err != nil {
				rec.Outcome, rec.ErrorCode = "error", api.PublicDetail(err).Code
			}
			s.cfg.Audit.Record(r.Context(), rec)
		}
		return err
	}
}
