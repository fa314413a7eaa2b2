package airlock

import (
	"context"
	"net/http"
	"net/url"

	"github.com/airlockhq/airlock/api"
)

// Session is a handle on a stateful Python session: an interpreter in its own sandbox whose
// variables survive from one [Session.Run] to the next. Its id is also a sandbox id, so
// [Client.Sandbox] with it reaches the session's files.
type Session struct {
	c  *Client
	id string
}

// CreateSession starts a session. Zero fields of req mean the daemon's defaults (a 3600 s life,
// 300 s idle timeout, network blocked).
func (c *Client) CreateSession(ctx context.Context, req api.CreateSessionRequest) (*Session, error) {
	var info api.SessionInfo
	if err := c.do(ctx, http.MethodPost, "/v1/sessions", req, &info); err != nil {
		return nil, err
	}
	return &Session{c: c, id: info.ID}, nil
}

// Session returns a handle on the session id without checking it; a call on it fails with
// [IsNotFound] or [IsGone] when there is no such running session.
func (c *Client) Session(id string) *Session { return &Session{c: c, id: id} }

// ID is the session's id, which is also its sandbox's.
func (s *Session) ID() string { return s.id }

func (s *Session) path(suffix string) string {
	return "/v1/sessions/" + url.PathEscape(s.id) + suffix
}

// Run runs one cell. An exception in the cell is not an error: it is in the result's Error.
func (s *Session) Run(ctx context.Context, req api.RunRequest) (*api.RunResult, error) {
	var res api.RunResult
	if err := s.c.do(ctx, http.MethodPost, s.path("/run"), req, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// Install pip-installs packages into the session's interpreter.
func (s *Session) Install(ctx context.Context, req api.InstallRequest) (*api.InstallResult, error) {
	var res api.InstallResult
	if err := s.c.do(ctx, http.MethodPost, s.path("/install"), req, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// Interrupt stops the running cell, keeping the session's state when it can.
func (s *Session) Interrupt(ctx context.Context) (*api.InterruptResult, error) {
	var res api.InterruptResult
	if err := s.c.do(ctx, http.MethodPost, s.path("/interrupt"), nil, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// Terminate ends the session and its sandbox.
func (s *Session) Terminate(ctx context.Context) error {
	return s.c.do(ctx, http.MethodDelete, s.path(""), nil, nil)
}
