package api

import _ "embed"

// OpenAPI is the OpenAPI 3.1 document of the HTTP API (generated from the server's routes and
// these types; a test keeps it current).
//
//go:embed openapi.json
var OpenAPI []byte
