package server

import (
	"net/http"

	"github.com/airlockhq/airlock/api"
)

// handleSnapshot turns the sandbox's writable layer into a new image on top of its own and
// answers that image.
func (s *Server) handleSnapshot(w http.ResponseWriter, r *http.Request) error {
	st, err := s.images()
	if err != nil {
		return err
	}
	var req api.SnapshotRequest
	if r.ContentLength != 0 {
		if err := s.decode(w, r, &req); err != nil {
			return err
		}
	}
	sb, done, err := s.use(r)
	if err != nil {
		return err
	}
	defer done()
	ref, err := sb.Snapshot(r.Context(), req.Name)
	if err != nil {
		return err
	}
	img, err := st.Resolve(ref.ID)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, ImageInfo(img))
	return nil
}
