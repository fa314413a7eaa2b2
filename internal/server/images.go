package server

import (
	"net/http"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/image"
)

func (s *Server) imageRoutes() {
	s.handle("GET /v1/images", true, s.handleImages)
	s.handle("POST /v1/images", true, s.handleBuildImage)
	s.handle("POST /v1/images/pull", true, s.handlePullImage)
	// {ref...}: a reference has slashes (registry/repository:tag).
	s.handle("GET /v1/images/{ref...}", true, s.handleImage)
	s.handle("DELETE /v1/images/{ref...}", true, s.handleRemoveImage)
}

// errNoImages answers the image routes of a server without an image store.
var errNoImages = api.Errorf(api.ErrUnimplemented, "this daemon has no image store")

func (s *Server) images() (*image.Store, error) {
	if s.cfg.Images == nil {
		return nil, errNoImages
	}
	return s.cfg.Images, nil
}

func (s *Server) handleImages(w http.ResponseWriter, r *http.Request) error {
	st, err := s.images()
	if err != nil {
		return err
	}
	imgs, err := st.List()
	if err != nil {
		return err
	}
	out := api.ImageList{Images: make([]api.ImageInfo, 0, len(imgs))}
	for _, img := range imgs {
		out.Images = append(out.Images, ImageInfo(img))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) handleImage(w http.ResponseWriter, r *http.Request) error {
	st, err := s.images()
	if err != nil {
		return err
	}
	img, err := st.Resolve(r.PathValue("ref"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, ImageInfo(img))
	return nil
}

func (s *Server) handlePullImage(w http.ResponseWriter, r *http.Request) error {
	st, err := s.images()
	if err != nil {
		return err
	}
	var req api.PullImageRequest
	if err := s.decode(w, r, &req); err != nil {
		return err
	}
	if req.Ref == "" {
		return api.Errorf(api.ErrInvalidArgument, "ref is required")
	}
	var opts image.PullOptions
	if a := req.Auth; a != nil {
		opts = image.PullOptions{Username: a.Username, Password: a.Password, Token: a.Token}
	}
	img, err := st.Pull(r.Context(), req.Ref, opts)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, ImageInfo(img))
	return nil
}

func (s *Server) handleRemoveImage(w http.ResponseWriter, r *http.Request) error {
	st, err := s.images()
	if err != nil {
		return err
	}
	if err := st.Remove(r.PathValue("ref")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// ImageInfo converts a stored image to its wire form.
func ImageInfo(img *image.Image) api.ImageInfo {
	out := api.ImageInfo{ID: img.ID, Names: img.Names, RepoDigests: img.RepoDigests, Source: img.Source,
		Created: img.Created, Added: img.Added,
		Config: api.ImageConfig{Env: img.Config.Env, WorkingDir: img.Config.WorkingDir, User: img.Config.User,
			Entrypoint: img.Config.Entrypoint, Cmd: img.Config.Cmd}}
	if out.Names == nil {
		out.Names = []string{}
	}
	if out.RepoDigests == nil {
		out.RepoDigests = []string{}
	}
	for _, l := range img.Layers {
		out.Size += l.Size
		out.Layers = append(out.Layers, api.ImageLayer{Digest: l.Digest, DiffID: l.DiffID, Size: l.Size, MediaType: l.MediaType})
	}
	return out
}
