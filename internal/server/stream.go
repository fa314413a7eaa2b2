package server

import (
	"encoding/json"
	"net/http"
	"sync"

	"github.com/airlockhq/airlock/api"
)

// eventStream writes NDJSON ExecEvents, each flushed at once: the streamed exec and the streamed
// one-shot both answer this way. The 200 and its headers go out with the first event, so a
// handler that fails before sending anything still answers a normal error. Safe for concurrent
// use (an output callback and the handler's final event share it).
type eventStream struct {
	w  http.ResponseWriter
	rc *http.ResponseController

	mu  sync.Mutex // guards enc and begun
	enc *json.Encoder
	// begun is whether the headers have been written.
	begun bool
}

func newEventStream(w http.ResponseWriter) *eventStream {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return &eventStream{w: w, rc: http.NewResponseController(w), enc: enc}
}

func (es *eventStream) send(ev api.ExecEvent) {
	es.mu.Lock()
	defer es.mu.Unlock()
	if !es.begun {
		es.w.Header().Set("Content-Type", "application/x-ndjson")
		es.w.Header().Set("X-Content-Type-Options", "nosniff")
		es.w.WriteHeader(http.StatusOK)
		es.begun = true
	}
	es.enc.Encode(ev)
	es.rc.Flush()
}

// started reports whether an event has been sent (and with it the 200).
func (es *eventStream) started() bool {
	es.mu.Lock()
	defer es.mu.Unlock()
	return es.begun
}
