package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"

	"github.com/airlockhq/airlock/examples/internal/exampletest"
)

func TestRun(t *testing.T) {
	c := exampletest.Client(t)
	if os.Getenv("OPENAI_API_KEY") == "" {
		// No LLM here: an OpenAI-compatible endpoint on 127.0.0.1 that first writes broken code,
		// then, shown the error, a fix — so the write/run/read-error/retry loop runs for real.
		calls := 0
		llm := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			calls++
			code := "print(fib(20)"
			if calls > 1 {
				code = "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\nprint(fib(20))"
			}
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(map[string]any{"choices": []any{map[string]any{"index": 0,
				"message": map[string]string{"role": "assistant", "content": "```python\n" + code + "\n```"}}}})
		}))
		defer llm.Close()
		t.Setenv("OPENAI_BASE_URL", llm.URL)
		t.Setenv("OPENAI_API_KEY", "test")
		t.Setenv("OPENAI_MODEL", "fake")
	}
	var out bytes.Buffer
	if err := run(t.Context(), c, &out); err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(out.Bytes(), []byte("exit 0")) || (os.Getenv("OPENAI_MODEL") == "fake" && !bytes.Contains(out.Bytes(), []byte("6765"))) {
		t.Errorf("output:\n%s", out.String())
	}
}

func TestExtractCode(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"print(1)", "print(1)\n"},
		{"Here:\n```python\nprint(1)\n```\nDone.", "print(1)\n"},
		{"```\nprint(2)\n```", "print(2)\n"},
		{"```py\nprint(3)\n```", "print(3)\n"},
		{"two:\n```python\na = 1\n```\nand\n```python\nb = 2\n```", "a = 1\n"},
	}
	for _, tt := range tests {
		if got := extractCode(tt.in); got != tt.want {
			t.Errorf("extractCode(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
