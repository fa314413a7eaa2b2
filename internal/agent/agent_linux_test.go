package agent

import "testing"

// TestServicesServeTheirOwnPaths: the agent routes each service by its name before building
// it (service.handler), so the generated constructor must answer on exactly that path.
func TestServicesServeTheirOwnPaths(t *testing.T) {
	for _, s := range (&Agent{}).services() {
		t.Run(s.name, func(t *testing.T) {
			if got, _ := s.make(); got != "/"+s.name+"/" {
				t.Fatalf("service %s serves %q, want %q", s.name, got, "/"+s.name+"/")
			}
		})
	}
}
