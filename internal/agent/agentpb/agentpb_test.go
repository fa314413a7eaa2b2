package agentpb_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/airlockhq/airlock/internal/agent/agentpb"
	"github.com/airlockhq/airlock/internal/agent/agentpb/agentpbconnect"
)

func sampleStartRequest() *agentpb.StartRequest {
	return &agentpb.StartRequest{
		Process: &agentpb.ProcessConfig{
			Cmd:  "/bin/sh",
			Args: []string{"-c", "echo hi"},
			Envs: map[string]string{"A": "1", "B": "two"},
			Cwd:  proto.String("/tmp"),
		},
		Pty:            &agentpb.PTY{Size: &agentpb.PTY_Size{Cols: 80, Rows: 24}},
		Tag:            proto.String("job-1"),
		Stdin:          proto.Bool(false),
		TimeoutMs:      1500,
		OutputLimit:    1 << 20,
		KillTreeOnExit: true,
		StdinData:      []byte("input\x00\xff"),
		Uid:            1000,
		Gid:            1000,
		KeepStdinOpen:  true,
	}
}

func sampleEvents() []*agentpb.ProcessEvent {
	return []*agentpb.ProcessEvent{
		{Event: &agentpb.ProcessEvent_Start{Start: &agentpb.ProcessEvent_StartEvent{Pid: 42}}},
		{Event: &agentpb.ProcessEvent_Data{Data: &agentpb.ProcessEvent_DataEvent{
			Output: &agentpb.ProcessEvent_DataEvent_Stdout{Stdout: []byte("hi\n")},
		}}},
		{Event: &agentpb.ProcessEvent_Data{Data: &agentpb.ProcessEvent_DataEvent{
			Output: &agentpb.ProcessEvent_DataEvent_Stderr{Stderr: []byte{0xff, 0xfe}},
		}}},
		{Event: &agentpb.ProcessEvent_Keepalive{Keepalive: &agentpb.ProcessEvent_KeepAlive{}}},
		{Event: &agentpb.ProcessEvent_End{End: &agentpb.ProcessEvent_EndEvent{
			ExitCode:        -1,
			Exited:          false,
			Status:          "signal: killed",
			Error:           proto.String("deadline exceeded"),
			TimedOut:        true,
			StdoutTruncated: true,
			StderrTruncated: false,
			Signal:          9,
			DurationUs:      1_500_123,
		}}},
	}
}

func roundTrip(t *testing.T, msg proto.Message) {
	t.Helper()

	bin, err := proto.Marshal(msg)
	if err != nil {
		t.Fatalf("proto.Marshal: %v", err)
	}
	gotBin := msg.ProtoReflect().New().Interface()
	if err := proto.Unmarshal(bin, gotBin); err != nil {
		t.Fatalf("proto.Unmarshal: %v", err)
	}
	if !proto.Equal(msg, gotBin) {
		t.Fatalf("binary round trip mismatch:\nwant %v\ngot  %v", msg, gotBin)
	}

	js, err := protojson.Marshal(msg)
	if err != nil {
		t.Fatalf("protojson.Marshal: %v", err)
	}
	gotJS := msg.ProtoReflect().New().Interface()
	if err := protojson.Unmarshal(js, gotJS); err != nil {
		t.Fatalf("protojson.Unmarshal(%s): %v", js, err)
	}
	if !proto.Equal(msg, gotJS) {
		t.Fatalf("JSON round trip mismatch:\nwant %v\ngot  %v\njson %s", msg, gotJS, js)
	}
}

func TestRoundTrip(t *testing.T) {
	roundTrip(t, sampleStartRequest())
	for _, ev := range sampleEvents() {
		roundTrip(t, ev)
		roundTrip(t, &agentpb.StartResponse{Event: ev})
	}
}

