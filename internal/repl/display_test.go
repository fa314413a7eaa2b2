//go:build linux

package repl

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestDisplayRules(t *testing.T) {
	t.Parallel()
	ip := start(t, Config{})
	type disp struct{ mime, data string }
	tests := []struct {
		name    string
		code    string
		want    []disp // nil: check only the count
		count   int
		dropped bool
		stderr  string // substring of stderr
	}{
		{
			name: "base64 on a text type is refused",
			code: `import sys, base64
sys._getframe(1).f_globals["_S"].display.append({"mime": "text/html", "data": base64.b64encode(b"\x01" * 1000).decode(), "b64": True})`,
			want: nil, count: 0, dropped: true, stderr: "text type",
		},
		{
			name:  "control characters in text are refused",
			code:  `display({"text/html": "<b>" + "\x01" * 100 + "</b>", "text/plain": "tab\tand\nnewline"}, raw=True)`,
			want:  []disp{{"text/plain", "tab\tand\nnewline"}},
			count: 1, dropped: true, stderr: "control characters",
		},
		{
			name:  "base64 on a binary type is decoded",
			code:  `display({"image/png": b"\x01\x02PNG"}, raw=True)`,
			want:  []disp{{"image/png", "\x01\x02PNG"}},
			count: 1,
		},
		{
			name:  "three million empty items",
			code:  `import sys; sys._getframe(1).f_globals["_S"].display.extend([{}] * 3_000_000)`,
			count: 0, dropped: true, stderr: "dropped",
		},
		{
			name:  "more display calls than the per-cell count",
			code:  `for i in range(300): display({"text/plain": str(i)}, raw=True)`,
			count: maxDisplayItems, dropped: true, stderr: "256",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := run(t, ip, tt.code)
			if res.Error != nil {
				t.Fatalf("error %+v", res.Error)
			}
			if len(res.Display) != tt.count {
				t.Errorf("%d display items, want %d", len(res.Display), tt.count)
			}
			if tt.want != nil {
				var got []disp
				for _, d := range res.Display {
					got = append(got, disp{d.MIME, string(d.Data)})
				}
				if len(got) != len(tt.want) || (len(got) > 0 && got[0] != tt.want[0]) {
					t.Errorf("display = %q, want %q", got, tt.want)
				}
			}
			if got := res.DisplayDropped > 0; got != tt.dropped {
				t.Errorf("DisplayDropped = %d, want dropped %v", res.DisplayDropped, tt.dropped)
			}
			if !strings.Contains(string(res.Stderr), tt.stderr) {
				t.Errorf("stderr = %.300q, want it to mention %q", res.Stderr, tt.stderr)
			}
		})
	}
}

// TestFrameDisplayBounds checks the Go side's own bounds on a reply frame, which cell code can
// forge: whatever the driver would have done, the count, the bytes and the text rules hold.
func TestFrameDisplayBounds(t *testing.T) {
	t.Parallel()
	many := `{"op":"done","display":[` + strings.Repeat(`{"mime":"text/plain","data":"x"},`, 3000) + `{}]}`
	var f frame
	if err := json.Unmarshal([]byte(many), &f); err != nil {
		t.Fatal(err)
	}
	got, dropped, _ := checkDisplays(f.Display.items, f.Display.dropped, 1<<20)
	if len(got) != maxDisplayItems || dropped != 3001-maxDisplayItems {
		t.Errorf("%d items kept, %d dropped; want %d kept, %d dropped", len(got), dropped, maxDisplayItems, 3001-maxDisplayItems)
	}
	tests := []struct {
		name string
		in   wireDisplay
		keep bool
	}{
		{"text", wireDisplay{MIME: "text/html", Data: "<p>é</p>"}, true},
		{"json", wireDisplay{MIME: "application/json", Data: `{"a":1}`}, true},
		{"text as base64", wireDisplay{MIME: "text/html", Data: "AQEB", B64: true}, false},
		{"text with a control byte", wireDisplay{MIME: "text/markdown", Data: "a\x1bb"}, false},
		{"text with DEL", wireDisplay{MIME: "text/plain", Data: "a\x7fb"}, false},
		{"binary as base64", wireDisplay{MIME: "image/png", Data: "AQEB", B64: true}, true},
		{"binary with bad base64", wireDisplay{MIME: "image/png", Data: "!!", B64: true}, false},
		{"svg is binary on the wire", wireDisplay{MIME: "image/svg+xml", Data: "<svg/>"}, true},
		{"no mime", wireDisplay{Data: "x"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, dropped, _ := checkDisplays([]wireDisplay{tt.in}, 0, 1<<20)
			if (len(got) == 1) != tt.keep || (dropped == 1) == tt.keep {
				t.Errorf("kept %d, dropped %d; want kept %v", len(got), dropped, tt.keep)
			}
		})
	}
	big := []wireDisplay{{MIME: "text/plain", Data: strings.Repeat("a", 600)}, {MIME: "text/plain", Data: strings.Repeat("b", 600)}}
	if got, dropped, _ := checkDisplays(big, 0, 1000); len(got) != 1 || dropped != 1 {
		t.Errorf("byte limit: kept %d, dropped %d; want 1 and 1", len(got), dropped)
	}
}
