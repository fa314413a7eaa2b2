//go:build !linux

package cgroup

import (
	"context"
	"errors"
	"os"
)

// Manager is unavailable off Linux; New returns errors.ErrUnsupported.
type Manager struct{}

// New returns errors.ErrUnsupported: cgroups exist only on Linux.
func New(root string) (*Manager, error) { return nil, errors.ErrUnsupported }

// Version returns 0.
func (m *Manager) Version() int { return 0 }

// Create returns errors.ErrUnsupported.
func (m *Manager) Create(name string, l Limits) (*Group, error) { return nil, errors.ErrUnsupported }

// Load returns errors.ErrUnsupported.
func (m *Manager) Load(name string) (*Group, error) { return nil, errors.ErrUnsupported }

// List returns errors.ErrUnsupported.
func (m *Manager) List() ([]string, error) { return nil, errors.ErrUnsupported }

// RemoveRoot returns errors.ErrUnsupported.
func (m *Manager) RemoveRoot() error { return errors.ErrUnsupported }

// Group is unavailable off Linux.
type Group struct{ name string }

// Name returns the group's name.
func (g *Group) Name() string { return g.name }

// DirFD returns errors.ErrUnsupported.
func (g *Group) DirFD() (fd int, ok bool, err error) { return -1, false, errors.ErrUnsupported }

// Add returns errors.ErrUnsupported.
func (g *Group) Add(pid int) error { return errors.ErrUnsupported }

// Stats returns errors.ErrUnsupported.
func (g *Group) Stats() (Stats, error) { return Stats{}, errors.ErrUnsupported }

// Pids returns errors.ErrUnsupported.
func (g *Group) Pids() ([]int, error) { return nil, errors.ErrUnsupported }

// Kill returns errors.ErrUnsupported.
func (g *Group) Kill(ctx context.Context) error { return errors.ErrUnsupported }

// Delete returns errors.ErrUnsupported.
func (g *Group) Delete() error { return errors.ErrUnsupported }

// CreateChild returns errors.ErrUnsupported.
func (g *Group) CreateChild(name string, l Limits) (*Group, error) { return nil, errors.ErrUnsupported }

// LoadChild returns errors.ErrUnsupported.
func (g *Group) LoadChild(name string) (*Group, error) { return nil, errors.ErrUnsupported }

// EnableChildren returns errors.ErrUnsupported.
func (g *Group) EnableChildren() error { return errors.ErrUnsupported }

// ChownProcs returns errors.ErrUnsupported.
func (g *Group) ChownProcs(uid, gid int) error { return errors.ErrUnsupported }

// OpenTasks returns errors.ErrUnsupported.
func (g *Group) OpenTasks() ([]*os.File, error) { return nil, errors.ErrUnsupported }

// SetLimits returns errors.ErrUnsupported.
func (g *Group) SetLimits(l Limits) error { return errors.ErrUnsupported }

// Recycle is unsupported off Linux.
func (g *Group) Recycle(maxResidue int64) (*Group, error) { return nil, errors.ErrUnsupported }

// DelegatedParent reports no delegated subtree: cgroups exist only on Linux.
func DelegatedParent(mount string, procCgroup []byte) (parent string, ok bool) { return "", false }
