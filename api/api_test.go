package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"testing"
)

// TestExitCodeSpelling is the wire-name finding of the review, as a client sees it: a one-shot
// answer must carry the exit status as exit_code (the v1 spelling exec and install use) and,
// for seed and early-v1 clients, as the deprecated returncode alias, with the same value; a
// batch result likewise, and a failed snippet still only its error.
func TestExitCodeSpelling(t *testing.T) {
	tests := []struct {
		name string
		v    any
		want map[string]any // keys that must be present with these values
		none []string       // keys that must be absent
	}{
		{"execute", ExecuteResponse{ReturnCode: 3, Stderr: "x"}, map[string]any{"exit_code": 3.0, "returncode": 3.0, "stderr": "x"}, nil},
		{"execute exit 0", ExecuteResponse{Success: true}, map[string]any{"exit_code": 0.0, "returncode": 0.0, "success": true}, nil},
		{"batch result", BatchResult{ExecuteResponse: &ExecuteResponse{ReturnCode: 137, OOMKilled: true}}, map[string]any{"exit_code": 137.0, "returncode": 137.0, "oom_killed": true}, []string{"error"}},
		{"batch error", BatchResult{Error: &ErrorDetail{Code: CodeTimeout, Message: "m"}}, map[string]any{"error": map[string]any{"code": CodeTimeout, "message": "m"}}, []string{"exit_code", "returncode", "stdout"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := json.Marshal(tt.v)
			if err != nil {
				t.Fatal(err)
			}
			var got map[string]any
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatal(err)
			}
			for k, want := range tt.want {
				if !reflect.DeepEqual(got[k], want) {
					t.Errorf("%s: got %v, want %v (in %s)", k, got[k], want, b)
				}
			}
			for _, k := range tt.none {
				if _, ok := got[k]; ok {
					t.Errorf("%s: present, want absent (in %s)", k, b)
				}
			}
		})
	}
}

// TestExitCodeDecode checks the Go types read both the canonical name and, from a daemon older
// than it, the alias alone, and that a batch error decodes without a result.
func TestExitCodeDecode(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want int
	}{
		{"canonical", `{"exit_code":3}`, 3},
		{"both", `{"exit_code":3,"returncode":3}`, 3},
		{"old daemon", `{"returncode":4}`, 4},
		{"canonical wins", `{"returncode":9,"exit_code":5}`, 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r ExecuteResponse
			if err := json.Unmarshal([]byte(tt.in), &r); err != nil {
				t.Fatal(err)
			}
			if got := r.ReturnCode; got != tt.want {
				t.Errorf("ReturnCode: got %d, want %d", got, tt.want)
			}
			var br BatchResult
			if err := json.Unmarshal([]byte(tt.in), &br); err != nil {
				t.Fatal(err)
			}
			if br.ExecuteResponse == nil || br.ReturnCode != tt.want || br.Error != nil {
				t.Errorf("BatchResult: got %+v, want ReturnCode %d and no error", br, tt.want)
			}
		})
	}
	var br BatchResult
	if err := json.Unmarshal([]byte(`{"error":{"code":"timeout","message":"m"}}`), &br); err != nil {
		t.Fatal(err)
	}
	if br.ExecuteResponse != nil || br.Error == nil || br.Error.Code != CodeTimeout {
		t.Errorf("batch error: got %+v / %+v, want no result and code timeout", br.ExecuteResponse, br.Error)
	}
}

// TestAliasTags checks every alias tag is really written: a type whose field declares
// alias:"name" marshals that name with the field's value.
func TestAliasTags(t *testing.T) {
	for _, v := range []any{ExecuteResponse{ReturnCode: 7}} {
		rt := reflect.TypeOf(v)
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		var got map[string]json.RawMessage
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatal(err)
		}
		for i := range rt.NumField() {
			f := rt.Field(i)
			alias := f.Tag.Get("alias")
			if alias == "" {
				continue
			}
			want, err := json.Marshal(reflect.ValueOf(v).Field(i).Interface())
			if err != nil {
				t.Fatal(err)
			}
			if string(got[alias]) != string(want) {
				t.Errorf("%s.%s: alias %q is %s, want %s", rt.Name(), f.Name, alias, got[alias], want)
			}
		}
	}
}

// PublicDetail is the one masking rule for every answer: client errors keep their text, server
// faults only what was written for clients.
func TestPublicDetail(t *testing.T) {
	secret := errors.New("open /var/lib/airlock/sandboxes/x/agent.sock: connection refused")
	for _, tc := range []struct {
		name      string
		err       error
		code, msg string
	}{
		{"bad request keeps its text", fmt.Errorf("sandbox sb-1: %w", Errorf(ErrInvalidArgument, "cmd is empty")), CodeInvalidArgument, "sandbox sb-1: cmd is empty"},
		{"internal is masked", fmt.Errorf("exec: %w", secret), CodeInternal, "internal error"},
		{"unavailable keeps only its public message", fmt.Errorf("start python (%v): %w", secret, Errorf(ErrUnavailable, "the interpreter did not start")), CodeUnavailable, "the interpreter did not start"},
		{"bare sentinel under internals", fmt.Errorf("%v: %w", secret, ErrUnavailable), CodeUnavailable, ErrUnavailable.Message},
		{"deadline is a timeout", fmt.Errorf("wait: %w", context.DeadlineExceeded), CodeTimeout, ErrTimeout.Message},
		{"unimplemented keeps its fixed text", Errorf(ErrUnimplemented, "allow_network is not available yet"), CodeUnimplemented, "allow_network is not available yet"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := PublicDetail(tc.err)
			if d.Code != tc.code || d.Message != tc.msg {
				t.Errorf("got %s %q, want %s %q", d.Code, d.Message, tc.code, tc.msg)
			}
		})
	}
}
