package modal

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/modal-labs/modal-client/go/proto/modal_proto"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/engine/fakeagent"
	"github.com/airlockhq/airlock/internal/image"
)

// The real engine over sandboxes whose agent is a fakeagent, and the real gRPC server on an
// h2c listener, driven by the generated clients of the same module.

type fakeRuntime struct{}

type fakeInstance struct {
	agent fakeagent.Agent
	done  chan struct{}
	once  sync.Once
}

func (fakeRuntime) Create(ctx context.Context, s engine.Spec) (engine.Instance, error) {
	return &fakeInstance{done: make(chan struct{})}, nil
}

func (i *fakeInstance) Agent() engine.Agent          { return &i.agent }
func (i *fakeInstance) Usage() (engine.Usage, error) { return engine.Usage{}, nil }
func (i *fakeInstance) Done() <-chan struct{}        { return i.done }
func (i *fakeInstance) Destroy(context.Context) error {
	i.once.Do(func() { close(i.done) })
	return nil
}

// pyID is the one image of the fake store, named "python:3.11".
var pyID = "sha256:" + strings.Repeat("ab", 32)

type fakeStore struct{}

func (fakeStore) Resolve(ref string) (*image.Image, error) {
	if ref == "python:3.11" || ref == pyID {
		return &image.Image{ID: pyID}, nil
	}
	return nil, api.Errorf(api.ErrNotFound, "image %q not found", ref)
}

// engineImages is the fake store as the engine sees it.
type engineImages struct{}

func (engineImages) Resolve(ctx context.Context, ref string) (engine.ImageRef, func(), error) {
	img, err := fakeStore{}.Resolve(ref)
	if err != nil {
		return engine.ImageRef{}, nil, err
	}
	return engine.ImageRef{ID: img.ID}, func() {}, nil
}

func (engineImages) Commit(context.Context, string, io.Reader, string) (engine.ImageRef, error) {
	return engine.ImageRef{}, errors.ErrUnsupported
}

const (
	key1 = "unit-key-0000000000000001"
	key2 = "unit-key-0000000000000002"
)

// harness is a served front end and clients for it.
type harness struct {
	addr string
	cp   pb.ModalClientClient
	conn *grpc.ClientConn
	e    *engine.Engine
	s    *Server
}

func newHarness(t *testing.T, opts ...func(*Config)) *harness {
	t.Helper()
	e, err := engine.New(engine.Config{Runtime: fakeRuntime{}, Images: engineImages{}})
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]string{key1: "owner1", key2: "owner2"}
	cfg := Config{Engine: e, Images: fakeStore{}, Authenticate: func(k string) (string, bool) {
		o, ok := keys[k]
		return o, ok
	}}
	for _, o := range opts {
		o(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	rest := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "rest") })
	hs := &http.Server{Handler: s.Handler(rest), Protocols: &protocols}
	served := make(chan struct{})
	go func() { hs.Serve(ln); close(served) }()
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		hs.Close()
		<-served
		s.Close()
		e.Close(context.Background())
	})
	return &harness{addr: ln.Addr().String(), cp: pb.NewModalClientClient(conn), conn: conn, e: e, s: s}
}

// as returns ctx carrying key as Modal's JS client sends it.
func as(ctx context.Context, key string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "x-modal-token-id", "any", "x-modal-token-secret", key,
		"x-modal-client-type", "8")
}

// routed returns a router client and ctx carrying the token of access.
func (h *harness) routed(ctx context.Context, jwt string) (pb.TaskCommandRouterClient, context.Context) {
	return pb.NewTaskCommandRouterClient(h.conn), metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+jwt)
}

