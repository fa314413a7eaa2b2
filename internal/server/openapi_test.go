package server

import (
	"bytes"
	"cmp"
	"encoding/json"
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
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
	docs, err := apiDocs("../../api")
	if err != nil {
		t.Fatal(err)
	}
	b, err := openAPI(docs)
	if err != nil {
		t.Fatal(err)
	}
	if !json.Valid(b) {
		t.Fatal("generated document is not JSON")
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

// apiDocs reads the doc comments of the api package's types and struct fields from its source in
// dir: keys "Type" and "Type.Field" (Go names). They are the descriptions of the document, so the
// Go documentation and the OpenAPI one cannot drift apart.
func apiDocs(dir string) (map[string]string, error) {
	fset := token.NewFileSet()
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		return nil, err
	}
	docs := map[string]string{}
	text := func(groups ...*ast.CommentGroup) string {
		for _, g := range groups {
			if t := strings.Join(strings.Fields(g.Text()), " "); t != "" {
				return t
			}
		}
		return ""
	}
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.ParseComments)
		if err != nil {
			return nil, fmt.Errorf("parsing api source: %w", err)
		}
		for _, decl := range f.Decls {
			gd, ok := decl.(*ast.GenDecl)
			if !ok || gd.Tok != token.TYPE {
				continue
			}
			for _, spec := range gd.Specs {
				ts := spec.(*ast.TypeSpec)
				if ts.Assign.IsValid() {
					continue // an alias describes the type it names
				}
				// The first paragraph: the rest of a type's comment is for Go callers.
				doc, _, _ := strings.Cut((cmp.Or(ts.Doc, gd.Doc)).Text(), "\n\n")
				docs[ts.Name.Name] = strings.Join(strings.Fields(doc), " ")
				st, ok := ts.Type.(*ast.StructType)
				if !ok {
					continue
				}
				for _, fld := range st.Fields.List {
					for _, n := range fld.Names {
						docs[ts.Name.Name+"."+n.Name] = text(fld.Doc, fld.Comment)
					}
				}
			}
		}
	}
	return docs, nil
}

// loadOpenAPI decodes the committed document.
func loadOpenAPI(t *testing.T) map[string]any {
	t.Helper()
	var doc map[string]any
	if err := json.Unmarshal(api.OpenAPI, &doc); err != nil {
		t.Fatalf("api/openapi.json does not parse: %v", err)
	}
	return doc
}

// obj is m[key] as an object, or nil.
func obj(m any, key string) map[string]any {
	v, _ := m.(map[string]any)[key].(map[string]any)
	return v
}

