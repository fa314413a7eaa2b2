package server

import (
	"io"
	"net/http"
	"time"
)

// deadlines sets the connection deadlines of one request of the route pattern (see
// Config.ReadTimeout and WriteTimeout). http.Server's own ReadTimeout and WriteTimeout are left
// unset: they are per connection and would cut every stream and long exec alike.
//
// The server never resets a write deadline between keep-alive requests when its WriteTimeout is
// unset, so every request starts by clearing the one its predecessor left.
func (s *Server) deadlines(pattern string, next http.Handler) http.Handler {
	var doc routeDoc
	for _, d := range routeDocs {
		if d.pattern == pattern {
			doc = d
		}
	}
	streamsBody := doc.raw == "request" || doc.upgrades || doc.proxy
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		rc.SetWriteDeadline(time.Time{})
		if !streamsBody && r.Body != nil && r.Body != http.NoBody {
			// An error means the writer cannot set deadlines (a test recorder): nothing to bound.
			// Once the body has been read to its end, net/http clears the deadline itself as it
			// starts its background read, so a long-running handler is not cut; a body never
			// finished keeps it, and the server closes the connection instead of waiting.
			rc.SetReadDeadline(time.Now().Add(s.cfg.ReadTimeout))
		}
		if streamsBody && !doc.upgrades && r.Body != nil && r.Body != http.NoBody {
			// A streamed body may take as long as it needs, but it must keep coming: each
			// read re-arms the deadline, so a client that stops sending mid-body (and would
			// hold its connection and a slot of the connection cap forever) is cut.
			r.Body = &progressReader{ReadCloser: r.Body, rc: rc, timeout: s.cfg.ReadTimeout}
		}
		if doc.upgrades {
			next.ServeHTTP(w, r)
			return
		}
		if doc.raw == "response" || doc.proxy || (doc.ndjson && wantsNDJSON(r)) {
			// A streamed answer likewise: each write must complete within WriteTimeout of
			// starting, so a client that stops reading is cut, however long the stream lives.
			next.ServeHTTP(&progressWriter{ResponseWriter: w, rc: rc, timeout: s.cfg.WriteTimeout}, r)
			return
		}
		next.ServeHTTP(&deadlineWriter{ResponseWriter: w, rc: rc, timeout: s.cfg.WriteTimeout}, r)
	})
}

// deadlineWriter starts the write deadline when the handler starts its answer.
type deadlineWriter struct {
	http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
	started bool
}

func (w *deadlineWriter) start() {
	if !w.started {
		w.started = true
		w.rc.SetWriteDeadline(time.Now().Add(w.timeout))
	}
}

func (w *deadlineWriter) WriteHeader(code int) {
	w.start()
	w.ResponseWriter.WriteHeader(code)
}

func (w *deadlineWriter) Write(b []byte) (int, error) {
	w.start()
	return w.ResponseWriter.Write(b)
}

func (w *deadlineWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// progressReader re-arms the connection's read deadline before every read of a streamed body.
type progressReader struct {
	io.ReadCloser
	rc      *http.ResponseController
	timeout time.Duration
}

func (r *progressReader) Read(b []byte) (int, error) {
	r.rc.SetReadDeadline(time.Now().Add(r.timeout))
	return r.ReadCloser.Read(b)
}

// progressWriter re-arms the connection's write deadline before every write of a streamed answer.
type progressWriter struct {
	http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
}

func (w *progressWriter) Write(b []byte) (int, error) {
	w.rc.SetWriteDeadline(time.Now().Add(w.timeout))
	return w.ResponseWriter.Write(b)
}

func (w *progressWriter) Flush() {
	w.rc.SetWriteDeadline(time.Now().Add(w.timeout))
	w.rc.Flush()
}

func (w *progressWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
