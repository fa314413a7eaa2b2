package api

// The async batch queue (issue 17): POST /v1/batches, GET /v1/batches/{id},
// GET /v1/batches/{id}/results, DELETE /v1/batches/{id}.

// MaxQueuedBatch is the most snippets one async batch (POST /v1/batches) holds.
const MaxQueuedBatch = 10000

// Batch statuses (BatchStatus.Status).
const (
	BatchRunning  = "running"  // some snippets have no result yet
	BatchComplete = "complete" // every snippet has a result (or was canceled)
)

// CodeCanceled is the error code of a snippet's result when its batch was canceled before it
// started (DELETE /v1/batches/{id}); it appears only in a batch's results.
const CodeCanceled = "canceled"

// Webhook events (WebhookEvent.Type).
const (
	WebhookSnippet   = "snippet"    // one snippet completed
	WebhookBatchDone = "batch.done" // every snippet of the batch has a result
)

// Webhook headers: every delivery is signed and carries its idempotency id.
const (
	// WebhookSignatureHeader is "t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">", keyed
	// with the batch's webhook secret.
	WebhookSignatureHeader = "X-Airlock-Signature"
	// WebhookDeliveryHeader is "<batch id>/<index>" (or "<batch id>/done"): the same on every
	// retry of one event, so that a receiver can de-duplicate.
	WebhookDeliveryHeader = "X-Airlock-Delivery"
)

// SubmitBatchRequest is the body of POST /v1/batches: 1 to 10,000 snippets, queued and run as
// nodes have room, each exactly as POST /v1/execute runs it (same limits, same per-key bounds).
type SubmitBatchRequest struct {
	Snippets []ExecuteRequest `json:"snippets"`          // each run in its own fresh sandbox
	Webhook  *Webhook         `json:"webhook,omitempty"` // where each completion is POSTed; none by default
	// Retention is how long the batch and its results are kept from submission (a Go duration
	// such as "24h"; default 24h, at most 168h); past it the batch answers 404.
	Retention string `json:"retention,omitempty"`
}

// Webhook is where a batch's completions are POSTed, as WebhookEvent JSON.
type Webhook struct {
	// URL is an http or https URL. Loopback, private and link-local addresses are refused
	// unless the operator allows them (airlock serve --webhook-allow-private).
	URL string `json:"url"`
	// Secret keys the HMAC signature of every delivery (X-Airlock-Signature); when empty the
	// server makes one and returns it in the submission's answer (webhook_secret).
	Secret string `json:"secret,omitempty"`
}

// BatchCounts counts a batch's snippets by state.
type BatchCounts struct {
	Queued   int `json:"queued"`   // not started yet
	Running  int `json:"running"`  // started on a node, no result yet
	Done     int `json:"done"`     // ran to completion (whatever the exit status)
	Failed   int `json:"failed"`   // could not run: the result carries an error
	Canceled int `json:"canceled"` // canceled before they started (DELETE)
}

// BatchStatus is the answer of POST /v1/batches (202), GET /v1/batches/{id} and
// DELETE /v1/batches/{id}.
type BatchStatus struct {
	ID      string      `json:"id"`      // the batch's id
	Status  string      `json:"status"`  // running or complete
	Total   int         `json:"total"`   // snippets in the batch
	Counts  BatchCounts `json:"counts"`  // snippets by state
	Created string      `json:"created"` // RFC 3339, when it was submitted
	Expires string      `json:"expires"` // RFC 3339; past it the batch and its results are gone
	// WebhookSecret is the signing secret the server made, in the submission's answer only
	// (when the webhook named none).
	WebhookSecret string `json:"webhook_secret,omitempty"`
	// WebhooksDelivered counts the webhook events delivered so far.
	WebhooksDelivered int `json:"webhooks_delivered,omitempty"`
	// WebhooksFailed counts the webhook events given up on after their retries.
	WebhooksFailed int `json:"webhooks_failed,omitempty"`
	// Results are those of GET /v1/batches/{id}, in the batch's order, from index after+1 (the
	// query's after, default -1) for at most limit (default 100, at most 1000) indexes; an index
	// without a result yet is left out.
	Results []BatchItem `json:"results,omitempty"`
	// Next is the after of the next page; absent on the last.
	Next *int `json:"next,omitempty"`
}

// BatchItem is one snippet's result: its index in the batch and the one-shot's answer (or the
// error that kept it from running).
type BatchItem struct {
	Index  int         `json:"index"`  // the snippet's position in the submitted batch, from 0
	Node   string      `json:"node"`   // the node that ran it
	Result BatchResult `json:"result"` // the ExecuteResponse fields, or error
}

// WebhookEvent is the JSON body of one webhook delivery.
type WebhookEvent struct {
	Type  string     `json:"type"`           // snippet or batch.done
	Batch string     `json:"batch"`          // the batch's id
	Item  *BatchItem `json:"item,omitempty"` // the completed snippet (type snippet)
	// Counts are the batch's counts when it completed (type batch.done).
	Counts *BatchCounts `json:"counts,omitempty"`
}
