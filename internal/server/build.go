package server

import (
	"encoding/json"
	"net/http"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/image"
)

// handleBuildImage builds an image from a spec and streams the build as NDJSON
// BuildImageEvents. A bad spec is a 400 before anything runs; once the stream has begun, a
// failure is its last event.
func (s *Server) handleBuildImage(w http.ResponseWriter, r *http.Request) error {
	st, err := s.images()
	if err != nil {
		return err
	}
	var req api.BuildImageRequest
	if err := s.decode(w, r, &req); err != nil {
		return err
	}
	sp := BuildSpec(&req)
	if err := sp.Validate(); err != nil {
		return err
	}
	for i, step := range sp.Steps {
		if step.Copy != nil && step.Copy.Src != "" {
			return api.Errorf(api.ErrInvalidArgument, "step %d: copy src needs a build context, which HTTP has none of: send content", i+1)
		}
	}
	if s.cfg.BuildRunner == nil {
		return api.Errorf(api.ErrUnimplemented, "this daemon cannot run build steps")
	}
	b := &image.Builder{Store: st, Runner: s.cfg.BuildRunner, Logger: s.cfg.Logger}
	if sp.Base != image.DebianBase {
		// A missing base is a plain 404, before the stream begins.
		if _, err := st.Resolve(sp.Base); err != nil {
			return err
		}
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	// Build calls back from its own goroutine only: no lock needed.
	b.Build(r.Context(), sp, "", func(e image.BuildEvent) {
		enc.Encode(BuildImageEvent(e))
		rc.Flush()
	})
	return nil
}

// BuildSpec converts the wire spec to the builder's.
func BuildSpec(req *api.BuildImageRequest) *image.BuildSpec {
	sp := &image.BuildSpec{Name: req.Name, Base: req.Base, PythonVersion: req.PythonVersion}
	for _, s := range req.Steps {
		st := image.BuildStep{AptInstall: s.AptInstall, PipInstall: s.PipInstall, RunCommands: s.RunCommands, Env: s.Env, Workdir: s.Workdir}
		if c := s.Copy; c != nil {
			st.Copy = &image.CopyStep{Content: c.Content, Src: c.Src, Dst: c.Dst, Mode: c.Mode}
		}
		sp.Steps = append(sp.Steps, st)
	}
	return sp
}

// BuildImageEvent converts a builder event to the wire's.
func BuildImageEvent(e image.BuildEvent) api.BuildImageEvent {
	out := api.BuildImageEvent{Type: e.Type, Step: e.Step, Steps: e.Steps, Kind: e.Kind, Cached: e.Cached,
		Line: e.Line, ElapsedMS: e.Elapsed.Milliseconds()}
	if e.Type == "image" && e.Image != nil {
		info := ImageInfo(e.Image)
		out.Image = &info
	}
	if e.Err != nil {
		d := api.PublicDetail(e.Err)
		out.Error = &d
	}
	return out
}
