package server

import (
	"encoding/json"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/airlockhq/airlock/api"
)

// routeDoc documents one route for the OpenAPI document. Every registered route has one; a test
// checks both ways and that api/openapi.json is what openAPI generates.
type routeDoc struct {
	pattern  string // as registered, "METHOD /path/{param}"
	summary  string
	req      any    // request body type, nil for none
	resp     any    // 2xx JSON body type, nil for none
	status   int    // success status; 200 if zero
	raw      string // a non-JSON body: "request" (octet-stream upload) or "response" (download)
	query    []string
	noAuth   bool
	ndjson   bool // also answers application/x-ndjson
	upgrades bool // WebSocket
}

var routeDocs = []routeDoc{
	{pattern: "GET /healthz", summary: "Liveness: {\"status\":\"ok\"} and nothing about the tenants", noAuth: true},
	{pattern: "GET /v1/info", summary: "Version, runtimes, languages and limits", resp: api.Info{}},
	{pattern: "GET /v1/openapi.json", summary: "This document", noAuth: true},
	{pattern: "GET /metrics", summary: "Prometheus metrics (text exposition format): counters of the whole daemon, to any API key"},
	{pattern: "POST /v1/execute", summary: "Run code once in a fresh sandbox", req: api.ExecuteRequest{}, resp: api.ExecuteResponse{}},
	{pattern: "POST /execute", summary: "Seed-compatible alias of /v1/execute", req: api.ExecuteRequest{}, resp: api.ExecuteResponse{}},
	{pattern: "POST /v1/execute/batch", summary: "Run many snippets, each in a fresh sandbox, with bounded concurrency; results in input order", req: api.BatchRequest{}, resp: api.BatchResponse{}},
	{pattern: "POST /v1/sandboxes", summary: "Create a long-lived sandbox", req: api.CreateSandboxRequest{}, resp: api.SandboxInfo{}, status: 201},
	{pattern: "GET /v1/sandboxes", summary: "List sandboxes (filter with tag=key:value, repeatable)", resp: api.SandboxList{}, query: []string{"tag"}},
	{pattern: "GET /v1/sandboxes/{id}", summary: "Describe a sandbox", resp: api.SandboxInfo{}},
	{pattern: "DELETE /v1/sandboxes/{id}", summary: "Terminate a sandbox", resp: api.SandboxInfo{}},
	{pattern: "POST /v1/sandboxes/{id}/exec", summary: "Run a command; JSON result, or NDJSON ExecEvents with Accept: application/x-ndjson", req: api.ExecRequest{}, resp: api.ExecResult{}, ndjson: true},
	{pattern: "GET /v1/sandboxes/{id}/exec/ws", summary: "Interactive exec over a WebSocket (see api.WSControl)", upgrades: true},
	{pattern: "GET /v1/sandboxes/{id}/processes", summary: "Running processes started through the API", resp: api.ProcessList{}},
	{pattern: "POST /v1/sandboxes/{id}/processes/{pid}/stdin", summary: "Stream the body to a process's stdin", raw: "request", query: []string{"eof"}, status: 204},
	{pattern: "POST /v1/sandboxes/{id}/processes/{pid}/signal", summary: "Signal a process", req: api.SignalRequest{}, status: 204},
	{pattern: "GET /v1/sandboxes/{id}/files", summary: "Download a file", raw: "response", query: []string{"path"}},
	{pattern: "PUT /v1/sandboxes/{id}/files", summary: "Upload a file (streamed; parents created)", raw: "request", resp: api.FileInfo{}, query: []string{"path", "mode"}},
	{pattern: "DELETE /v1/sandboxes/{id}/files", summary: "Remove a file or directory", query: []string{"path", "recursive"}, status: 204},
	{pattern: "GET /v1/sandboxes/{id}/files/list", summary: "List a directory", resp: api.FileList{}, query: []string{"path", "depth"}},
	{pattern: "GET /v1/sandboxes/{id}/files/stat", summary: "Describe a file", resp: api.FileInfo{}, query: []string{"path"}},
	{pattern: "POST /v1/sandboxes/{id}/files/mkdir", summary: "Create a directory and its parents", resp: api.FileInfo{}, query: []string{"path"}},
	{pattern: "POST /v1/sessions", summary: "Create a stateful Python session", req: api.CreateSessionRequest{}, resp: api.SandboxInfo{}, status: 201},
	{pattern: "GET /v1/sessions/{id}", summary: "Describe a session", resp: api.SandboxInfo{}},
	{pattern: "DELETE /v1/sessions/{id}", summary: "End a session", resp: api.SandboxInfo{}},
	{pattern: "POST /v1/sessions/{id}/run", summary: "Run a cell", req: api.RunRequest{}, resp: api.RunResult{}},
	{pattern: "POST /v1/sessions/{id}/install", summary: "pip-install packages into the session", req: api.InstallRequest{}, resp: api.InstallResult{}},
	{pattern: "POST /v1/sessions/{id}/interrupt", summary: "Interrupt the running cell", resp: api.InterruptResult{}},
	{pattern: "POST /repl/execute", summary: "Seed-compatible: run code in the named session, created on first use", req: api.SeedREPLRequest{}, resp: api.RunResult{}},
	{pattern: "POST /repl/install", summary: "Seed-compatible: install a package into the named session", resp: api.InstallResult{}, query: []string{"session_id", "package"}},
}

