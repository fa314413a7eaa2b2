package server

import (
	"net/http"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/secrets"
)

// The named secrets of the caller's key: created and listed without ever answering a value
// (GET lists the variables' names only), injected by the engine into the runs, sandboxes and
// sessions that name them.
func (s *Server) secretRoutes() {
	s.handle("POST /v1/secrets", true, s.handleCreateSecret)
	s.handle("GET /v1/secrets", true, s.handleListSecrets)
	s.handle("DELETE /v1/secrets/{name}", true, s.handleDeleteSecret)
}

// secretStore is the store, or the 501 of a daemon without a secrets key.
func (s *Server) secretStore() (*secrets.Store, error) {
	if s.cfg.Secrets == nil {
		return nil, engine.ErrSecretsDisabled
	}
	return s.cfg.Secrets, nil
}

func secretInfo(i secrets.Info) api.SecretInfo {
	return api.SecretInfo{Name: i.Name, Keys: i.Keys, CreatedAt: i.Created, UpdatedAt: i.Updated}
}

func (s *Server) handleCreateSecret(w http.ResponseWriter, r *http.Request) error {
	st, err := s.secretStore()
	if err != nil {
		return err
	}
	var req api.CreateSecretRequest
	if err := s.decode(w, r, &req); err != nil {
		return err
	}
	info, err := st.Put(engine.Owner(r.Context()), req.Name, req.Values)
	clear(req.Values) // the request's copy of the values goes at once
	s.auditSecret(r, "secret.create", req.Name, err)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, secretInfo(info))
	return nil
}

func (s *Server) handleListSecrets(w http.ResponseWriter, r *http.Request) error {
	st, err := s.secretStore()
	if err != nil {
		return err
	}
	list, err := st.List(engine.Owner(r.Context()))
	if err != nil {
		return err
	}
	out := api.SecretList{Secrets: make([]api.SecretInfo, 0, len(list))}
	for _, i := range list {
		out.Secrets = append(out.Secrets, secretInfo(i))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) handleDeleteSecret(w http.ResponseWriter, r *http.Request) error {
	st, err := s.secretStore()
	if err != nil {
		return err
	}
	name := r.PathValue("name")
	err = st.Delete(engine.Owner(r.Context()), name)
	s.auditSecret(r, "secret.delete", name, err)
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
