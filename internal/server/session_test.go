package server

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/airlockhq/airlock/api"
)

// TestWriteRunResult: the streamed answer decodes to the same value as the one-piece encoding,
// for data longer than a piece, with multi-byte runes across piece boundaries and characters that
// JSON escapes.
func TestWriteRunResult(t *testing.T) {
	t.Parallel()
	res42 := "42"
	tests := []struct {
		name string
		res  api.RunResult
	}{
		{"no display", api.RunResult{Success: true, Stdout: "hi\n", Result: &res42, Display: []api.Display{}}},
		{"display", api.RunResult{Stdout: "<b>\x01</b>", Display: []api.Display{
			{MIME: "text/html", Data: strings.Repeat("é\"\\<>&\u2028", 20000)},
			{MIME: "image/png", Data: strings.Repeat("QUJD", 50000)},
			{MIME: "text/plain", Data: ""},
		}, Error: &api.CellError{Name: "E", Value: "v", Traceback: []string{"a"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			writeRunResult(rec, &tt.res)
			var got api.RunResult
			dec := json.NewDecoder(bytes.NewReader(rec.Body.Bytes()))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&got); err != nil {
				t.Fatalf("decode: %v (%.200q)", err, rec.Body.Bytes())
			}
			if !reflect.DeepEqual(got, tt.res) {
				t.Errorf("decoded %+v, want %+v", got, tt.res)
			}
			if ct := rec.Header().Get("Content-Type"); rec.Code != 200 || ct != "application/json" {
				t.Errorf("status %d, content type %q", rec.Code, ct)
			}
		})
	}
}
