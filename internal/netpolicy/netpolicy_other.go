//go:build !linux

package netpolicy

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// Manager is the host side of sandbox networks; only Linux has one.
type Manager struct{}

// Attachment is one sandbox's network; only Linux has one.
type Attachment struct{}

var errUnsupported = fmt.Errorf("network: sandbox networks need Linux: %w", errors.ErrUnsupported)

// New returns errors.ErrUnsupported: sandbox networks need Linux.
func New(cfg Config) (*Manager, error) { return nil, errUnsupported }

// TableExists returns errors.ErrUnsupported: sandbox networks need Linux.
func TableExists(name string) (bool, error) { return false, errUnsupported }

func (m *Manager) LinkPrefix() string                             { return "" }
func (m *Manager) LinkName(slot int) string                       { return "" }
func (m *Manager) Addrs(slot int) (netip.Addr, netip.Addr, error) { return m.cfg().Addrs(slot) }
func (m *Manager) cfg() Config                                    { return Config{} }
func (m *Manager) Attach(ctx context.Context, sb Sandbox, p Policy) (*Attachment, error) {
	return nil, errUnsupported
}
func (m *Manager) Adopt(ctx context.Context, sb Sandbox, p Policy) (*Attachment, error) {
	return nil, errUnsupported
}
func (m *Manager) Sweep(ctx context.Context, keep func(id string) bool) error { return errUnsupported }
func (m *Manager) Close() error                                               { return nil }

func (a *Attachment) Gateway() netip.Addr { return netip.Addr{} }
func (a *Attachment) Addr() netip.Addr    { return netip.Addr{} }
func (a *Attachment) Link() string        { return "" }
func (a *Attachment) Admit(addrs []netip.Addr, port uint16, portEnd uint16, ttl time.Duration) error {
	return errUnsupported
}
func (a *Attachment) Close() error { return nil }