// TestOpenAPIComplete is what a client generator needs of the committed document: every
// operation, parameter, schema and property described; every request schema (and every schema
// it references) declaring required; enums and bounds where the API has them; every $ref
// resolving; and the deprecated returncode alias marked so.
func TestOpenAPIComplete(t *testing.T) {
	doc := loadOpenAPI(t)
	if got, want := doc["openapi"], "3.1.0"; got != want {
		t.Errorf("openapi: got %v, want %v", got, want)
	}
	schemas := obj(obj(doc, "components"), "schemas")
	if len(schemas) == 0 {
		t.Fatal("no components.schemas")
	}
	// Every $ref resolves, wherever it is.
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if ref, ok := v["$ref"].(string); ok {
				name, found := strings.CutPrefix(ref, "#/components/schemas/")
				if !found || schemas[name] == nil {
					t.Errorf("$ref %q does not resolve", ref)
				}
			}
			for _, e := range v {
				walk(e)
			}
		case []any:
			for _, e := range v {
				walk(e)
			}
		}
	}
	walk(doc)

	// Request schemas, and the schemas they reference, transitively.
	requests := map[string]bool{}
	var mark func(v any)
	mark = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if ref, ok := v["$ref"].(string); ok {
				name := strings.TrimPrefix(ref, "#/components/schemas/")
				if !requests[name] {
					requests[name] = true
					mark(schemas[name])
				}
			}
			for _, e := range v {
				mark(e)
			}
		case []any:
			for _, e := range v {
				mark(e)
			}
		}
	}
	for path, item := range obj(doc, "paths") {
		for method, op := range item.(map[string]any) {
			where := strings.ToUpper(method) + " " + path
			o := op.(map[string]any)
			if o["description"] == "" || o["description"] == nil || o["summary"] == "" {
				t.Errorf("%s: no summary or description", where)
			}
			params, _ := o["parameters"].([]any)
			for _, p := range params {
				if d, _ := p.(map[string]any)["description"].(string); d == "" {
					t.Errorf("%s: parameter %v has no description", where, p.(map[string]any)["name"])
				}
			}
			if rb := obj(o, "requestBody"); rb != nil {
				mark(rb)
			}
		}
	}
	if len(requests) == 0 {
		t.Fatal("no request schemas found")
	}
	for name, s := range schemas {
		s := s.(map[string]any)
		if d, _ := s["description"].(string); d == "" {
			t.Errorf("schema %s has no description", name)
		}
		if _, ok := s["required"].([]any); requests[name] && !ok {
			t.Errorf("request schema %s has no required list", name)
		}
		for prop, p := range obj(s, "properties") {
			if d, _ := p.(map[string]any)["description"].(string); d == "" {
				t.Errorf("%s.%s has no description", name, prop)
			}
		}
	}

	// Spot checks of the rules, against their sources of truth.
	lim, err := defaultLimits()
	if err != nil {
		t.Fatal(err)
	}
	prop := func(schema, name string) map[string]any { return obj(obj(schemas[schema], "properties"), name) }
	tests := []struct {
		schema, prop, key string
		want              any
	}{
		{"ExecuteRequest", "timeout", "minimum", lim.MinTimeout},
		{"ExecuteRequest", "timeout", "maximum", lim.MaxTimeout},
		{"ExecuteRequest", "timeout", "default", lim.DefaultTimeout},
		{"ExecuteRequest", "memory_mb", "minimum", float64(lim.MinMemoryMB)},
		{"ExecuteRequest", "memory_mb", "maximum", float64(lim.MaxMemoryMB)},
		{"ExecuteRequest", "cpu", "exclusiveMinimum", 0.0},
		{"CreateSessionRequest", "memory_mb", "maximum", float64(lim.MaxMemoryMB)},
		{"BatchRequest", "snippets", "maxItems", float64(engine.MaxBatch)},
		{"PTY", "cols", "maximum", 65535.0},
		{"ExecuteRequest", "language", "enum", toAny(api.Languages)},
		{"ExecEvent", "type", "enum", toAny(api.EventTypes)},
		{"ErrorDetail", "code", "enum", toAny(errorCodes())},
		{"SandboxInfo", "status", "enum", toAny(api.Statuses)},
		{"FileInfo", "type", "enum", toAny(api.FileTypes)},
		{"ExecuteResponse", "exit_code", "type", "integer"},
		{"ExecuteResponse", "returncode", "deprecated", true},
		{"BatchResult", "returncode", "deprecated", true},
		{"RunResult", "result", "anyOf", []any{map[string]any{"type": "string"}, map[string]any{"type": "null"}}},
	}
	for _, tt := range tests {
		t.Run(tt.schema+"."+tt.prop+"."+tt.key, func(t *testing.T) {
			if got := prop(tt.schema, tt.prop)[tt.key]; !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %#v, want %#v", got, tt.want)
			}
		})
	}
	required := []struct {
		schema string
		want   []any
	}{
		{"ExecuteRequest", []any{"code"}},
		{"ExecRequest", []any{"cmd"}},
		{"CreateSandboxRequest", []any{}},
		{"SeedREPLRequest", []any{"code", "session_id"}},
		{"BatchResult", []any{}},
	}
	for _, tt := range required {
		if got := schemas[tt.schema].(map[string]any)["required"]; !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s required: got %v, want %v", tt.schema, got, tt.want)
		}
	}
	if d, _ := prop("ExecuteResponse", "returncode")["description"].(string); !strings.Contains(d, "Deprecated") {
		t.Errorf("returncode description %q does not say it is deprecated", d)
	}
	if slices.Contains(toStrings(schemas["ExecuteResponse"].(map[string]any)["required"]), "returncode") {
		t.Error("the deprecated returncode is required; generated clients would depend on it")
	}
}

// TestErrorCodes checks the code enum against the one code→status map: every code but internal
// has a status of its own, and none is listed twice.
func TestErrorCodes(t *testing.T) {
	seen := map[string]bool{}
	for _, code := range errorCodes() {
		if seen[code] {
			t.Errorf("code %q listed twice", code)
		}
		seen[code] = true
		if got := statusOf(code); got == http.StatusInternalServerError && code != api.CodeInternal {
			t.Errorf("statusOf(%q): got %d, want its own status", code, got)
		}
	}
}

func toAny(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}

func toStrings(v any) []string {
	var out []string
	l, _ := v.([]any)
	for _, e := range l {
		s, _ := e.(string)
		out = append(out, s)
	}
	return out
}
