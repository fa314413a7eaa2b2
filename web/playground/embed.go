// Package playground holds the web playground's built assets (dist/, made by build.mjs from
// src/ with npm's CodeMirror and esbuild), embedded so that the daemon serves the page with no
// network and `go build` of a fresh clone needs no npm.
package playground

import (
	"embed"
	"io/fs"
)

//go:embed dist
var dist embed.FS

// FS is the playground's files: index.html, app.js, app.css.
func FS() fs.FS {
	sub, err := fs.Sub(dist, "dist")
	if err != nil {
		panic(err) // dist is embedded above
	}
	return sub
}
