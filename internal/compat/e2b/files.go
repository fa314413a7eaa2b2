package e2b

import (
	"compress/gzip"
	"errors"
	"io"
	"mime"
	"net/http"
	"path"
	"strings"

	"github.com/airlockhq/airlock/api"
)

// fileJSON is one written file as envd answers it.
type fileJSON struct {
	Name string `json:"name"`
	Type string `json:"type"`
	Path string `json:"path"`
}

// writeFileError writes err as envd's REST error: a full sandbox disk is 507
// (NotEnoughSpaceError), the rest as the control plane maps it.
func writeFileError(w http.ResponseWriter, err error) {
	if errors.Is(err, api.ErrTooLarge) {
		writeJSON(w, http.StatusInsufficientStorage, errorBody{Code: http.StatusInsufficientStorage, Message: err.Error()})
		return
	}
	writeError(w, err)
}

// handleDownload is files.read: GET /files?path=P, the file's bytes streamed.
func (s *Server) handleDownload(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Query().Get("path")
	if p == "" {
		writeError(w, api.Errorf(api.ErrInvalidArgument, "path is required"))
		return
	}
	started := false
	err := sandboxOf(r.Context()).ReadFile(r.Context(), p, w, func() {
		started = true
		w.Header().Set("Content-Type", "application/octet-stream")
		w.WriteHeader(http.StatusOK)
	})
	if err != nil && !started {
		writeFileError(w, err)
		return
	}
	if !started {
		// An empty file: ReadFile wrote nothing; Content-Length 0 reads as empty.
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", "0")
		w.WriteHeader(http.StatusOK)
	}
}

// handleUpload is files.write: POST /files, multipart with one "file" part per file (its
// filename the destination unless ?path= names it), or the raw body (octet-stream, optionally
// gzip) to ?path=. Parents are created and files overwritten; the answer lists every file.
func (s *Server) handleUpload(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	sb := sandboxOf(ctx)
	qpath := r.URL.Query().Get("path")
	var written []fileJSON
	write := func(dest string, body io.Reader) error {
		if dest == "" {
			return api.Errorf(api.ErrInvalidArgument, "no destination: give ?path= or the part's filename")
		}
		fi, err := sb.WriteFile(ctx, dest, body, 0o644)
		if err != nil {
			return err
		}
		written = append(written, fileJSON{Name: path.Base(fi.Path), Type: "file", Path: fi.Path})
		return nil
	}
	var err error
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if ct == "multipart/form-data" {
		err = uploadParts(r, qpath, write)
	} else {
		var body io.Reader = r.Body
		if strings.EqualFold(r.Header.Get("Content-Encoding"), "gzip") {
			zr, zerr := gzip.NewReader(r.Body)
			if zerr != nil {
				writeError(w, api.Errorf(api.ErrInvalidArgument, "gzip body: %v", zerr))
				return
			}
			defer zr.Close()
			body = zr
		}
		err = write(qpath, body)
	}
	if err == nil && len(written) == 0 {
		err = api.Errorf(api.ErrInvalidArgument, "no file in the request (multipart parts must be named \"file\")")
	}
	if err != nil {
		writeFileError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, written)
}

// uploadParts writes each "file" part of a multipart upload. The destination is the part's
// filename parameter as sent: multipart.Part.FileName would cut it to its base name.
func uploadParts(r *http.Request, qpath string, write func(dest string, body io.Reader) error) error {
	mr, err := r.MultipartReader()
	if err != nil {
		return api.Errorf(api.ErrInvalidArgument, "multipart body: %v", err)
	}
	for n := 0; ; n++ {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return api.Errorf(api.ErrInvalidArgument, "multipart body: %v", err)
		}
		if part.FormName() != "file" {
			part.Close()
			continue
		}
		dest := qpath
		if dest == "" || n > 0 {
			_, params, _ := mime.ParseMediaType(part.Header.Get("Content-Disposition"))
			dest = params["filename"]
		}
		err = write(dest, part)
		part.Close()
		if err != nil {
			return err
		}
	}
}
