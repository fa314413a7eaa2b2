package engine

// SandboxCounts is how many sandboxes are running now, by kind (one-shot runs included), for
// the operator's metrics.
func (e *Engine) SandboxCounts() map[Kind]int {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := map[Kind]int{KindOneShot: len(e.live) - len(e.sandboxes)}
	for _, sb := range e.sandboxes {
		out[sb.kind]++
	}
	if out[KindOneShot] < 0 {
		out[KindOneShot] = 0 // adopted sandboxes are registered before they are live
	}
	return out
}

// EndedRemembered is how many ended sandboxes are remembered, their ids answering 410.
func (e *Engine) EndedRemembered() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.gone)
}