// create makes an app and a V2 sandbox of the python image for key.
func (h *harness) create(t *testing.T, key string, def *pb.Sandbox) *pb.SandboxCreateV2Response {
	t.Helper()
	ctx := as(t.Context(), key)
	app, err := h.cp.AppGetOrCreate(ctx, pb.AppGetOrCreateRequest_builder{AppName: "a",
		ObjectCreationType: pb.ObjectCreationType_OBJECT_CREATION_TYPE_CREATE_IF_MISSING}.Build())
	if err != nil {
		t.Fatal(err)
	}
	if def == nil {
		def = pb.Sandbox_builder{TimeoutSecs: 60}.Build()
	}
	def.SetImageId(imageID(pyID))
	resp, err := h.cp.SandboxCreateV2(ctx, pb.SandboxCreateV2Request_builder{AppId: app.GetAppId(), Definition: def}.Build())
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// exec runs args in task through the router and returns stdout, stderr and the wait answer.
func exec(t *testing.T, rc pb.TaskCommandRouterClient, ctx context.Context, task, execID string, stdin string, args ...string) (string, string, *pb.TaskExecWaitResponse) {
	t.Helper()
	_, err := rc.TaskExecStart(ctx, pb.TaskExecStartRequest_builder{TaskId: task, ExecId: execID, CommandArgs: args,
		StdoutConfig: pb.TaskExecStdoutConfig_TASK_EXEC_STDOUT_CONFIG_PIPE}.Build())
	if err != nil {
		t.Fatalf("TaskExecStart %v: %v", args, err)
	}
	if stdin != "" {
		st, err := rc.TaskExecStdinWriteStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		st.Send(pb.TaskExecStdinWriteStreamRequest_builder{Start: pb.TaskExecStdinWriteStreamStart_builder{TaskId: task, ExecId: execID}.Build()}.Build())
		st.Send(pb.TaskExecStdinWriteStreamRequest_builder{Data: []byte(stdin)}.Build())
		st.Send(pb.TaskExecStdinWriteStreamRequest_builder{End: &pb.TaskExecStdinWriteStreamEnd{}}.Build())
		if _, err := st.CloseAndRecv(); err != nil {
			t.Fatalf("stdin stream: %v", err)
		}
	}
	w, err := rc.TaskExecWait(ctx, pb.TaskExecWaitRequest_builder{TaskId: task, ExecId: execID}.Build())
	if err != nil {
		t.Fatalf("TaskExecWait: %v", err)
	}
	read := func(fd pb.TaskExecStdioFileDescriptor) string {
		s, err := rc.TaskExecStdioRead(ctx, pb.TaskExecStdioReadRequest_builder{TaskId: task, ExecId: execID, FileDescriptor: fd}.Build())
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		for {
			m, err := s.Recv()
			if errors.Is(err, io.EOF) {
				return b.String()
			}
			if err != nil {
				t.Fatalf("TaskExecStdioRead: %v", err)
			}
			b.Write(m.GetData())
		}
	}
	return read(pb.TaskExecStdioFileDescriptor_TASK_EXEC_STDIO_FILE_DESCRIPTOR_STDOUT),
		read(pb.TaskExecStdioFileDescriptor_TASK_EXEC_STDIO_FILE_DESCRIPTOR_STDERR), w
}

func TestAuthentication(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := t.Context()
	tests := []struct {
		name string
		ctx  context.Context
		want codes.Code
	}{
		{"no credentials", ctx, codes.Unauthenticated},
		{"wrong key", as(ctx, "not-a-key-0000000000000"), codes.Unauthenticated},
		{"right key", as(ctx, key1), codes.OK},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := h.cp.AuthTokenGet(tc.ctx, &pb.AuthTokenGetRequest{})
			if got := code(err); got != tc.want {
				t.Fatalf("got %v (%v), want %v", got, err, tc.want)
			}
			if err != nil {
				return
			}
			// The JS client reads exp from the middle part with atob: standard base64.
			parts := strings.Split(resp.GetToken(), ".")
			if len(parts) != 3 {
				t.Fatalf("token %q is not three parts", resp.GetToken())
			}
			b, err := base64.RawStdEncoding.DecodeString(parts[1])
			var claims struct{ Exp int64 }
			if err != nil || json.Unmarshal(b, &claims) != nil || claims.Exp <= time.Now().Unix() {
				t.Fatalf("payload %q: want a future exp", b)
			}
		})
	}
	// A REST request on the same listener is not gRPC's.
	resp, err := http.Get("http://" + h.addr + "/v1/info")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "rest" {
		t.Errorf("HTTP/1 request: got %q, want the REST handler's answer", b)
	}
}

func TestUnimplementedNamesItself(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	_, err := h.cp.FunctionGet(as(t.Context(), key1), &pb.FunctionGetRequest{})
	if code(err) != codes.Unimplemented || !strings.Contains(err.Error(), "FunctionGet") {
		t.Errorf("got %v, want UNIMPLEMENTED naming FunctionGet", err)
	}
}

