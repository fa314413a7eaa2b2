package cli

import "testing"

func TestParsePortPair(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		in          string
		port, local int
		ok          bool
	}{
		{"8080", 8080, 8080, true},
		{"8080:9000", 8080, 9000, true},
		{"8080:0", 8080, 0, true},
		{"0", 0, 0, false},
		{"70000", 0, 0, false},
		{"8080:", 0, 0, false},
		{"8080:-1", 0, 0, false},
		{"http", 0, 0, false},
		{":8080", 0, 0, false},
	} {
		t.Run(tt.in, func(t *testing.T) {
			port, local, err := parsePortPair(tt.in)
			if (err == nil) != tt.ok || port != tt.port || local != tt.local {
				t.Errorf("got %d, %d, %v; want %d, %d, ok %v", port, local, err, tt.port, tt.local, tt.ok)
			}
		})
	}
}
