package native

// cleanup is a stack of undos for the resources a multi-step operation has acquired so far, in
// the spirit of gVisor's cleanup.Make/Release: each step pushes the undo of what it took; on
// success the caller releases the stack, on failure it runs the undos in reverse order.
type cleanup struct {
	undos []func()
}

// add pushes the undo of a resource just acquired.
func (c *cleanup) add(undo func()) { c.undos = append(c.undos, undo) }

// release forgets every undo: the operation succeeded and its resources are kept.
func (c *cleanup) release() { c.undos = nil }

// run undoes everything, last acquired first, once.
func (c *cleanup) run() {
	for i := len(c.undos) - 1; i >= 0; i-- {
		c.undos[i]()
	}
	c.undos = nil
}
