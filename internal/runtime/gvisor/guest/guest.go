// Package guest is the inside of a gvisor sandbox: the paths the daemon's bundle and the
// sandbox's init agree on, the init's configuration, and the init itself (IsInit, Init). It is
// apart from the runtime so that the small airlock-sandbox binary links it without the
// runtime's daemon side (runsc, netpolicy, cgroups).
package guest

import "encoding/json"

// Runtime is the gvisor runtime's name (gvisor.Name).
const Runtime = "gvisor"

// Paths inside the sandbox. Dir is root's alone (mode 0700): the sandbox user can neither list
// it nor reach the agent's binary, configuration or socket.
const (
	Dir  = "/.airlock"
	Exe  = Dir + "/airlock"
	Sock = Dir + "/sock/agent.sock"
	// ConfigPath is the agent's configuration (Config as JSON), in the guest directory the
	// daemon binds at Dir. Not the environment: gVisor's /proc lets any task read PID 1's
	// environ, so PID 1 starts with none.
	ConfigPath = Dir + "/config.json"
	// Cgroup is where the init mounts gVisor's own cgroupfs (its pids controller) and makes
	// the user processes' group: gVisor's kernel enforces its pids.max on every fork and
	// clone, which this runsc's RLIMIT_NPROC does not.
	Cgroup = Dir + "/cgroup"
)

// Config is what the init and the agent need inside.
type Config struct {
	UID     int      `json:"uid"`
	GID     int      `json:"gid"`
	NoFile  uint64   `json:"nofile,omitempty"`
	NProc   uint64   `json:"nproc,omitempty"`
	Scratch int64    `json:"scratch,omitempty"`
	Env     []string `json:"env,omitempty"`
}

// Encode is c as the daemon writes it for the init.
func (c Config) Encode() []byte {
	b, _ := json.Marshal(c)
	return b
}
