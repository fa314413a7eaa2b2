package api

import "time"

// CreateSecretRequest is the body of POST /v1/secrets: a named set of environment variables,
// stored encrypted by the daemon for the caller's API key and injected into the runs,
// sandboxes and sessions that name it in their secrets. A secret of the same name is replaced.
type CreateSecretRequest struct {
	Name   string            `json:"name"`   // 1…64 characters of [A-Za-z0-9._-], starting with a letter or digit
	Values map[string]string `json:"values"` // variable name → value; 1…100 variables, 64 KiB in all; never returned
}

// SecretInfo describes a named secret: its variables' names, never their values.
type SecretInfo struct {
	Name      string    `json:"name"`       // the secret's name
	Keys      []string  `json:"keys"`       // names of its variables, sorted
	CreatedAt time.Time `json:"created_at"` // when the name was first stored
	UpdatedAt time.Time `json:"updated_at"` // when its variables were last set
}

// SecretList is the answer of GET /v1/secrets.
type SecretList struct {
	Secrets []SecretInfo `json:"secrets"` // the caller's secrets, by name
}
