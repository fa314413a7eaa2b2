package server

import (
	"math"
	"testing"
	"time"
)

func TestSeconds(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		v    float64
		want time.Duration
	}{
		{"zero is the default", 0, 0},
		{"fraction", 1.5, 1500 * time.Millisecond},
		{"below a nanosecond stays nonzero", 1e-12, 1},
		{"negative below a nanosecond stays negative", -1e-12, -1},
		{"too large saturates", 1e300, math.MaxInt64},
		{"too negative saturates", -1e300, math.MinInt64},
		{"NaN is outside every bound", math.NaN(), math.MinInt64},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Seconds(tt.v); got != tt.want {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestMebibytes(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ v, want int64 }{{512, 512 << 20}, {math.MaxInt64 >> 10, math.MaxInt64}, {-(math.MaxInt64 >> 10), math.MinInt64}} {
		if got := mebibytes(c.v); got != c.want {
			t.Errorf("mebibytes(%d): got %d, want %d", c.v, got, c.want)
		}
	}
}
