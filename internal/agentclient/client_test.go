package agentclient

import (
	"context"
	"errors"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/airlockhq/airlock/api"
	pb "github.com/airlockhq/airlock/internal/agent/agentpb"
	"github.com/airlockhq/airlock/internal/agent/agentpb/agentpbconnect"
)

// fakeAgent serves the protocol as a script says: Stat fails with the code named by its path,
// Start sends a start, one chunk of each stream and an end, ReplRun answers a fixed cell.
type fakeAgent struct {
	agentpbconnect.UnimplementedProcessHandler
	agentpbconnect.UnimplementedFilesystemHandler
}

// fakeRepl is fakeAgent's REPL service (its Start would clash with the process service's).
type fakeRepl struct {
	agentpbconnect.UnimplementedReplHandler
}

func (fakeAgent) Stat(ctx context.Context, req *connect.Request[pb.StatRequest]) (*connect.Response[pb.StatResponse], error) {
	var c connect.Code
	if err := c.UnmarshalText([]byte(strings.TrimPrefix(req.Msg.GetPath(), "/"))); err != nil {
		return connect.NewResponse(&pb.StatResponse{Entry: &pb.EntryInfo{Name: "f", Path: req.Msg.GetPath(), Size: 3}}), nil
	}
	return nil, connect.NewError(c, errors.New("the agent says no"))
}

func (fakeAgent) Start(ctx context.Context, req *connect.Request[pb.StartRequest], s *connect.ServerStream[pb.StartResponse]) error {
	if req.Msg.GetProcess().GetCmd() != "run" {
		return connect.NewError(connect.CodeInvalidArgument, errors.New("no such command"))
	}
	for _, ev := range []*pb.ProcessEvent{
		{Event: &pb.ProcessEvent_Start{Start: &pb.ProcessEvent_StartEvent{Pid: 7}}},
		{Event: &pb.ProcessEvent_Data{Data: &pb.ProcessEvent_DataEvent{Output: &pb.ProcessEvent_DataEvent_Stdout{Stdout: []byte("out")}}}},
		{Event: &pb.ProcessEvent_Data{Data: &pb.ProcessEvent_DataEvent{Output: &pb.ProcessEvent_DataEvent_Stderr{Stderr: []byte("err")}}}},
		{Event: &pb.ProcessEvent_End{End: &pb.ProcessEvent_EndEvent{ExitCode: 3, Exited: true, DurationUs: 1500, StdoutTruncated: true}}},
	} {
		if err := s.Send(&pb.StartResponse{Event: ev}); err != nil {
			return err
		}
	}
	return nil
}

func (fakeRepl) Run(ctx context.Context, req *connect.Request[pb.ReplRunRequest]) (*connect.Response[pb.ReplRunResponse], error) {
	return connect.NewResponse(&pb.ReplRunResponse{Stdout: []byte(req.Msg.GetCode()), HasResult: true, Result: "2",
		Display: []*pb.Display{{Mime: "text/plain", Data: []byte("2")}}, ExecutionTimeUs: 10}), nil
}

// newTestClient serves fakeAgent over HTTP and returns a client that reaches it.
func newTestClient(t *testing.T) *Client {
	t.Helper()
	mux := http.NewServeMux()
	for _, h := range []func() (string, http.Handler){
		func() (string, http.Handler) { return agentpbconnect.NewProcessHandler(fakeAgent{}) },
		func() (string, http.Handler) { return agentpbconnect.NewFilesystemHandler(fakeAgent{}) },
		func() (string, http.Handler) { return agentpbconnect.NewReplHandler(fakeRepl{}) },
	} {
		mux.Handle(h())
	}
	ts := httptest.NewServer(mux)
	t.Cleanup(ts.Close)
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", ts.Listener.Addr().String())
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return New(&http.Client{Transport: tr})
}

