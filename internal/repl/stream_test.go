package repl

import (
	"fmt"
	"io"
	"strings"
	"testing"
	"time"
)

func marker(tok string) string { return markerPrefix + tok + markerSuffix }

// tokens of 32 hex digits.
var (
	tok1 = strings.Repeat("1", tokenLen)
	tok2 = strings.Repeat("2", tokenLen)
	fake = strings.Repeat("f", tokenLen)
)

// stage is output written to the stream, then one collect call and what it must return.
type stage struct {
	input     string
	token     string
	out       string
	truncated bool
}

func TestStream(t *testing.T) {
	t.Parallel()
	flood := strings.Repeat(marker(fake), maxMarks+10)
	garbage := markerPrefix + "zz" + markerPrefix + strings.Repeat("g", tokenLen) + markerSuffix + "\x1e"
	tests := []struct {
		name   string
		limit  int64
		stages []stage
	}{
		{"two cells", 1 << 20, []stage{
			{"hello" + marker(tok1), tok1, "hello", false},
			{"next" + marker(tok2), tok2, "next", false}}},
		{"empty cells", 1 << 20, []stage{
			{marker(tok1), tok1, "", false},
			{marker(tok2), tok2, "", false}}},
		{"fake marker stays in the output", 1 << 20, []stage{
			{"a" + marker(fake) + "b" + marker(tok1), tok1, "a" + marker(fake) + "b", false}}},
		{"marker-like garbage", 1 << 20, []stage{
			{garbage + marker(tok1), tok1, garbage, false}}},
		{"marker with a wrong suffix", 1 << 20, []stage{
			{markerPrefix + tok2 + "xx" + marker(tok1), tok1, markerPrefix + tok2 + "xx", false}}},
		{"output after the marker goes to the next cell", 1 << 20, []stage{
			{"a" + marker(tok1) + "stray ", tok1, "a", false},
			{"b" + marker(tok2), tok2, "stray b", false}}},
		{"the token's first marker counts", 1 << 20, []stage{
			{"a" + marker(tok1) + "b" + marker(tok1), tok1, "a", false},
			{"", tok1, "b", false}}},
		{"over the limit", 10, []stage{
			{strings.Repeat("x", 100) + marker(tok1), tok1, strings.Repeat("x", 10), true},
			{"c" + marker(tok2), tok2, "c", false}}},
		{"over the limit, then output after the marker", 10, []stage{
			{strings.Repeat("x", 100) + marker(fake) + "y" + marker(tok1) + "stray ", tok1, strings.Repeat("x", 10), true},
			{"c" + marker(tok2), tok2, "stray c", false}}},
		{"the next cell over the limit too", 4, []stage{
			{"abcdef" + marker(tok1) + "ghijkl", tok1, "abcd", true},
			{"mn" + marker(tok2), tok2, "ghij", true}}},
		{"exactly the limit", 4, []stage{
			{"abcd" + marker(tok1), tok1, "abcd", false},
			{"efgh" + marker(tok2), tok2, "efgh", false}}},
		{"a flood of fake markers", 1 << 30, []stage{
			{flood + marker(tok1), tok1, flood, false},
			{"next" + marker(tok2), tok2, "next", false}}},
		{"binary", 1 << 20, []stage{
			{"\x00\xff\x1e\x1f\x1e" + marker(tok1), tok1, "\x00\xff\x1e\x1f\x1e", false}}},
		{"no marker before EOF", 1 << 20, []stage{
			{"partial" + markerPrefix + "12", tok1, "partial" + markerPrefix + "12", false}}},
	}
	for _, tt := range tests {
		for _, chunk := range []int{1, 2, 5, markerLen - 1, markerLen, markerLen + 1, 4096, readSize} {
			t.Run(fmt.Sprintf("%s/chunk=%d", tt.name, chunk), func(t *testing.T) {
				t.Parallel()
				s := newStream(tt.limit)
				pr, pw := io.Pipe()
				done := make(chan struct{})
				go func() {
					defer close(done)
					s.pump(pr)
				}()
				for i, st := range tt.stages {
					for in := []byte(st.input); len(in) > 0; {
						k := min(chunk, len(in))
						pw.Write(in[:k])
						in = in[k:]
					}
					if i == len(tt.stages)-1 {
						pw.Close()
					}
					out, truncated := s.collect(st.token, time.Now().Add(10*time.Second))
					if string(out) != st.out || truncated != st.truncated {
						t.Errorf("stage %d: %q (truncated %v), want %q (%v)", i, abbrev(out), truncated, abbrev([]byte(st.out)), st.truncated)
					}
				}
				<-done
			})
		}
	}
}

// TestStreamWaits checks that collect waits for a marker that has not arrived yet, and gives up
// at its deadline.
func TestStreamWaits(t *testing.T) {
	t.Parallel()
	s := newStream(1 << 20)
	pr, pw := io.Pipe()
	go s.pump(pr)
	go func() {
		pw.Write([]byte("early"))
		time.Sleep(100 * time.Millisecond)
		pw.Write([]byte("late" + marker(tok1) + "rest"))
	}()
	if out, _ := s.collect(tok1, time.Now().Add(10*time.Second)); string(out) != "earlylate" {
		t.Errorf("collect = %q, want %q", out, "earlylate")
	}
	t0 := time.Now()
	if out, _ := s.collect(tok2, time.Now().Add(50*time.Millisecond)); string(out) != "rest" {
		t.Errorf("collect at the deadline = %q, want %q", out, "rest")
	}
	if d := time.Since(t0); d < 50*time.Millisecond || d > 5*time.Second {
		t.Errorf("collect gave up after %v, want about 50ms", d)
	}
	pw.Close()
}

func abbrev(b []byte) string {
	if len(b) > 80 {
		return fmt.Sprintf("%s…(%d bytes)", b[:80], len(b))
	}
	return string(b)
}

func TestStripMarkers(t *testing.T) {
	t.Parallel()
	m := markerPrefix + strings.Repeat("0f", tokenLen/2) + markerSuffix
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"plain", "plain"},
		{"a" + m + "b", "ab"},
		{m + m, ""},
		{"x" + markerPrefix + "nothex" + markerSuffix, "x" + markerPrefix + "nothex" + markerSuffix},
		{"cut" + m[:10], "cut" + m[:10]},
	} {
		if got := string(stripMarkers([]byte(tc.in))); got != tc.want {
			t.Errorf("stripMarkers(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
