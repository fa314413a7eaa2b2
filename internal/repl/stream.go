package repl

import (
	"bytes"
	"io"
	"sync"
	"time"
)

// End-of-cell markers: markerPrefix, tokenLen lowercase hex digits, markerSuffix.
const (
	markerPrefix = "\x1e\x1fairlock-end:"
	markerSuffix = "\x1f\x1e"
	tokenLen     = 32
	markerLen    = len(markerPrefix) + tokenLen + len(markerSuffix)

	// maxMarks bounds the markers remembered per stream; a flood of fake markers drops the oldest.
	maxMarks = 1024
	readSize = 64 << 10
)

var prefixBytes = []byte(markerPrefix)

// mark is a marker-shaped sequence seen in a stream, at stream offsets [off, end).
type mark struct {
	token    string
	off, end int64
}

// stream collects one output pipe of the interpreter. pump feeds it; the goroutine running a cell
// cuts the cell's output off it with collect. Offsets count every byte the pipe delivered.
type stream struct {
	limit int64 // bytes kept per cell; later bytes are counted and dropped

	mu      sync.Mutex    // guards the fields below
	base    int64         // offset of data[0]: where the current cell's output starts
	n       int64         // offset of the next byte to arrive
	data    []byte        // bytes [base, base+len(data)); grows only while contiguous with n
	tail    []byte        // bytes [tailOff, tailOff+len(tail)), ≤ limit, grows only while contiguous
	tailOff int64         // end of the newest marker since the last cut, or -1
	marks   []mark        // markers at offsets ≥ base, oldest first
	eof     bool          // the pump has stopped
	notify  chan struct{} // closed and replaced when a marker arrives or eof is set
}

// The tail exists for a cell whose output passed the limit: data has stopped growing, but what
// follows the real marker (output of threads that outlive the cell) belongs to the next cell.
// Since any marker may turn out to be the real one, the tail restarts at each marker.

func newStream(limit int64) *stream {
	return &stream{limit: limit, tailOff: -1, notify: make(chan struct{})}
}

// pump reads r until it fails (EOF, or the file was closed by shutdown). It owns the scan window:
// the tail of the previous read that could begin a marker, kept at the front of buf.
func (s *stream) pump(r io.Reader) {
	buf := make([]byte, markerLen+readSize)
	w := 0
	for {
		n, err := r.Read(buf[w:])
		if n > 0 {
			keep := s.feed(buf[:w+n], w)
			w = copy(buf, buf[keep:w+n])
		}
		if err != nil {
			s.mu.Lock()
			s.eof = true
			close(s.notify)
			s.notify = make(chan struct{})
			s.mu.Unlock()
			return
		}
	}
}

// feed appends the new bytes all[w:] (all[:w] is the scan window, already stored) and records the
// markers in all. It returns the index in all where the next scan window starts.
func (s *stream) feed(all []byte, w int) int {
	fresh := all[w:]
	s.mu.Lock()
	defer s.mu.Unlock()
	before := s.n              // offset of fresh[0]
	start := before - int64(w) // offset of all[0]
	s.n += int64(len(fresh))

	newest := int64(-1) // end of the newest marker found in all (it always lies in fresh)
	i, keep := 0, -1
	for {
		j := bytes.Index(all[i:], prefixBytes)
		if j < 0 {
			break
		}
		j += i
		if len(all)-j < markerLen {
			keep = j // maybe a marker cut by the read boundary: rescan it next time
			break
		}
		tok, ok := parseMarker(all[j : j+markerLen])
		if !ok {
			i = j + 1
			continue
		}
		if off := start + int64(j); off >= s.base {
			if len(s.marks) == maxMarks {
				// Forget the older half: the real marker is among the newest, since only
				// stray output can follow it.
				s.marks = s.marks[:copy(s.marks, s.marks[maxMarks/2:])]
			}
			s.marks = append(s.marks, mark{token: tok, off: off, end: off + int64(markerLen)})
			newest = off + int64(markerLen)
		}
		i = j + markerLen
	}
	if keep < 0 {
		keep = max(i, len(all)-(len(markerPrefix)-1))
	}

	s.data = s.appendContiguous(s.data, s.base, before, fresh)
	if newest >= 0 {
		s.tail, s.tailOff = s.appendContiguous(s.tail[:0], newest, newest, fresh[newest-before:]), newest
		close(s.notify)
		s.notify = make(chan struct{})
	} else if s.tailOff >= 0 {
		s.tail = s.appendContiguous(s.tail, s.tailOff, before, fresh)
	}
	return keep
}

// appendContiguous appends p, which starts at offset at, to buf, which starts at offset from, if
// buf ends where p starts, up to the limit.
func (s *stream) appendContiguous(buf []byte, from, at int64, p []byte) []byte {
	if from+int64(len(buf)) != at {
		return buf
	}
	room := s.limit - int64(len(buf))
	return append(buf, p[:max(0, min(room, int64(len(p))))]...)
}

// parseMarker returns the token of a markerLen-byte sequence that starts with markerPrefix.
func parseMarker(b []byte) (string, bool) {
	tok := b[len(markerPrefix) : len(markerPrefix)+tokenLen]
	if string(b[len(markerPrefix)+tokenLen:]) != markerSuffix {
		return "", false
	}
	for _, c := range tok {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return "", false
		}
	}
	return string(tok), true
}

// collect ends the current cell's output and returns it. With a token, it waits until that
// token's marker has arrived and cuts there; bytes after the marker start the next cell. It cuts
// at whatever has arrived when the pump stops or at deadline (an empty token waits only for
// those). truncated reports that bytes past the limit were dropped.
func (s *stream) collect(token string, deadline time.Time) (out []byte, truncated bool) {
	var timer *time.Timer
	for {
		s.mu.Lock()
		if token != "" {
			for _, m := range s.marks {
				if m.token == token {
					out, truncated = s.cutLocked(m.off, m.end)
					s.mu.Unlock()
					return out, truncated
				}
			}
		}
		if s.eof || !time.Now().Before(deadline) {
			out, truncated = s.cutLocked(s.n, s.n)
			s.mu.Unlock()
			return out, truncated
		}
		ch := s.notify
		s.mu.Unlock()
		if timer == nil {
			timer = time.NewTimer(time.Until(deadline))
			defer timer.Stop()
		}
		select {
		case <-ch:
		case <-timer.C:
		}
	}
}

// cutLocked returns the output [base, off) and starts the next cell at end.
func (s *stream) cutLocked(off, end int64) ([]byte, bool) {
	stored := s.base + int64(len(s.data))
	keep := min(off, stored) - s.base
	out := s.data[:keep:keep]
	truncated := off > stored
	switch {
	case stored == s.n:
		// Nothing was dropped: what follows the marker starts the next cell's output.
		s.data = bytes.Clone(s.data[end-s.base:])
		s.base = end
	case s.tailOff == end:
		// The tail stops growing only at the limit, so it is exact up to there; if it is full,
		// the next cell is already truncated.
		s.data = s.tail
		s.base = end
	default:
		// What followed the marker was dropped too; start the next cell at n so that data
		// stays contiguous.
		s.data = nil
		s.base = s.n
	}
	s.tail, s.tailOff = nil, -1
	kept := s.marks[:0]
	for _, m := range s.marks {
		if m.off >= s.base {
			kept = append(kept, m)
		}
	}
	s.marks = kept
	return out, truncated
}
