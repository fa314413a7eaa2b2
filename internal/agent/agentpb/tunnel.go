package agentpb

// TunnelPath is the prefix of the agent's one route outside Connect: POST TunnelPath+PORT
// opens a full-duplex byte stream to PORT on the sandbox's loopback (the agent serves it,
// agentclient.DialPort calls it; the protocol is written out in the agent's tunnel_linux.go).
// It lives here because both sides import this package and neither imports the other.
const TunnelPath = "/airlock.tunnel/v1/"
