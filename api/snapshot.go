package api

// SnapshotRequest is the body of POST /v1/sandboxes/{id}/snapshot (Modal's
// snapshot_filesystem). The answer is the new image's ImageInfo.
type SnapshotRequest struct {
	// Name names the new image (name[:tag]); without one it is known by its id alone, and an
	// unnamed image no sandbox uses is removed by the next prune.
	Name string `json:"name,omitempty"`
}
