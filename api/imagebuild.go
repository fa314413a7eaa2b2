package api

// BuildImageRequest is POST /v1/images: an image built from a spec the way Modal's Image
// builder works. Each step runs in a sandbox of the previous step's image (env and workdir
// change only the config) and its result is cached by hash of (parent image, step): an
// unchanged step is never rebuilt.
type BuildImageRequest struct {
	Name          string           `json:"name"`                     // name[:tag] the built image gets
	Base          string           `json:"base"`                     // an image in the store, or "debian" (bootstrapped from Debian's archive)
	PythonVersion string           `json:"python_version,omitempty"` // "3.11": checked against the base's python3; a mismatch fails the build
	Steps         []BuildImageStep `json:"steps"`                    // in order; each sets exactly one field
}

// BuildImageStep is one step of a build; exactly one field is set.
type BuildImageStep struct {
	AptInstall  []string          `json:"apt_install,omitempty"`  // Debian packages, installed with apt-get
	PipInstall  []string          `json:"pip_install,omitempty"`  // requirement specifiers, installed with the image's python3 -m pip
	RunCommands []string          `json:"run_commands,omitempty"` // shell commands run in order as the image's root; the first failure fails the step
	Copy        *BuildImageCopy   `json:"copy,omitempty"`         // one file into the image
	Env         map[string]string `json:"env,omitempty"`          // environment variables set in the image's config
	Workdir     string            `json:"workdir,omitempty"`      // the image's working directory (absolute)
}

// BuildImageCopy is a copy step: the file's content (base64) put at an absolute path.
// `airlock image build` turns a src path under the spec's directory into content.
type BuildImageCopy struct {
	Content string `json:"content,omitempty"` // the file, base64 (at most 16 MiB)
	Src     string `json:"src,omitempty"`     // a path under the build context: only where there is one (the CLI), never over HTTP
	Dst     string `json:"dst"`               // absolute path in the image
	Mode    string `json:"mode,omitempty"`    // octal permission bits, "0644" when empty
}

// BuildImageEvent is one line of POST /v1/images's NDJSON stream.
type BuildImageEvent struct {
	Type      string       `json:"type"`                 // step (starting), log, done (a step), image (the result, last), error (last)
	Step      int          `json:"step"`                 // 1-based step number; 0 is the base
	Steps     int          `json:"steps"`                // how many steps the spec has
	Kind      string       `json:"kind,omitempty"`       // apt_install, pip_install, run_commands, copy, env, workdir, or base
	Cached    bool         `json:"cached"`               // step and done: the step's result came from the cache
	Line      string       `json:"line,omitempty"`       // log: one line of the step's output (bounded)
	ElapsedMS int64        `json:"elapsed_ms,omitempty"` // done: the step's time; image and error: the whole build's
	Image     *ImageInfo   `json:"image,omitempty"`      // image: the built image
	Error     *ErrorDetail `json:"error,omitempty"`      // error: why the build failed
}