func TestImages(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := as(t.Context(), key1)
	build := func(cmds ...string) *pb.ImageGetOrCreateResponse {
		t.Helper()
		resp, err := h.cp.ImageGetOrCreate(ctx, pb.ImageGetOrCreateRequest_builder{
			Image: pb.Image_builder{DockerfileCommands: cmds}.Build()}.Build())
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	if r := build("FROM python:3.11"); r.GetImageId() != imageID(pyID) || r.GetResult().GetStatus() != pb.GenericResult_GENERIC_STATUS_SUCCESS {
		t.Errorf("FROM python:3.11: got %v, want %s and success", r, imageID(pyID))
	}
	r := build("FROM python:3.12")
	if r.GetResult().GetStatus() != pb.GenericResult_GENERIC_STATUS_FAILURE || !strings.Contains(r.GetResult().GetException(), "never substitutes") {
		t.Errorf("an image the store lacks: got %v, want a failure saying so", r)
	}
	r = build("FROM python:3.11", "USER nobody")
	if !strings.Contains(r.GetResult().GetException(), `"USER nobody" is not supported`) {
		t.Errorf("USER: got %v, want a failure naming the command", r)
	}
	if _, err := h.cp.ImageFromId(ctx, pb.ImageFromIdRequest_builder{ImageId: imageID(pyID)}.Build()); err != nil {
		t.Errorf("ImageFromId: %v", err)
	}
	_, err := h.cp.ImageFromId(ctx, pb.ImageFromIdRequest_builder{ImageId: "im-nope"}.Build())
	if code(err) != codes.NotFound || !strings.Contains(err.Error(), "Could not find image with ID") {
		t.Errorf("ImageFromId of an unknown id: got %v, want NOT_FOUND as Modal says it", err)
	}
}

func TestBuildSteps(t *testing.T) {
	t.Parallel()
	tests := []struct {
		cmd  string
		want string // the step as JSON, or the error's text
	}{
		{"RUN pip install x", `{"run_commands":["pip install x"]}`},
		{"ENV A=1 B=\"two\"", `{"env":{"A":"1","B":"two"}}`},
		{"ENV A one two", `{"env":{"A":"one two"}}`},
		{"WORKDIR /app", `{"workdir":"/app"}`},
		{"COPY . /app", "is not supported"},
	}
	for _, tc := range tests {
		t.Run(tc.cmd, func(t *testing.T) {
			steps, err := buildSteps([]string{tc.cmd})
			got := ""
			if err != nil {
				got = err.Error()
			} else {
				b, _ := json.Marshal(steps[0])
				got = string(b)
			}
			if !strings.Contains(got, tc.want) {
				t.Errorf("got %s, want %s", got, tc.want)
			}
		})
	}
}

func TestSandboxV2ExecAndWait(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	sb := h.create(t, key1, nil)
	ctx := as(t.Context(), key1)
	id := sb.GetSandboxId()
	if got := sb.GetCommandRouterAccess().GetUrl(); got != "https://"+h.addr {
		t.Errorf("router url: got %q, want https:// and the address the client dialled", got)
	}
	rc, rctx := h.routed(t.Context(), sb.GetCommandRouterAccess().GetJwt())

	out, _, w := exec(t, rc, rctx, id, "e1", "", "echo", "hi")
	if out != "hi\n" || !w.HasCode() || w.GetCode() != 0 {
		t.Errorf("echo: got %q, %v; want hi and code 0 set", out, w)
	}
	// A retried start with the same exec id runs nothing again.
	if _, err := rc.TaskExecStart(rctx, pb.TaskExecStartRequest_builder{TaskId: id, ExecId: "e1", CommandArgs: []string{"echo", "again"}}.Build()); err != nil {
		t.Fatal(err)
	}
	if out, _, _ := exec(t, rc, rctx, id, "e1", "", "echo", "again"); out != "hi\n" {
		t.Errorf("retried exec id: got %q, want the first run's output only", out)
	}
	if out, _, _ := exec(t, rc, rctx, id, "e2", "piped in", "cat"); out != "piped in" {
		t.Errorf("cat with stdin: got %q", out)
	}
	if _, _, w := exec(t, rc, rctx, id, "e3", "", "exit", "3"); w.GetCode() != 3 {
		t.Errorf("exit 3: got %v", w)
	}
	// Resent stdin at an offset already written is skipped, not written twice.
	if _, err := rc.TaskExecStart(rctx, pb.TaskExecStartRequest_builder{TaskId: id, ExecId: "e4", CommandArgs: []string{"cat"}}.Build()); err != nil {
		t.Fatal(err)
	}
	for _, w := range []struct {
		off  uint64
		data string
		eof  bool
	}{{0, "ab", false}, {0, "ab", false}, {2, "c", true}} {
		if _, err := rc.TaskExecStdinWrite(rctx, pb.TaskExecStdinWriteRequest_builder{TaskId: id, ExecId: "e4", Offset: w.off, Data: []byte(w.data), Eof: w.eof}.Build()); err != nil {
			t.Fatal(err)
		}
	}
	if out, _, _ := exec(t, rc, rctx, id, "e4", "", "cat"); out != "abc" {
		t.Errorf("stdin with a resent offset: got %q, want abc", out)
	}

	// Running: no result. Then terminated: TERMINATED.
	wr, err := h.cp.SandboxWaitV2(ctx, pb.SandboxWaitRequest_builder{SandboxId: id}.Build())
	if err != nil || wr.HasResult() {
		t.Fatalf("wait while running: got %v, %v; want no result", wr, err)
	}
	if _, err := h.cp.SandboxTerminateV2(ctx, pb.SandboxTerminateRequest_builder{SandboxId: id}.Build()); err != nil {
		t.Fatal(err)
	}
	wr, err = h.cp.SandboxWaitV2(ctx, pb.SandboxWaitRequest_builder{SandboxId: id, Timeout: 10}.Build())
	if err != nil || wr.GetResult().GetStatus() != pb.GenericResult_GENERIC_STATUS_TERMINATED {
		t.Errorf("wait after terminate: got %v, %v; want TERMINATED", wr, err)
	}
	_, err = rc.TaskExecStart(rctx, pb.TaskExecStartRequest_builder{TaskId: id, ExecId: "e5", CommandArgs: []string{"echo"}}.Build())
	if c := code(err); c != codes.FailedPrecondition {
		t.Errorf("exec after terminate: got %v, want FAILED_PRECONDITION (permanent, not retried)", err)
	}
}

func TestSandboxV1Family(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := as(t.Context(), key1)
	sec, err := h.cp.SecretGetOrCreate(ctx, pb.SecretGetOrCreateRequest_builder{
		ObjectCreationType: pb.ObjectCreationType_OBJECT_CREATION_TYPE_EPHEMERAL, EnvDict: map[string]string{"V": "1"}}.Build())
	if err != nil {
		t.Fatal(err)
	}
	resp, err := h.cp.SandboxCreate(ctx, pb.SandboxCreateRequest_builder{Definition: pb.Sandbox_builder{ImageId: imageID(pyID),
		TimeoutSecs: 60, SecretIds: []string{sec.GetSecretId()}}.Build()}.Build())
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetSandboxId()
	task, err := h.cp.SandboxGetTaskId(ctx, pb.SandboxGetTaskIdRequest_builder{SandboxId: id}.Build())
	if err != nil || !task.HasTaskId() {
		t.Fatalf("SandboxGetTaskId: %v, %v", task, err)
	}
	acc, err := h.cp.TaskGetCommandRouterAccess(ctx, pb.TaskGetCommandRouterAccessRequest_builder{TaskId: task.GetTaskId()}.Build())
	if err != nil {
		t.Fatal(err)
	}
	rc, rctx := h.routed(t.Context(), acc.GetJwt())
	if out, _, _ := exec(t, rc, rctx, task.GetTaskId(), "x", "", "echo", "v1"); out != "v1\n" {
		t.Errorf("exec: got %q", out)
	}
	info, err := h.e.GetSandbox(engine.WithOwner(t.Context(), "owner1"), id)
	if err != nil || info.Spec().Env["V"] != "1" {
		t.Errorf("the ephemeral secret's env: got %v, %v", info, err)
	}
	if _, err := h.cp.SandboxTerminate(ctx, pb.SandboxTerminateRequest_builder{SandboxId: id}.Build()); err != nil {
		t.Fatal(err)
	}
	task, err = h.cp.SandboxGetTaskId(ctx, pb.SandboxGetTaskIdRequest_builder{SandboxId: id}.Build())
	if err != nil || !task.HasTaskResult() {
		t.Errorf("SandboxGetTaskId after the end: got %v, %v; want a task result", task, err)
	}
}

func TestOwnership(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	a := h.create(t, key1, nil)
	b := h.create(t, key1, nil)
	other := as(t.Context(), key2)
	for _, call := range []struct {
		name string
		err  error
	}{
		{"wait", func() error {
			_, err := h.cp.SandboxWaitV2(other, pb.SandboxWaitRequest_builder{SandboxId: a.GetSandboxId()}.Build())
			return err
		}()},
		{"terminate", func() error {
			_, err := h.cp.SandboxTerminateV2(other, pb.SandboxTerminateRequest_builder{SandboxId: a.GetSandboxId()}.Build())
			return err
		}()},
		{"router access", func() error {
			_, err := h.cp.SandboxGetCommandRouterAccess(other, pb.SandboxGetCommandRouterAccessRequest_builder{SandboxId: proto.String(a.GetSandboxId())}.Build())
			return err
		}()},
	} {
		if code(call.err) != codes.NotFound {
			t.Errorf("%s of another key's sandbox: got %v, want NOT_FOUND", call.name, call.err)
		}
	}
	list, err := h.cp.SandboxListV2(other, &pb.SandboxListRequest{})
	if err != nil || len(list.GetSandboxes()) != 0 {
		t.Errorf("another key's list: got %v, %v; want none", list, err)
	}
	// a's router token does not reach b.
	rc, rctx := h.routed(t.Context(), a.GetCommandRouterAccess().GetJwt())
	_, err = rc.TaskExecStart(rctx, pb.TaskExecStartRequest_builder{TaskId: b.GetSandboxId(), ExecId: "x", CommandArgs: []string{"echo"}}.Build())
	if code(err) != codes.PermissionDenied {
		t.Errorf("a's token on b: got %v, want PERMISSION_DENIED", err)
	}
	// A forged token is refused.
	tok := a.GetCommandRouterAccess().GetJwt()
	rc, rctx = h.routed(t.Context(), tok[:len(tok)-4]+"AAAA")
	_, err = rc.TaskExecStart(rctx, pb.TaskExecStartRequest_builder{TaskId: a.GetSandboxId(), ExecId: "x", CommandArgs: []string{"echo"}}.Build())
	if code(err) != codes.Unauthenticated {
		t.Errorf("a forged token: got %v, want UNAUTHENTICATED", err)
	}
}

func TestSpecRefusals(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := as(t.Context(), key1)
	tests := []struct {
		name string
		def  *pb.Sandbox
		want string
	}{
		{"gpu", pb.Sandbox_builder{Resources: pb.Resources_builder{GpuConfig: pb.GPUConfig_builder{Count: 1, GpuType: "A10G"}.Build()}.Build()}.Build(), "no GPUs"},
		{"volume", pb.Sandbox_builder{VolumeMounts: []*pb.VolumeMount{{}}}.Build(), "volumes"},
		{"memory", pb.Sandbox_builder{Resources: pb.Resources_builder{MemoryMb: 1 << 30}.Build()}.Build(), "memory"},
		{"named secret", pb.Sandbox_builder{SecretIds: []string{"st-name-db"}}.Build(), "named secrets are not available"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.def.SetImageId(imageID(pyID))
			_, err := h.cp.SandboxCreateV2(ctx, pb.SandboxCreateV2Request_builder{Definition: tc.def}.Build())
			if c := code(err); (c != codes.InvalidArgument && c != codes.FailedPrecondition) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want INVALID_ARGUMENT or FAILED_PRECONDITION containing %q", err, tc.want)
			}
		})
	}
}

