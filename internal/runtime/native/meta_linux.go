package native

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// SetMeta replaces the opaque record kept with the sandbox's state (Spec.Meta), for a change
// that must survive a restart such as a new expiry. The rest of the state is kept as it is.
func (s *Sandbox) SetMeta(meta []byte) error {
	b, err := os.ReadFile(filepath.Join(s.dir, "state.json"))
	if err != nil {
		return fmt.Errorf("read sandbox state: %w", err)
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("read sandbox state: %w", err)
	}
	st.Meta = meta
	return writeState(s.dir, st)
}
