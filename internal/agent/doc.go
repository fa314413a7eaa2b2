// Package agent is PID 1 inside every sandbox: the airlock binary itself, serving the agent
// protocol (Connect RPC, shaped after E2B's envd) on a socket inherited from the daemon.
//
// It starts processes as the unprivileged sandbox user, streams their output (capped per
// stream; past the cap output is drained, never blocking the writer), enforces per-process
// wall-clock timeouts on whole process groups, reaps every zombie in the PID namespace, and does
// file operations on a throwaway OS thread whose filesystem credentials are the sandbox user's,
// so the API can never touch what code in the sandbox could not.
//
// # Process wire sequence
//
//	daemon                                 agent
//	Process.Start(StartRequest) ─────────► fork+exec as uid 1000 in a new session
//	           ◄── StartResponse{start{pid}}
//	           ◄── StartResponse{data{stdout|stderr}} …  (≤ output_limit bytes per stream)
//	           ◄── StartResponse{end{exit_code, status, timed_out, *_truncated, duration_us}}
//
// Process.Connect re-attaches to a running process by pid or tag and receives the same events
// from that point; SendInput, StreamInput, CloseStdin and SendSignal act on it by selector.
//
// # Tunnel
//
// One route is not Connect: POST agentpb.TunnelPath+PORT connects to PORT on the sandbox's
// loopback and carries bytes both ways on that one HTTP/2 stream (request body in, response
// body out), so the daemon reaches ports with the network blocked; see tunnel_linux.go.
package agent
