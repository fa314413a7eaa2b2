//go:build !linux

package doctor

import "os"

// Gather reads the files below c.Root; the system-call probes exist only on Linux, so they all
// report errNotProbed.
func Gather(c Config) Facts {
	c = c.withDefaults()
	f := gatherFiles(c.Root)
	f.EUID, f.PID = os.Geteuid(), os.Getpid()
	f.State.Err = errNotProbed
	f.CloneNamespaces, f.LandlockErr, f.CloseRange, f.Pidfd = errNotProbed, errNotProbed, errNotProbed, errNotProbed
	f.CloneIntoCgroup, f.NFTables, f.ForwardErr = errNotProbed, errNotProbed, errNotProbed
	return f
}