func TestJSONNames(t *testing.T) {
	// E2B's SDKs speak the Connect JSON codec too, so the JSON names of the
	// envd fields matter as much as the numbers.
	js, err := protojson.Marshal(sampleStartRequest())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"process"`, `"cmd"`, `"envs"`, `"cwd"`, `"pty"`, `"cols"`, `"tag"`, `"stdin"`, `"timeoutMs"`, `"killTreeOnExit"`} {
		if !strings.Contains(string(js), want) {
			t.Errorf("StartRequest JSON lacks %s: %s", want, js)
		}
	}
}

// TestEnvdFieldNumbers pins the envd-compatible part of the schema: E2B
// clients depend on these names and numbers, so a change here is a wire
// break, not a refactor.
func TestEnvdFieldNumbers(t *testing.T) {
	fields := map[string]map[string]protoreflect.FieldNumber{
		"process.ProcessConfig":                {"cmd": 1, "args": 2, "envs": 3, "cwd": 4},
		"process.PTY.Size":                     {"cols": 1, "rows": 2},
		"process.ProcessInfo":                  {"config": 1, "pid": 2, "tag": 3},
		"process.StartRequest":                 {"process": 1, "pty": 2, "tag": 3, "stdin": 4, "timeout_ms": 100, "output_limit": 101, "kill_tree_on_exit": 102, "stdin_data": 103, "uid": 104, "gid": 105, "keep_stdin_open": 106},
		"process.ProcessEvent":                 {"start": 1, "data": 2, "end": 3, "keepalive": 4},
		"process.ProcessEvent.DataEvent":       {"stdout": 1, "stderr": 2, "pty": 3},
		"process.ProcessEvent.EndEvent":        {"exit_code": 1, "exited": 2, "status": 3, "error": 4, "timed_out": 100, "stdout_truncated": 101, "stderr_truncated": 102, "signal": 103, "duration_us": 104},
		"process.ProcessInput":                 {"stdin": 1, "pty": 2},
		"process.StreamInputRequest":           {"start": 1, "data": 2, "keepalive": 3},
		"process.StreamInputRequest.DataEvent": {"input": 2},
		"process.ProcessSelector":              {"pid": 1, "tag": 2},
		"process.SendSignalRequest":            {"process": 1, "signal": 2},
		"filesystem.EntryInfo":                 {"name": 1, "type": 2, "path": 3, "size": 4, "mode": 5, "permissions": 6, "owner": 7, "group": 8, "modified_time": 9, "symlink_target": 10, "uid": 100, "gid": 101},
		"filesystem.ListDirRequest":            {"path": 1, "depth": 2},
		"filesystem.WatchDirRequest":           {"path": 1, "recursive": 2, "include_entry": 3},
		"filesystem.FilesystemEvent":           {"name": 1, "type": 2, "entry": 3},
		"filesystem.WatchDirResponse":          {"start": 1, "filesystem": 2, "keepalive": 3},
		"filesystem.MoveRequest":               {"source": 1, "destination": 2},
	}
	for msgName, want := range fields {
		d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(msgName))
		if err != nil {
			t.Errorf("%s: %v", msgName, err)
			continue
		}
		md := d.(protoreflect.MessageDescriptor)
		if got := md.Fields().Len(); got != len(want) {
			t.Errorf("%s has %d fields, test pins %d", msgName, got, len(want))
		}
		for name, num := range want {
			fd := md.Fields().ByName(protoreflect.Name(name))
			if fd == nil {
				t.Errorf("%s.%s missing", msgName, name)
				continue
			}
			if fd.Number() != num {
				t.Errorf("%s.%s = %d, want %d", msgName, name, fd.Number(), num)
			}
		}
	}

	sig := agentpb.Signal_SIGNAL_SIGKILL.Descriptor().Values()
	for name, num := range map[string]protoreflect.EnumNumber{"SIGNAL_UNSPECIFIED": 0, "SIGNAL_SIGTERM": 15, "SIGNAL_SIGKILL": 9} {
		if v := sig.ByName(protoreflect.Name(name)); v == nil || v.Number() != num {
			t.Errorf("Signal %s: got %v, want %d", name, v, num)
		}
	}
}

type processSvc struct {
	agentpbconnect.UnimplementedProcessHandler
}
type filesystemSvc struct {
	agentpbconnect.UnimplementedFilesystemHandler
}
type agentSvc struct {
	agentpbconnect.UnimplementedAgentHandler
}
type replSvc struct {
	agentpbconnect.UnimplementedReplHandler
}

func TestHandlerPaths(t *testing.T) {
	for _, tc := range []struct {
		want string
		mk   func() (string, http.Handler)
	}{
		{"/process.Process/", func() (string, http.Handler) { return agentpbconnect.NewProcessHandler(processSvc{}) }},
		{"/filesystem.Filesystem/", func() (string, http.Handler) { return agentpbconnect.NewFilesystemHandler(filesystemSvc{}) }},
		{"/airlock.agent.v1.Agent/", func() (string, http.Handler) { return agentpbconnect.NewAgentHandler(agentSvc{}) }},
		{"/airlock.agent.v1.Repl/", func() (string, http.Handler) { return agentpbconnect.NewReplHandler(replSvc{}) }},
	} {
		path, h := tc.mk()
		if path != tc.want || h == nil {
			t.Errorf("handler path = %q (nil handler: %v), want %q", path, h == nil, tc.want)
		}
	}
	if agentpbconnect.ProcessStartProcedure != "/process.Process/Start" {
		t.Errorf("ProcessStartProcedure = %q", agentpbconnect.ProcessStartProcedure)
	}
}

// startSvc streams sampleEvents for any Start call.
type startSvc struct {
	agentpbconnect.UnimplementedProcessHandler
}

func (startSvc) Start(_ context.Context, req *connect.Request[agentpb.StartRequest], stream *connect.ServerStream[agentpb.StartResponse]) error {
	if !proto.Equal(req.Msg, sampleStartRequest()) {
		return connect.NewError(connect.CodeInvalidArgument, errors.New("unexpected request"))
	}
	for _, ev := range sampleEvents() {
		if err := stream.Send(&agentpb.StartResponse{Event: ev}); err != nil {
			return err
		}
	}
	return nil
}

// TestUnixSocketH2C exercises the real transport: Connect over HTTP/2
// cleartext on a unix socket, with a server stream and an unimplemented
// method.
func TestUnixSocketH2C(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}

	mux := http.NewServeMux()
	mux.Handle(agentpbconnect.NewProcessHandler(startSvc{}))
	mux.Handle(agentpbconnect.NewAgentHandler(agentSvc{}))
	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: mux, Protocols: protocols}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	hc := &http.Client{Transport: &http.Transport{
		Protocols: protocols,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	ctx := t.Context()

	for _, opt := range []struct {
		name string
		opts []connect.ClientOption
	}{
		{"connect-proto", nil},
		{"connect-json", []connect.ClientOption{connect.WithProtoJSON()}},
		{"grpc", []connect.ClientOption{connect.WithGRPC()}},
	} {
		t.Run(opt.name, func(t *testing.T) {
			pc := agentpbconnect.NewProcessClient(hc, "http://agent", opt.opts...)
			stream, err := pc.Start(ctx, connect.NewRequest(sampleStartRequest()))
			if err != nil {
				t.Fatal(err)
			}
			var got []*agentpb.ProcessEvent
			for stream.Receive() {
				got = append(got, stream.Msg().GetEvent())
			}
			if err := stream.Err(); err != nil {
				t.Fatal(err)
			}
			want := sampleEvents()
			if len(got) != len(want) {
				t.Fatalf("got %d events, want %d", len(got), len(want))
			}
			for i := range want {
				if !proto.Equal(got[i], want[i]) {
					t.Errorf("event %d: got %v, want %v", i, got[i], want[i])
				}
			}

			ac := agentpbconnect.NewAgentClient(hc, "http://agent", opt.opts...)
			_, err = ac.Health(ctx, connect.NewRequest(&agentpb.HealthRequest{}))
			if connect.CodeOf(err) != connect.CodeUnimplemented {
				t.Errorf("Health on unimplemented handler: err = %v, want unimplemented", err)
			}
		})
	}
}
