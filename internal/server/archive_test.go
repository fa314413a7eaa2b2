package server

import "testing"

func TestArchiveName(t *testing.T) {
	tests := []struct {
		in, want string
		ok       bool
	}{
		{"a/b.txt", "a/b.txt", true},
		{"./a//b/", "a/b", true},
		{"./", "", true},
		{".", "", true},
		{"/etc/passwd", "", false},
		{"../x", "", false},
		{"a/../../x", "", false},
		{"a/..", "", false},
		{"", "", false},
		{"a\x00b", "", false},
		{"a..b", "a..b", true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := archiveName(tt.in)
			if got != tt.want || (err == nil) != tt.ok {
				t.Errorf("got %q, %v; want %q, ok %v", got, err, tt.want, tt.ok)
			}
		})
	}
}
