package airlock

import (
	"context"
	"net/http"
	"net/url"

	"github.com/airlockhq/airlock/api"
)

// CreateSecret stores a named secret (environment variables) for the client's API key,
// replacing one of the same name. Runs, sandboxes and sessions name it in their Secrets field
// to get its variables. The answer names the variables, never their values.
func (c *Client) CreateSecret(ctx context.Context, name string, values map[string]string) (*api.SecretInfo, error) {
	var out api.SecretInfo
	if err := c.do(ctx, http.MethodPost, "/v1/secrets", api.CreateSecretRequest{Name: name, Values: values}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Secrets lists the key's named secrets: names and variable names, no values.
func (c *Client) Secrets(ctx context.Context) ([]api.SecretInfo, error) {
	var out api.SecretList
	if err := c.do(ctx, http.MethodGet, "/v1/secrets", nil, &out); err != nil {
		return nil, err
	}
	return out.Secrets, nil
}

// DeleteSecret deletes a named secret.
func (c *Client) DeleteSecret(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/secrets/"+url.PathEscape(name), nil, nil)
}
