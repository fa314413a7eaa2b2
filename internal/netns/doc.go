// Package netns runs code inside a Linux network namespace: on a locked OS thread that joins
// the namespace and comes back, so that sockets opened there stay there and no thread is left
// behind in a namespace that should die with its sandbox.
package netns
