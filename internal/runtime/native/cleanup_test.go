package native

import (
	"slices"
	"testing"
)

func TestCleanup(t *testing.T) {
	tests := []struct {
		name    string
		push    int
		release bool
		want    []int
	}{
		{"nothing", 0, false, nil},
		{"reverse order", 3, false, []int{2, 1, 0}},
		{"released", 3, true, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []int
			var c cleanup
			for i := range tt.push {
				c.add(func() { got = append(got, i) })
			}
			if tt.release {
				c.release()
			}
			c.run()
			c.run() // a second run undoes nothing again
			if !slices.Equal(got, tt.want) {
				t.Errorf("got undos %v, want %v", got, tt.want)
			}
		})
	}
}
