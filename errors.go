package airlock

import (
	"errors"

	"github.com/airlockhq/airlock/api"
)

// The daemon's errors reach you as *api.Error values (see the api.Code* constants). These
// helpers are thin wrappers over errors.Is with the api sentinels, so they also see through
// errors you wrap yourself.

// IsNotFound reports whether err means the sandbox, process or file does not exist
// (api.CodeNotFound, HTTP 404).
func IsNotFound(err error) bool { return errors.Is(err, api.ErrNotFound) }

// IsGone reports whether err means the sandbox has ended: terminated, expired, idle-reaped or
// died (api.CodeGone, HTTP 410). A streamed exec whose sandbox ends under it fails this way too.
func IsGone(err error) bool { return errors.Is(err, api.ErrGone) }

// IsTimeout reports whether err is the daemon giving up on a deadline (api.CodeTimeout,
// HTTP 504). A program that overruns its own exec timeout is not an error: its result has
// TimedOut set and exit code 124.
func IsTimeout(err error) bool { return errors.Is(err, api.ErrTimeout) }

// IsQuota reports whether err means a limit refused the request: the daemon is at capacity
// (api.CodeResourceExhausted, HTTP 429; retry later) or a body or file was too large
// (api.CodeTooLarge, HTTP 413).
func IsQuota(err error) bool {
	return errors.Is(err, api.ErrResourceExhausted) || errors.Is(err, api.ErrTooLarge)
}

// IsAuth reports whether the API key was missing or wrong (api.CodeUnauthenticated, HTTP 401).
func IsAuth(err error) bool { return errors.Is(err, api.ErrUnauthenticated) }

// ErrOutputOverflow is returned by a [Process]'s Stdout or Stderr reader, after the data it
// kept, when more than [MaxBufferedOutput] bytes of that stream were waiting unread and the rest
// was dropped. Read the streams while the process runs to get all of its output.
var ErrOutputOverflow = errors.New("airlock: output dropped: more than MaxBufferedOutput bytes were left unread")