func TestListByTags(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.create(t, key1, nil) // untagged
	ctx := as(t.Context(), key1)
	// Tags come with the create request, not the definition.
	app, _ := h.cp.AppGetOrCreate(ctx, pb.AppGetOrCreateRequest_builder{AppName: "a", ObjectCreationType: 1}.Build())
	withTag, err := h.cp.SandboxCreateV2(ctx, pb.SandboxCreateV2Request_builder{AppId: app.GetAppId(),
		Definition: pb.Sandbox_builder{ImageId: imageID(pyID), TimeoutSecs: 60}.Build(),
		Tags:       []*pb.SandboxTag{pb.SandboxTag_builder{TagName: "k", TagValue: "v"}.Build()}}.Build())
	if err != nil {
		t.Fatal(err)
	}
	page := func(before float64, tags ...*pb.SandboxTag) []*pb.SandboxInfo {
		t.Helper()
		r, err := h.cp.SandboxListV2(ctx, pb.SandboxListRequest_builder{BeforeTimestamp: before, Tags: tags}.Build())
		if err != nil {
			t.Fatal(err)
		}
		return r.GetSandboxes()
	}
	got := page(0, pb.SandboxTag_builder{TagName: "k", TagValue: "v"}.Build())
	if len(got) != 1 || got[0].GetId() != withTag.GetSandboxId() {
		t.Errorf("list by tag: got %v, want only %s", got, withTag.GetSandboxId())
	}
	// Paging as the client does, until an empty page, visits each once.
	seen, before := 0, 0.0
	for {
		p := page(before)
		if len(p) == 0 {
			break
		}
		seen += len(p)
		before = p[len(p)-1].GetCreatedAt()
	}
	if seen != 2 {
		t.Errorf("paging: saw %d sandboxes, want 2", seen)
	}
}

