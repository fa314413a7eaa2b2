package mcp

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

func TestStreamBound(t *testing.T) {
	for _, tt := range []struct {
		name    string
		in      string
		wantCut bool
	}{
		{"short", "hello", false},
		{"at the bound", strings.Repeat("a", maxText), false},
		{"past the bound", strings.Repeat("a", maxText+10), true},
		{"multibyte at the cut", strings.Repeat("é", maxText), true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var r report
			r.stream("stdout", tt.in)
			got := r.result(false).Content[0].(*mcp.TextContent).Text
			if cut := strings.Contains(got, "[truncated:"); cut != tt.wantCut {
				t.Fatalf("truncated note %v, want %v", cut, tt.wantCut)
			}
			if len(got) > maxText+200 {
				t.Fatalf("%d bytes came back, past the bound", len(got))
			}
			if strings.ToValidUTF8(got, "\uFFFD") != got {
				t.Fatalf("the cut split a character")
			}
		})
	}
}

func TestImageType(t *testing.T) {
	for in, want := range map[string]string{"\x89PNG\r\n\x1a\nxxxx": "image/png", "\xff\xd8\xffxx": "image/jpeg", "GIF89axx": "image/gif", "text": ""} {
		if got := imageType([]byte(in)); got != want {
			t.Errorf("imageType(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestHandlerRefusesWrongKey: a key the daemon refuses gets 401 before any MCP message is read.
func TestHandlerRefusesWrongKey(t *testing.T) {
	daemon := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer good-key-0123456789" {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			w.Write([]byte(`{"error":{"code":"unauthenticated","message":"no"}}`))
			return
		}
		w.Write([]byte(`{}`))
	}))
	defer daemon.Close()
	h := httptest.NewServer(Handler(HandlerConfig{Base: daemon.URL}))
	defer h.Close()
	for key, want := range map[string]int{"bad": http.StatusUnauthorized, "": http.StatusUnauthorized, "good-key-0123456789": http.StatusOK} {
		req, _ := http.NewRequest(http.MethodPost, h.URL, strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}`))
		req.Header.Set("Authorization", "Bearer "+key)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("key %q: status %d, want %d", key, resp.StatusCode, want)
		}
	}
}
