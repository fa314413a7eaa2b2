package api

// PortTokenHeader carries a port's token (PortInfo.Token) on a request to
// /v1/sandboxes/{id}/ports/{port}/… or /v1/sandboxes/{id}/tunnels/{port}; browsers may pass
// it once as the query parameter PortTokenQuery instead, which sets a cookie (PortTokenCookie)
// scoped to that port's path. None of them, nor the Authorization header, nor any cookie whose
// name starts with "airlock_", reaches the program in the sandbox.
const (
	PortTokenHeader = "X-Airlock-Port-Token"
	PortTokenQuery  = "airlock_token"
	PortTokenCookie = "airlock_token"
)

// TunnelProtocol is the Upgrade token of a raw tunnel: GET /v1/sandboxes/{id}/tunnels/{port}
// with "Connection: Upgrade" and "Upgrade: airlock-tcp" answers 101 and then carries the TCP
// connection's bytes as they are, both ways. With "Upgrade: websocket" instead, each binary
// message carries bytes, for clients that can only speak WebSocket (browsers).
const TunnelProtocol = "airlock-tcp"

// PortInfo is a port a sandbox exposes, in the answers of create and get (only to the API key
// that owns the sandbox).
type PortInfo struct {
	Port            int    `json:"port"`                      // the port a program in the sandbox listens on (on any address, or 127.0.0.1)
	Token           string `json:"token,omitempty"`           // opens this port of this sandbox only, as the X-Airlock-Port-Token header or the airlock_token query parameter; absent for an unauthenticated port
	Unauthenticated bool   `json:"unauthenticated,omitempty"` // reachable without a key or token (the daemon allows public ports)
	Path            string `json:"path"`                      // the HTTP proxy's path on this daemon, /v1/sandboxes/{id}/ports/{port}/
}