func TestFilesystemConvention(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	sb := h.create(t, key1, nil)
	id := sb.GetSandboxId()
	rc, rctx := h.routed(t.Context(), sb.GetCommandRouterAccess().GetJwt())
	n := 0
	fsExec := func(op, stdin string) (string, string, int32) {
		t.Helper()
		n++
		out, errOut, w := exec(t, rc, rctx, id, "fs"+string(rune('a'+n)), stdin, fsTool, op)
		return out, errOut, w.GetCode()
	}
	if _, e, c := fsExec(`{"WriteFile":{"path":"/tmp/d/f.txt"}}`, "content"); c != 0 {
		t.Fatalf("WriteFile: exit %d, %s", c, e)
	}
	if out, _, c := fsExec(`{"ReadFile":{"path":"/tmp/d/f.txt"}}`, ""); out != "content" || c != 0 {
		t.Errorf("ReadFile: got %q exit %d", out, c)
	}
	out, _, _ := fsExec(`{"Stat":{"path":"/tmp/d/f.txt"}}`, "")
	var fi fileInfo
	if json.Unmarshal([]byte(out), &fi) != nil || fi.Type != "file" || fi.Size != 7 || fi.Name != "f.txt" {
		t.Errorf("Stat: got %s", out)
	}
	out, _, _ = fsExec(`{"ListFiles":{"path":"/tmp/d"}}`, "")
	var list []fileInfo
	if json.Unmarshal([]byte(out), &list) != nil || len(list) != 1 || list[0].Name != "f.txt" {
		t.Errorf("ListFiles: got %s", out)
	}
	_, e, c := fsExec(`{"ReadFile":{"path":"/tmp/none"}}`, "")
	var fe fsError
	if c == 0 || json.Unmarshal([]byte(e), &fe) != nil || fe.Kind != "NotFound" || fe.Message == "" {
		t.Errorf("ReadFile of a missing file: exit %d, stderr %s; want NotFound", c, e)
	}
	if _, e, c := fsExec(`{"ReadFile":{"path":"/tmp/d"}}`, ""); c == 0 || !strings.Contains(e, "IsDirectory") {
		t.Errorf("ReadFile of a directory: exit %d, %s", c, e)
	}
	if _, e, c := fsExec(`{"MakeDirectory":{"path":"/tmp/d","parents":false}}`, ""); c == 0 || !strings.Contains(e, "PathAlreadyExists") {
		t.Errorf("MakeDirectory of an existing path without parents: exit %d, %s", c, e)
	}
	if _, e, c := fsExec(`{"Remove":{"path":"/tmp/d","recursive":true}}`, ""); c != 0 {
		t.Errorf("Remove: exit %d, %s", c, e)
	}
	if _, e, c := fsExec(`{"Watch":{"path":"/tmp"}}`, ""); c == 0 || !strings.Contains(e, "NotSupported") {
		t.Errorf("Watch: exit %d, %s", c, e)
	}
}

