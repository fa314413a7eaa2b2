package api

import "time"

// ImageInfo describes one image in the daemon's image store. Images are the daemon's, shared
// by every API key.
type ImageInfo struct {
	ID          string       `json:"id"`           // sha256:… of the image's config; its first 12 hex digits also name it
	Names       []string     `json:"names"`        // name:tag references to it, in full (registry/repository:tag)
	RepoDigests []string     `json:"repo_digests"` // repository@sha256:… of the manifests it was pulled as
	Source      string       `json:"source"`       // what it came from: a reference, an imported file, or a commit
	Created     time.Time    `json:"created"`      // when it was built, as its config says
	Added       time.Time    `json:"added"`        // when it entered this store
	Size        int64        `json:"size"`         // bytes of its layers' blobs
	Layers      []ImageLayer `json:"layers"`       // lowest first
	Config      ImageConfig  `json:"config"`       // what a sandbox of it starts with
}

// ImageLayer is one layer of an image.
type ImageLayer struct {
	Digest    string `json:"digest"`     // sha256:… of the blob as stored
	DiffID    string `json:"diff_id"`    // sha256:… of the uncompressed tar
	Size      int64  `json:"size"`       // bytes of the blob
	MediaType string `json:"media_type"` // the blob's OCI or Docker media type
}

// ImageConfig is what a sandbox takes from an image's config.
type ImageConfig struct {
	Env        []string `json:"env"`                   // NAME=value; PATH is always among them
	WorkingDir string   `json:"working_dir,omitempty"` // the initial working directory
	User       string   `json:"user,omitempty"`        // user[:group], by name or number
	Entrypoint []string `json:"entrypoint,omitempty"`  // the image's entrypoint
	Cmd        []string `json:"cmd,omitempty"`         // the image's default command
}

// ImageList is the answer of GET /v1/images.
type ImageList struct {
	Images []ImageInfo `json:"images"` // newest first
}

// PullImageRequest is the body of POST /v1/images/pull.
type PullImageRequest struct {
	Ref  string        `json:"ref"`            // name[:tag] or name@sha256:… (pinned); a multi-arch index resolves to linux on the daemon's architecture
	Auth *RegistryAuth `json:"auth,omitempty"` // credentials for the registry; anonymous when absent
}

// RegistryAuth are credentials for a registry: a username and password (exchanged for a bearer
// token when the registry asks for one), or a bearer token.
type RegistryAuth struct {
	Username string `json:"username,omitempty"` // with password: basic credentials
	Password string `json:"password,omitempty"` // with username: basic credentials
	Token    string `json:"token,omitempty"`    // a registry bearer token, instead of username and password
}