// TestErrorsAreAPISentinels: every refusal of the agent reaches the engine as an api error,
// with the agent's message; the engine never sees a connect code.
func TestErrorsAreAPISentinels(t *testing.T) {
	t.Parallel()
	c := newTestClient(t)
	cases := []struct {
		code connect.Code
		want error
	}{
		{connect.CodeNotFound, api.ErrNotFound},
		{connect.CodeInvalidArgument, api.ErrInvalidArgument},
		{connect.CodeFailedPrecondition, api.ErrInvalidArgument},
		{connect.CodePermissionDenied, api.ErrInvalidArgument},
		{connect.CodeAlreadyExists, api.ErrConflict},
		{connect.CodeResourceExhausted, api.ErrTooLarge},
		{connect.CodeUnavailable, api.ErrResourceExhausted},
		{connect.CodeUnimplemented, api.ErrUnimplemented},
		{connect.CodeDeadlineExceeded, api.ErrTimeout},
	}
	for _, tc := range cases {
		t.Run(tc.code.String(), func(t *testing.T) {
			t.Parallel()
			_, err := c.Stat(t.Context(), "/"+tc.code.String())
			if !errors.Is(err, tc.want) || err.Error() != "the agent says no" {
				t.Fatalf("got %v (%T), want %v with the agent's message", err, err, tc.want)
			}
		})
	}
	// Paths that never reach the agent's own answer keep their errors: the engine needs to
	// tell a broken connection (then it waits to learn whether the sandbox died) from a refusal.
	t.Run("internal stays internal", func(t *testing.T) {
		t.Parallel()
		_, err := c.Stat(t.Context(), "/internal")
		if err == nil || api.CodeOf(err) != api.CodeInternal {
			t.Fatalf("got %v (code %s), want an error that is no api sentinel", err, api.CodeOf(err))
		}
	})
	t.Run("exec", func(t *testing.T) {
		t.Parallel()
		_, err := c.Exec(t.Context(), Process{Cmd: "nope"}, func(Event) {})
		if !errors.Is(err, api.ErrInvalidArgument) {
			t.Fatalf("got %v, want invalid_argument", err)
		}
	})
	t.Run("unimplemented rpc", func(t *testing.T) {
		t.Parallel()
		if err := c.Signal(t.Context(), 1, 9); !errors.Is(err, api.ErrUnimplemented) {
			t.Fatalf("got %v, want unimplemented", err)
		}
	})
}

func TestExecEvents(t *testing.T) {
	t.Parallel()
	c := newTestClient(t)
	var got []Event
	end, err := c.Exec(t.Context(), Process{Cmd: "run", Stdin: []byte("in")}, func(ev Event) { got = append(got, ev) })
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].Pid != 7 || string(got[1].Stdout) != "out" || string(got[2].Stderr) != "err" {
		t.Fatalf("events: got %+v, want start 7, stdout, stderr", got)
	}
	want := End{ExitCode: 3, Exited: true, Duration: 1500 * time.Microsecond, StdoutTruncated: true}
	if *end != want {
		t.Fatalf("end: got %+v, want %+v", *end, want)
	}
}

// countingBudget records what an answer reserved and settled.
type countingBudget struct{ reserved, settled int64 }

func (b *countingBudget) Reserve(ctx context.Context, n int64) error { b.reserved += n; return nil }
func (b *countingBudget) Settle(n int64)                             { b.settled = n }

func TestReplRunChargesTheBudget(t *testing.T) {
	t.Parallel()
	c := newTestClient(t)
	var b countingBudget
	cell, err := c.ReplRun(WithAnswerBudget(t.Context(), &b), "1+1", time.Second, 100)
	if err != nil {
		t.Fatal(err)
	}
	if string(cell.Stdout) != "1+1" || cell.Result == nil || *cell.Result != "2" || len(cell.Display) != 1 ||
		cell.Display[0].MIME != "text/plain" || cell.ExecutionTime != 10*time.Microsecond {
		t.Fatalf("cell: got %+v", cell)
	}
	if b.reserved != MaxMessage || b.settled <= 0 || b.settled > 1024 {
		t.Fatalf("budget: reserved %d, settled %d; want %d reserved, the answer's small size settled", b.reserved, b.settled, MaxMessage)
	}
}

func TestMillis(t *testing.T) {
	t.Parallel()
	cases := []struct {
		d    time.Duration
		want uint32
	}{
		{0, 0}, {-time.Second, 0}, {time.Nanosecond, 1}, {time.Millisecond, 1},
		{1500 * time.Microsecond, 2}, {time.Second, 1000}, {math.MaxInt64, math.MaxUint32},
	}
	for _, c := range cases {
		if got := Millis(c.d); got != c.want {
			t.Errorf("Millis(%v): got %d, want %d", c.d, got, c.want)
		}
	}
}
