// Package testnet builds a small "internet" for network tests out of network namespaces: each
// Host is a namespace joined to the host by a veth, with the address a test picks (public
// looking, private, the metadata address), and everything it makes is removed when the test
// ends, failed or not. Tests send traffic only to these hosts and to 127.0.0.1.
//
// Host routes are host-wide, so one Net at a time holds them: New takes an exclusive lock
// (a file lock, across processes too) that the test's cleanup releases. Use one Net per test.
package testnet
