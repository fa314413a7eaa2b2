package server

import (
	"net/http"
	"strings"
	"testing"
)

func TestPlaygroundRoutes(t *testing.T) {
	t.Parallel()
	ts, _ := newTestServer(t, "playground-key-0000000001")
	ts.Client().CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	for _, tc := range []struct {
		method, path string
		status       int
		header, want string // a header of the answer and what it must start with
	}{
		{"GET", "/", http.StatusFound, "Location", "/playground/"},
		{"GET", "/playground", http.StatusTemporaryRedirect, "Location", "/playground/"},
		{"GET", "/playground/", http.StatusOK, "Content-Security-Policy", "default-src 'self'"},
		{"GET", "/playground/", http.StatusOK, "Content-Type", "text/html"},
		{"GET", "/playground/app.js", http.StatusOK, "Content-Type", "text/javascript"},
		{"GET", "/playground/app.css", http.StatusOK, "X-Content-Type-Options", "nosniff"},
		// Anything else is the API's JSON answers: the file server's own 404 for a missing asset, the auth check for any other path.
		{"GET", "/playground/nope.js", http.StatusNotFound, "Content-Security-Policy", "default-src 'self'"},
		{"POST", "/playground/", http.StatusUnauthorized, "Content-Type", "application/json"},
		{"GET", "/nope", http.StatusUnauthorized, "Content-Type", "application/json"},
	} {
		t.Run(tc.method+" "+tc.path+" "+tc.header, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(t.Context(), tc.method, ts.URL+tc.path, nil)
			resp, err := ts.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if got := resp.Header.Get(tc.header); !strings.HasPrefix(got, tc.want) {
				t.Errorf("%s: %q, want it to start with %q", tc.header, got, tc.want)
			}
		})
	}
}