// openAPI builds the OpenAPI 3.1 document of the API from routeDocs and the api types.
func openAPI() ([]byte, error) {
	schemas := map[string]any{}
	paths := map[string]map[string]any{}
	for _, d := range routeDocs {
		method, path, _ := strings.Cut(d.pattern, " ")
		op := map[string]any{"summary": d.summary, "operationId": opID(method, path)}
		var params []any
		for _, seg := range strings.Split(path, "/") {
			if strings.HasPrefix(seg, "{") {
				params = append(params, map[string]any{"name": strings.Trim(seg, "{}"), "in": "path", "required": true, "schema": map[string]any{"type": "string"}})
			}
		}
		for _, q := range d.query {
			params = append(params, map[string]any{"name": q, "in": "query", "schema": map[string]any{"type": "string"}})
		}
		if params != nil {
			op["parameters"] = params
		}
		if d.req != nil {
			op["requestBody"] = map[string]any{"required": true, "content": map[string]any{"application/json": map[string]any{"schema": schemaRef(reflect.TypeOf(d.req), schemas)}}}
		} else if d.raw == "request" {
			op["requestBody"] = map[string]any{"content": map[string]any{"application/octet-stream": map[string]any{}}}
		}
		status := d.status
		if status == 0 {
			status = http.StatusOK
		}
		ok := map[string]any{"description": http.StatusText(status)}
		content := map[string]any{}
		if d.resp != nil {
			content["application/json"] = map[string]any{"schema": schemaRef(reflect.TypeOf(d.resp), schemas)}
		}
		if d.raw == "response" {
			content["application/octet-stream"] = map[string]any{}
		}
		if d.ndjson {
			content["application/x-ndjson"] = map[string]any{"schema": schemaRef(reflect.TypeOf(api.ExecEvent{}), schemas)}
		}
		if len(content) > 0 {
			ok["content"] = content
		}
		responses := map[string]any{strconv.Itoa(status): ok}
		if d.upgrades {
			responses = map[string]any{"101": map[string]any{"description": "Switching Protocols (WebSocket)"}}
		}
		responses["default"] = map[string]any{"description": "Error", "content": map[string]any{"application/json": map[string]any{"schema": schemaRef(reflect.TypeOf(api.ErrorBody{}), schemas)}}}
		op["responses"] = responses
		if d.noAuth {
			op["security"] = []any{}
		}
		if paths[path] == nil {
			paths[path] = map[string]any{}
		}
		paths[path][strings.ToLower(method)] = op
	}
	doc := map[string]any{
		"openapi": "3.1.0",
		"info":    map[string]any{"title": "Airlock", "version": "1", "description": "Run untrusted code safely and fast. Errors are {\"error\":{\"code\",\"message\"}}."},
		"paths":   paths,
		"components": map[string]any{
			"schemas":         schemas,
			"securitySchemes": map[string]any{"bearer": map[string]any{"type": "http", "scheme": "bearer"}},
		},
		"security": []any{map[string]any{"bearer": []any{}}},
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	return append(b, '\n'), err
}

func opID(method, path string) string {
	var b strings.Builder
	b.WriteString(strings.ToLower(method))
	for _, seg := range strings.FieldsFunc(path, func(r rune) bool { return r == '/' || r == '{' || r == '}' || r == '.' || r == '_' }) {
		b.WriteString(strings.ToUpper(seg[:1]) + seg[1:])
	}
	return b.String()
}

// schemaRef returns a JSON Schema for t, registering named structs under components.schemas.
func schemaRef(t reflect.Type, schemas map[string]any) map[string]any {
	if t == reflect.TypeOf(time.Time{}) {
		return map[string]any{"type": "string", "format": "date-time"}
	}
	switch t.Kind() {
	case reflect.Pointer:
		return schemaRef(t.Elem(), schemas)
	case reflect.String:
		return map[string]any{"type": "string"}
	case reflect.Bool:
		return map[string]any{"type": "boolean"}
	case reflect.Int, reflect.Int32, reflect.Int64, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return map[string]any{"type": "integer"}
	case reflect.Float32, reflect.Float64:
		return map[string]any{"type": "number"}
	case reflect.Slice:
		return map[string]any{"type": "array", "items": schemaRef(t.Elem(), schemas)}
	case reflect.Map:
		return map[string]any{"type": "object", "additionalProperties": schemaRef(t.Elem(), schemas)}
	case reflect.Struct:
		name := t.Name()
		if _, done := schemas[name]; !done {
			schemas[name] = nil // placeholder against recursion
			props := map[string]any{}
			structProps(t, schemas, props)
			schemas[name] = map[string]any{"type": "object", "properties": props, "additionalProperties": false}
		}
		return map[string]any{"$ref": "#/components/schemas/" + name}
	}
	return map[string]any{}
}

// structProps adds t's JSON fields to props, flattening untagged embedded structs as
// encoding/json does.
func structProps(t reflect.Type, schemas, props map[string]any) {
	for i := range t.NumField() {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if tag == "-" {
			continue
		}
		ft := f.Type
		if ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if f.Anonymous && tag == "" && ft.Kind() == reflect.Struct {
			structProps(ft, schemas, props)
			continue
		}
		if !f.IsExported() {
			continue
		}
		if tag == "" {
			tag = f.Name
		}
		props[tag] = schemaRef(f.Type, schemas)
	}
}

func (s *Server) handleOpenAPI(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Content-Type", "application/json")
	w.Write(api.OpenAPI)
	return nil
}
