package layout

import "testing"

func TestClasses(t *testing.T) {
	t.Parallel()
	tests := []struct {
		p                        string
		writable, system, kernel bool
	}{
		{"/workspace", true, false, false},
		{"/workspace/a/b", true, false, false},
		{"/workspacex", false, false, false},
		{"/tmp/.airlock-main", true, false, false},
		{"/usr/lib", false, true, false},
		{"/opt/airlock/wheels", false, true, false},
		{"/opt/app", false, false, false},
		{"/.scratch/x", false, true, false},
		{"/proc/1", false, true, true},
		{"/dev/shm/x", false, true, false},
		{"/sys", false, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.p, func(t *testing.T) {
			if got := Writable(tt.p); got != tt.writable {
				t.Errorf("Writable = %v, want %v", got, tt.writable)
			}
			if got := System(tt.p); got != tt.system {
				t.Errorf("System = %v, want %v", got, tt.system)
			}
			if got := Kernel(tt.p); got != tt.kernel {
				t.Errorf("Kernel = %v, want %v", got, tt.kernel)
			}
		})
	}
}
