package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/image"
	"github.com/airlockhq/airlock/internal/netpolicy"
	"github.com/airlockhq/airlock/internal/server"
)

// imageBuildCmd builds an image from a spec file, through a daemon with --server or else with
// an embedded engine on the store open opens, running the steps in sandboxes either way, and
// shows the progress.
func imageBuildCmd(open openStore) *cobra.Command {
	o := &clientOptions{}
	var file string
	cmd := &cobra.Command{
		Use:   "build -f spec.(json|yaml)",
		Short: "Build an image from a spec (base, apt_install, pip_install, run_commands, copy, env, workdir)",
		Long: "Build an image from a spec: each step runs in a sandbox and is cached by hash of (parent,\n" +
			"step), so an unchanged step is never rebuilt. With --server a daemon builds it into its\n" +
			"store; without, an embedded engine builds it into --state-dir's. Copy steps' src paths are\n" +
			"read relative to the spec file's directory and sent as content.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return errors.New("give the spec with -f")
			}
			req, err := readBuildSpec(file)
			if err != nil {
				return err
			}
			if o.server == "" {
				return buildHere(cmd, open, req)
			}
			return postBuild(cmd, o, req)
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "the spec, JSON or YAML")
	bindClientFlags(cmd.Flags(), o, "daemon that builds (default none: an embedded engine builds into --state-dir's store)")
	return cmd
}

// buildHere builds req with an embedded engine (a private runtime state directory, the
// default limits, every network mode the host can build) into the store open opens.
func buildHere(cmd *cobra.Command, open openStore, req *api.BuildImageRequest) error {
	ctx := cmd.Context()
	sp := server.BuildSpec(req)
	if err := sp.Validate(); err != nil {
		return err
	}
	st, err := open()
	if err != nil {
		return err
	}
	logger := warnLogger()
	rc := runtimeConfig{Default: runtimeDefs[0].name}
	rc.Native.Network = &netpolicy.Config{}
	e, rts, err := newEngine(logger, engine.Config{Images: image.EngineImages(st)}, rc)
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
		defer cancel()
		closeEngine(cctx, logger, e, rts)
	}()
	b := &image.Builder{Store: st, Runner: image.EngineRunner(e, st), Logger: logger}
	var shown error
	done := false
	b.Build(ctx, sp, "", func(ev image.BuildEvent) {
		if !done {
			done, shown = showEvent(cmd.OutOrStdout(), server.BuildImageEvent(ev))
		}
	})
	if !done {
		return errors.New("the build ended without a result")
	}
	return shown
}

// readBuildSpec reads a JSON or YAML spec strictly (unknown fields are errors) and turns copy
// src paths (under the spec's directory, never out of it) into content.
func readBuildSpec(file string) (*api.BuildImageRequest, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	if t := bytes.TrimSpace(b); len(t) == 0 || t[0] != '{' {
		if b, err = yaml.YAMLToJSON(b); err != nil {
			return nil, fmt.Errorf("spec %s: %w", file, err)
		}
	}
	var req api.BuildImageRequest
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return nil, fmt.Errorf("spec %s: %w", file, err)
	}
	root, err := os.OpenRoot(filepath.Dir(file))
	if err != nil {
		return nil, err
	}
	defer root.Close()
	for i, st := range req.Steps {
		c := st.Copy
		if c == nil || c.Src == "" {
			continue
		}
		if c.Content != "" {
			return nil, fmt.Errorf("step %d: copy: give one of content and src", i+1)
		}
		f, err := root.Open(c.Src)
		if err != nil {
			return nil, fmt.Errorf("step %d: copy: %w", i+1, err)
		}
		data, err := io.ReadAll(io.LimitReader(f, image.MaxCopyBytes+1))
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("step %d: copy: %w", i+1, err)
		}
		if len(data) > image.MaxCopyBytes {
			return nil, fmt.Errorf("step %d: copy: %s is over %d bytes", i+1, c.Src, image.MaxCopyBytes)
		}
		c.Content, c.Src = base64.StdEncoding.EncodeToString(data), ""
	}
	return &req, nil
}

func postBuild(cmd *cobra.Command, o *clientOptions, req *api.BuildImageRequest) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	hr, err := http.NewRequestWithContext(cmd.Context(), http.MethodPost, strings.TrimRight(o.server, "/")+"/v1/images", bytes.NewReader(body))
	if err != nil {
		return err
	}
	hr.Header.Set("Content-Type", "application/json")
	hr.Header.Set("Accept", "application/x-ndjson")
	if o.apiKey != "" {
		hr.Header.Set("Authorization", "Bearer "+o.apiKey)
	}
	resp, err := http.DefaultClient.Do(hr)
	if err != nil {
		return fmt.Errorf("build on %s: %w", o.server, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error api.ErrorDetail }
		json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&e)
		return fmt.Errorf("build: %s (%s)", e.Error.Message, resp.Status)
	}
	return showBuild(cmd.OutOrStdout(), resp.Body)
}

// showBuild prints a build's events: which step, cached or not, elapsed, the log indented.
func showBuild(w io.Writer, r io.Reader) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var e api.BuildImageEvent
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return fmt.Errorf("build stream: %w", err)
		}
		if done, err := showEvent(w, e); done {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("build stream: %w", err)
	}
	return errors.New("build stream ended without a result")
}

// showEvent prints one build event; done says it was the last (the image, or the error err).
func showEvent(w io.Writer, e api.BuildImageEvent) (done bool, err error) {
	elapsed := (time.Duration(e.ElapsedMS) * time.Millisecond).Round(time.Millisecond)
	switch e.Type {
	case "step":
		state := "running"
		if e.Cached {
			state = "cached"
		}
		if e.Kind == "base" {
			fmt.Fprintf(w, "[base] %s\n", e.Line)
		} else {
			fmt.Fprintf(w, "[%d/%d] %s (%s)\n", e.Step, e.Steps, e.Kind, state)
		}
	case "log":
		fmt.Fprintf(w, "    %s\n", e.Line)
	case "done":
		fmt.Fprintf(w, "    done in %v\n", elapsed)
	case "image":
		if e.Image != nil {
			names := make([]string, len(e.Image.Names))
			for i, n := range e.Image.Names {
				names[i] = image.Familiar(n)
			}
			fmt.Fprintf(w, "built %s %s in %v\n", strings.Join(names, ","), e.Image.ID, elapsed)
		}
		return true, nil
	case "error":
		if e.Error != nil {
			return true, fmt.Errorf("build failed after %v: %s", elapsed, e.Error.Message)
		}
		return true, errors.New("build failed")
	}
	return false, nil
}
