package server

import (
	"net/http"

	"github.com/airlockhq/airlock/web/playground"
)

// playgroundCSP keeps the page to its own origin: scripts, styles and API calls go to the
// daemon only. Images may also be data: URLs, which is how plots (base64 display data of the
// session API) are shown inline.
const playgroundCSP = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"

// playgroundRoutes serves the web playground (web/playground, embedded) at /playground/ and
// sends / there. The page is static and public; everything it does goes through the /v1
// routes with the key the user gives it.
func (s *Server) playgroundRoutes() {
	files := http.FileServerFS(playground.FS())
	page := http.StripPrefix("/playground", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", playgroundCSP)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	}))
	s.mux.Handle("GET /playground/", page)
	s.mux.Handle("GET /{$}", http.RedirectHandler("/playground/", http.StatusFound))
}
