package sandboxinit

// Config is what the daemon sends the sandbox's init over fd 3, as JSON.
type Config struct {
	ID          string      `json:"id"`
	Hostname    string      `json:"hostname"`
	Staging     string      `json:"staging"`      // empty directory in the daemon's mount tree to build the root on
	Binds       []Bind      `json:"binds"`        // read-only binds of the image into the new root
	Symlinks    [][2]string `json:"symlinks"`     // [path, target] recreated in the new root (merged-/usr links)
	ScratchSize int64       `json:"scratch_size"` // bytes shared by /workspace, /tmp and /dev/shm
	UID         int         `json:"uid"`          // the sandbox user inside the user namespace
	GID         int         `json:"gid"`
	NoFile      uint64      `json:"nofile"`
	NProc       uint64      `json:"nproc"` // processes+threads of the sandbox user (RLIMIT_NPROC)
	Network     bool        `json:"network"`
	Workdir     string      `json:"workdir"` // extra writable directory on the scratch layer (e.g. /app)
	// UserCgroup is how many descriptors from fdUserCgroup on lead to the user processes'
	// cgroup: on v2 one O_PATH descriptor of its directory (for clone3 CLONE_INTO_CGROUP), on
	// v1 its "tasks" file in each hierarchy (the spawner thread moves itself there).
	UserCgroup int  `json:"user_cgroup"`
	CgroupV2   bool `json:"cgroup_v2"`
	// Root, for an image sandbox, is where the overlay root appears in the init's mount
	// namespace (propagated from the daemon's); Env is the image's environment; ShmSize the
	// /dev/shm tmpfs (ScratchSize is then the writable layer's disk cap).
	Root    string   `json:"root,omitempty"`
	Env     []string `json:"env,omitempty"`
	ShmSize int64    `json:"shm_size,omitempty"`
	// WritableRoot (a build sandbox, Spec.Build) leaves the image root writable after pivot_root.
	WritableRoot bool `json:"writable_root,omitempty"`
	// Zygote, if set, makes the init execute the Python zygote instead of serving as the agent
	// (zygote_linux.go).
	Zygote *ZygoteInit `json:"zygote,omitempty"`
}

// Bind is one read-only bind mount of a host path into the new root.
type Bind struct {
	Source string `json:"source"`
	Target string `json:"target"` // absolute path inside the sandbox
	File   bool   `json:"file"`   // a file rather than a directory
}

// Child file descriptors, as seen by the init process.
const (
	fdConfig   = 3
	fdStatus   = 4
	fdListener = 5
	// fdUserCgroup is the first of Config.UserCgroup descriptors of the user cgroup.
	fdUserCgroup = 6
)
