package api

// ExecutionHeader names the response header of POST /v1/execute that carries the run's
// execution id, under which GET /v1/executions lists it while it runs.
const ExecutionHeader = "X-Airlock-Execution"

// Execution is a one-shot run in flight.
type Execution struct {
	ID         string  `json:"id"`          // the run's id, as in the X-Airlock-Execution header of its answer
	Key        string  `json:"key"`         // the first 12 hex digits of the SHA-256 of the caller's API key; empty without keys
	Language   string  `json:"language"`    // the run's language (python, bash, c, cpp, go, javascript)
	AgeSeconds float64 `json:"age_seconds"` // seconds since the run's sandbox was created
	CPUSeconds float64 `json:"cpu_seconds"` // CPU time the run has used so far
	MemoryMB   float64 `json:"memory_mb"`   // MiB the run's sandbox holds now
}

// ExecutionList is the answer of GET /v1/executions.
type ExecutionList struct {
	Executions []Execution `json:"executions"` // the caller's runs in flight, oldest first
}
