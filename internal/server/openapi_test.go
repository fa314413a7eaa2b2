package server

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"slices"
	"testing"

	"github.com/airlockhq/airlock/api"
)

var update = flag.Bool("update", false, "rewrite api/openapi.json")

// TestOpenAPI checks the document against the routes: every route documented, nothing documented
// that is not served, and api/openapi.json exactly what the route table and types generate.
func TestOpenAPI(t *testing.T) {
	_, _, e := newTestServerEngine(t)
	s, err := New(Config{Engine: e})
	if err != nil {
		t.Fatal(err)
	}
	var documented []string
	for _, d := range routeDocs {
		documented = append(documented, d.pattern)
	}
	for _, p := range s.patterns {
		if !slices.Contains(documented, p) {
			t.Errorf("route %q is not in the OpenAPI document (add it to routeDocs)", p)
		}
	}
	for _, p := range documented {
		if !slices.Contains(s.patterns, p) {
			t.Errorf("documented route %q is not served", p)
		}
	}
	b, err := openAPI()
	if err != nil {
		t.Fatal(err)
	}
	if !json.Valid(b) {
		t.Fatal("generated document is not JSON")
	}
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.WriteFile("../../api/openapi.json", b, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if !bytes.Equal(b, api.OpenAPI) {
		t.Fatal("api/openapi.json is stale: run go test ./internal/server -run TestOpenAPI -update")
	}
}