func TestGRPCError(t *testing.T) {
	t.Parallel()
	tests := []struct {
		err  error
		want codes.Code
	}{
		{api.Errorf(api.ErrInvalidArgument, "x"), codes.InvalidArgument},
		{api.Errorf(api.ErrNotFound, "x"), codes.NotFound},
		{api.Errorf(api.ErrGone, "x"), codes.FailedPrecondition},
		{api.Errorf(api.ErrResourceExhausted, "x"), codes.ResourceExhausted},
		{api.Errorf(api.ErrUnimplemented, "x"), codes.Unimplemented},
		{errors.New("secret internal detail"), codes.Internal},
		{status.Error(codes.PermissionDenied, "p"), codes.PermissionDenied},
	}
	for _, tc := range tests {
		got := grpcError(tc.err)
		if code(got) != tc.want {
			t.Errorf("%v: got %v, want %v", tc.err, code(got), tc.want)
		}
		if strings.Contains(got.Error(), "secret internal detail") {
			t.Errorf("internal text leaked: %v", got)
		}
	}
}

func TestEntrypoint(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	sb := h.create(t, key1, pb.Sandbox_builder{TimeoutSecs: 60, EntrypointArgs: []string{"cat"}}.Build())
	id := sb.GetSandboxId()
	rc, rctx := h.routed(t.Context(), sb.GetCommandRouterAccess().GetJwt())
	out, err := rc.SandboxStdioReadV2(rctx, pb.SandboxStdioReadV2Request_builder{TaskId: id}.Build())
	if err != nil {
		t.Fatal(err)
	}
	write := func(off uint64, data string, eof bool) {
		t.Helper()
		if _, err := rc.SandboxStdinWriteV2(rctx, pb.SandboxStdinWriteV2Request_builder{TaskId: id, Offset: off, Data: []byte(data), Eof: eof}.Build()); err != nil {
			t.Fatal(err)
		}
	}
	write(0, "entry", false)
	if m, err := out.Recv(); err != nil || string(m.GetData()) != "entry" {
		t.Fatalf("entrypoint stdout: got %v, %v", m, err)
	}
	write(5, "", true)
	// The sandbox ends with its entrypoint, and says how it ended.
	wr, err := h.cp.SandboxWaitV2(as(t.Context(), key1), pb.SandboxWaitRequest_builder{SandboxId: id, Timeout: 10}.Build())
	if err != nil || wr.GetResult().GetStatus() != pb.GenericResult_GENERIC_STATUS_SUCCESS || wr.GetResult().GetExitcode() != 0 {
		t.Errorf("wait: got %v, %v; want SUCCESS with exit code 0", wr, err)
	}
}

