package native

import "testing"

func TestUIDRangeRefusesHostUsers(t *testing.T) {
	t.Parallel()
	// /etc/passwd of any Debian host has nobody (65534); a range over it must be refused.
	if err := checkUIDRange(1000, 4096); err == nil {
		t.Fatal("a uid range covering host users was accepted")
	}
	if err := checkUIDRange(2000000, 4096); err != nil {
		t.Fatalf("the default range: %v", err)
	}
}
