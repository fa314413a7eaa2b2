package cli

import (
	"maps"
	"testing"
)

func TestSecretValues(t *testing.T) {
	t.Parallel()
	env := map[string]string{"FROM_ENV": "e=1"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	cases := []struct {
		name string
		args []string
		want map[string]string
		ok   bool
	}{
		{"values", []string{"A=1", "B==2", "C="}, map[string]string{"A": "1", "B": "=2", "C": ""}, true},
		{"from the environment", []string{"FROM_ENV"}, map[string]string{"FROM_ENV": "e=1"}, true},
		{"unset", []string{"NOPE"}, nil, false},
		{"twice", []string{"A=1", "A=2"}, nil, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := secretValues(c.args, lookup)
			if (err == nil) != c.ok || c.ok && !maps.Equal(got, c.want) {
				t.Fatalf("got %v, %v; want %v (ok %v)", got, err, c.want, c.ok)
			}
		})
	}
}