func TestRequestsPerKey(t *testing.T) {
	t.Parallel()
	h := newHarness(t, func(c *Config) { c.MaxRequestsPerKey = 1 })
	sb := h.create(t, key1, nil)
	ctx := as(t.Context(), key1)
	// One long poll holds the key's only slot…
	held := make(chan error, 1)
	wctx, cancel := context.WithCancel(ctx)
	go func() {
		_, err := h.cp.SandboxWaitV2(wctx, pb.SandboxWaitRequest_builder{SandboxId: sb.GetSandboxId(), Timeout: 30}.Build())
		held <- err
	}()
	for {
		h.s.inflightMu.Lock()
		n := h.s.inflight["owner1"]
		h.s.inflightMu.Unlock()
		if n == 1 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	// …so the next call of that key is refused, and another key's is not.
	_, err := h.cp.SandboxListV2(ctx, &pb.SandboxListRequest{})
	if code(err) != codes.ResourceExhausted {
		t.Errorf("a second call in flight: got %v, want RESOURCE_EXHAUSTED", err)
	}
	if _, err := h.cp.SandboxListV2(as(t.Context(), key2), &pb.SandboxListRequest{}); err != nil {
		t.Errorf("another key: %v", err)
	}
	cancel()
	<-held
}

func TestExecsForgottenOldestFirst(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	sb := h.create(t, key1, nil)
	id := sb.GetSandboxId()
	rc, rctx := h.routed(t.Context(), sb.GetCommandRouterAccess().GetJwt())
	for i := range maxExecs + 1 {
		exec(t, rc, rctx, id, fmt.Sprint("x", i), "", "echo", fmt.Sprint(i))
	}
	_, err := rc.TaskExecPoll(rctx, pb.TaskExecPollRequest_builder{TaskId: id, ExecId: "x0"}.Build())
	if code(err) != codes.NotFound {
		t.Errorf("the oldest of %d finished execs: got %v, want NOT_FOUND (forgotten)", maxExecs+1, err)
	}
	last := fmt.Sprint("x", maxExecs)
	if out, _, _ := exec(t, rc, rctx, id, last, "", "echo"); out != fmt.Sprint(maxExecs)+"\n" {
		t.Errorf("the newest: got %q", out)
	}
}

func TestEntrypointV1Stdio(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := as(t.Context(), key1)
	resp, err := h.cp.SandboxCreate(ctx, pb.SandboxCreateRequest_builder{Definition: pb.Sandbox_builder{ImageId: imageID(pyID),
		TimeoutSecs: 60, EntrypointArgs: []string{"cat"}}.Build()}.Build())
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetSandboxId()
	logs, err := h.cp.SandboxGetLogs(ctx, pb.SandboxGetLogsRequest_builder{SandboxId: id,
		FileDescriptor: pb.FileDescriptor_FILE_DESCRIPTOR_STDOUT, Timeout: 55, LastEntryId: "0-0"}.Build())
	if err != nil {
		t.Fatal(err)
	}
	write := func(i uint32, in string, eof bool) {
		t.Helper()
		if _, err := h.cp.SandboxStdinWrite(ctx, pb.SandboxStdinWriteRequest_builder{SandboxId: id, Index: i, Input: []byte(in), Eof: eof}.Build()); err != nil {
			t.Fatal(err)
		}
	}
	// Index 1 twice (a retry), then 2 with eof: "ab" once. The first batch is read before
	// the eof ends the entrypoint (and the sandbox), so the stream is surely open.
	write(1, "a", false)
	write(1, "a", false)
	var got strings.Builder
	first, err := logs.Recv()
	if err != nil || len(first.GetItems()) != 1 {
		t.Fatalf("first batch: %v, %v", first, err)
	}
	got.WriteString(first.GetItems()[0].GetData())
	write(2, "b", true)
	for {
		b, err := logs.Recv()
		if err != nil {
			t.Fatalf("logs: %v after %q", err, got.String())
		}
		for _, it := range b.GetItems() {
			got.WriteString(it.GetData())
		}
		if b.GetEof() {
			break
		}
	}
	if got.String() != "ab" {
		t.Errorf("entrypoint stdout through SandboxGetLogs: got %q, want ab", got.String())
	}
}

func TestSandboxNames(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := as(t.Context(), key1)
	named := func() *pb.Sandbox {
		return pb.Sandbox_builder{TimeoutSecs: 60, Name: proto.String("worker")}.Build()
	}
	sb := h.create(t, key1, named())
	got, err := h.cp.SandboxGetFromNameV2(ctx, pb.SandboxGetFromNameRequest_builder{SandboxName: "worker", AppName: "a"}.Build())
	if err != nil || got.GetSandboxId() != sb.GetSandboxId() {
		t.Fatalf("fromName: got %v, %v; want %s", got, err, sb.GetSandboxId())
	}
	def := named()
	def.SetImageId(imageID(pyID))
	app, _ := h.cp.AppGetOrCreate(ctx, pb.AppGetOrCreateRequest_builder{AppName: "a"}.Build())
	_, err = h.cp.SandboxCreateV2(ctx, pb.SandboxCreateV2Request_builder{AppId: app.GetAppId(), Definition: def}.Build())
	if code(err) != codes.AlreadyExists {
		t.Errorf("a second sandbox of that name: got %v, want ALREADY_EXISTS", err)
	}
	// Another key sees no such name.
	if _, err := h.cp.SandboxGetFromNameV2(as(t.Context(), key2), pb.SandboxGetFromNameRequest_builder{SandboxName: "worker", AppName: "a"}.Build()); code(err) != codes.NotFound {
		t.Errorf("another key's fromName: got %v, want NOT_FOUND", err)
	}
}

func TestPanicIsInternal(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	handler := func(ctx context.Context, req any) (any, error) { panic("a bug") }
	ctx := metadata.NewIncomingContext(t.Context(), metadata.Pairs("x-modal-token-secret", key1))
	_, err := h.s.unaryAuth(ctx, nil, &grpc.UnaryServerInfo{FullMethod: "/modal.client.ModalClient/X"}, handler)
	if code(err) != codes.Internal || strings.Contains(err.Error(), "a bug") {
		t.Errorf("a panicking handler: got %v, want INTERNAL without its text", err)
	}
}

// TestHoldCreateRefusal: a sandbox create the key's quotas refuse (Config.HoldCreate, the REST
// API's live-sandbox and CPU quotas) is RESOURCE_EXHAUSTED, and nothing is created.
func TestHoldCreateRefusal(t *testing.T) {
	h := newHarness(t, func(c *Config) {
		c.HoldCreate = func(ctx context.Context, owner string, session bool) (func(), error) {
			if owner != "owner1" || session {
				return nil, fmt.Errorf("hold for %q (session %v)", owner, session)
			}
			return nil, api.Errorf(api.ErrResourceExhausted, "this API key has 1 live sandboxes, its limit; end some first")
		}
	})
	ctx := as(t.Context(), key1)
	app, err := h.cp.AppGetOrCreate(ctx, pb.AppGetOrCreateRequest_builder{AppName: "a",
		ObjectCreationType: pb.ObjectCreationType_OBJECT_CREATION_TYPE_CREATE_IF_MISSING}.Build())
	if err != nil {
		t.Fatal(err)
	}
	def := pb.Sandbox_builder{TimeoutSecs: 60}.Build()
	def.SetImageId(imageID(pyID))
	_, err = h.cp.SandboxCreateV2(ctx, pb.SandboxCreateV2Request_builder{AppId: app.GetAppId(), Definition: def}.Build())
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "limit") {
		t.Fatalf("create past the key's quota: %v, want RESOURCE_EXHAUSTED naming the limit", err)
	}
	if n := len(h.e.ListSandboxes(engine.WithOwner(t.Context(), "owner1"))); n != 0 {
		t.Errorf("%d sandboxes made past the quota, want 0", n)
	}
}
