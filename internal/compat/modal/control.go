package modal

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	pb "github.com/modal-labs/modal-client/go/proto/modal_proto"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/engine"
	"github.com/airlockhq/airlock/internal/netpolicy"
)

// control serves modal.client.ModalClient: apps, images, secrets and the sandboxes' control
// plane, on both RPC families (V1 and V2, which share their messages). Every RPC not written
// here answers UNIMPLEMENTED naming itself (the generated Unimplemented server).
type control struct {
	pb.UnimplementedModalClientServer
	s *Server
}

var _ pb.ModalClientServer = (*control)(nil)

var errNoGPU = api.Errorf(api.ErrInvalidArgument, "this Airlock daemon has no GPUs: leave gpu unset")

func (c *control) AuthTokenGet(ctx context.Context, _ *pb.AuthTokenGetRequest) (*pb.AuthTokenGetResponse, error) {
	return pb.AuthTokenGetResponse_builder{Token: authToken(time.Now())}.Build(), nil
}

func (c *control) EnvironmentGetOrCreate(ctx context.Context, req *pb.EnvironmentGetOrCreateRequest) (*pb.EnvironmentGetOrCreateResponse, error) {
	name := req.GetDeploymentName()
	if name == "" {
		name = "main"
	}
	return pb.EnvironmentGetOrCreateResponse_builder{EnvironmentId: "en-airlock",
		Metadata: pb.EnvironmentMetadata_builder{Name: name,
			Settings: pb.EnvironmentSettings_builder{ImageBuilderVersion: "2025.06"}.Build()}.Build()}.Build(), nil
}

func (c *control) AppGetOrCreate(ctx context.Context, req *pb.AppGetOrCreateRequest) (*pb.AppGetOrCreateResponse, error) {
	name := req.GetAppName()
	if name == "" || len(name) > 64 {
		return nil, errorf(codes.InvalidArgument, "app name must be 1…64 characters")
	}
	key := engine.Owner(ctx) + "\x00" + req.GetEnvironmentName() + "\x00" + name
	st := c.s.state
	st.mu.Lock()
	defer st.mu.Unlock()
	id, ok := st.apps[key]
	if !ok {
		if req.GetObjectCreationType() == pb.ObjectCreationType_OBJECT_CREATION_TYPE_UNSPECIFIED {
			return nil, errorf(codes.NotFound, "App '%s' not found", name)
		}
		if len(st.apps) >= maxRemembered {
			return nil, errorf(codes.ResourceExhausted, "too many apps")
		}
		id = newObjectID("ap-")
		st.apps[key] = id
	}
	return pb.AppGetOrCreateResponse_builder{AppId: id}.Build(), nil
}

// SecretGetOrCreate makes ephemeral secrets (secrets.fromObject, and env on V1 creates);
// named secrets go through Config.Secrets.
func (c *control) SecretGetOrCreate(ctx context.Context, req *pb.SecretGetOrCreateRequest) (*pb.SecretGetOrCreateResponse, error) {
	owner := engine.Owner(ctx)
	if req.GetObjectCreationType() != pb.ObjectCreationType_OBJECT_CREATION_TYPE_EPHEMERAL {
		if _, err := c.s.namedSecret(ctx, req.GetDeploymentName()); err != nil {
			return nil, err
		}
		// A named secret is looked up again by name at each use, so a change reaches the
		// next sandbox.
		return pb.SecretGetOrCreateResponse_builder{SecretId: "st-name-" + req.GetDeploymentName()}.Build(), nil
	}
	env := maps.Clone(req.GetEnvDict())
	st := c.s.state
	st.mu.Lock()
	defer st.mu.Unlock()
	if len(st.secrets) >= maxRemembered {
		evictOldest(st.secrets, func(s secret) time.Time { return s.at })
	}
	id := newObjectID("st-")
	st.secrets[id] = secret{owner: owner, env: env, at: time.Now()}
	return pb.SecretGetOrCreateResponse_builder{SecretId: id}.Build(), nil
}

// namedSecret is the variables of the named secret of ctx's owner.
func (s *Server) namedSecret(ctx context.Context, name string) (map[string]string, error) {
	if s.cfg.Secrets == nil {
		return nil, errorf(codes.FailedPrecondition, "named secrets are not available on this Airlock daemon yet: pass variables with env or secrets.fromObject")
	}
	return s.cfg.Secrets(ctx, engine.Owner(ctx), name)
}

// secretEnv adds the variables of secret ids and secret sources to env, later ones winning.
func (s *Server) secretEnv(ctx context.Context, ids []string, sources []*pb.SecretSource, env map[string]string) error {
	add := func(id string) error {
		if name, ok := strings.CutPrefix(id, "st-name-"); ok {
			vars, err := s.namedSecret(ctx, name)
			if err != nil {
				return err
			}
			maps.Copy(env, vars)
			return nil
		}
		st := s.state
		st.mu.Lock()
		sec, ok := st.secrets[id]
		st.mu.Unlock()
		if !ok || sec.owner != engine.Owner(ctx) {
			return errorf(codes.NotFound, "secret %s not found", id)
		}
		maps.Copy(env, sec.env)
		return nil
	}
	for _, id := range ids {
		if err := add(id); err != nil {
			return err
		}
	}
	for _, src := range sources {
		switch {
		case src.HasEnv():
			maps.Copy(env, src.GetEnv().GetContents())
		case src.HasSecretId():
			if err := add(src.GetSecretId()); err != nil {
				return err
			}
		}
	}
	return nil
}

// spec maps a Modal sandbox definition onto Airlock's; what Airlock cannot give is refused,
// never silently dropped.
func (s *Server) spec(ctx context.Context, def *pb.Sandbox, tags []*pb.SandboxTag, sources []*pb.SecretSource) (engine.SandboxSpec, error) {
	var sp engine.SandboxSpec
	if def == nil {
		return sp, errorf(codes.InvalidArgument, "definition is required")
	}
	ref, err := storeRef(def.GetImageId())
	if err != nil {
		return sp, err
	}
	sp.Image = ref
	sp.Timeout = time.Duration(def.GetTimeoutSecs()) * time.Second
	if def.HasIdleTimeoutSecs() {
		sp.IdleTimeout = time.Duration(def.GetIdleTimeoutSecs()) * time.Second
	}
	sp.Workdir = def.GetWorkdir()
	if sp.Workdir == "" && s.cfg.Images != nil {
		// Docker's rule, which Modal's images follow: the image's WORKDIR is the default.
		if img, err := s.cfg.Images.Resolve(ref); err == nil {
			sp.Workdir = img.Config.WorkingDir
		}
	}
	if r := def.GetResources(); r != nil {
		if g := r.GetGpuConfig(); g != nil && (g.GetCount() > 0 || g.GetGpuType() != "" || g.GetType() != 0) {
			return sp, errNoGPU
		}
		// Airlock has one bound for each, a limit: the limit if given, else the request.
		if m := max(r.GetMemoryMbMax(), r.GetMemoryMb()); m > 0 {
			sp.MemoryBytes = int64(m) << 20
		}
		if m := max(r.GetMilliCpuMax(), r.GetMilliCpu()); m > 0 {
			sp.CPU = float64(m) / 1000
		}
	}
	sp.Network, err = network(def)
	if err != nil {
		return sp, err
	}
	for _, p := range def.GetOpenPorts().GetPorts() {
		sp.Ports = append(sp.Ports, engine.Port{Port: int(p.GetPort())})
	}
	switch {
	case len(def.GetVolumeMounts()) > 0, len(def.GetCloudBucketMounts()) > 0, len(def.GetNfsMounts()) > 0, len(def.GetS3Mounts()) > 0:
		return sp, errorf(codes.InvalidArgument, "volumes and bucket mounts are not supported by Airlock's Modal API")
	case def.HasPtyInfo():
		return sp, errorf(codes.InvalidArgument, "pty sandboxes are not supported by Airlock's Modal API")
	case def.HasReadinessProbe():
		return sp, errorf(codes.InvalidArgument, "readiness probes are not supported by Airlock's Modal API")
	case def.HasProxyId():
		return sp, errorf(codes.InvalidArgument, "proxies are not supported by Airlock's Modal API")
	case len(def.GetInboundCidrAllowlist()) > 0:
		return sp, errorf(codes.InvalidArgument, "inboundCidrAllowlist is not supported by Airlock's Modal API")
	}
	env := map[string]string{}
	maps.Copy(env, def.GetEnvironmentVariables().GetContents())
	if err := s.secretEnv(ctx, def.GetSecretIds(), sources, env); err != nil {
		return sp, err
	}
	if len(env) > 0 {
		sp.Env = env
	}
	if len(tags) > 0 {
		sp.Tags = map[string]string{}
		for _, t := range tags {
			sp.Tags[t.GetTagName()] = t.GetTagValue()
		}
	}
	return sp, nil
}

// network maps Modal's network access onto Airlock's policy; an unset one is the daemon's
// default (as for an Airlock request naming none).
func network(def *pb.Sandbox) (netpolicy.Policy, error) {
	na := def.GetNetworkAccess()
	if def.GetBlockNetwork() {
		return netpolicy.Policy{Mode: netpolicy.Block}, nil
	}
	switch na.GetNetworkAccessType() {
	case pb.NetworkAccess_BLOCKED:
		return netpolicy.Policy{Mode: netpolicy.Block}, nil
	case pb.NetworkAccess_OPEN:
		return netpolicy.Policy{Mode: netpolicy.Internet}, nil
	case pb.NetworkAccess_ALLOWLIST:
		allow := slices.Concat(na.GetAllowedCidrs(), na.GetAllowedDomains())
		if len(allow) == 0 {
			// Modal's empty allowlist: no egress.
			return netpolicy.Policy{Mode: netpolicy.Block}, nil
		}
		return netpolicy.Policy{Mode: netpolicy.Allowlist, Allow: allow}, nil
	}
	return netpolicy.Policy{}, nil
}

// create makes a sandbox from a Modal definition: the engine's create funnel, its limits and
// its checks; then the entrypoint, if the definition has one.
func (s *Server) create(ctx context.Context, appID string, def *pb.Sandbox, tags []*pb.SandboxTag, sources []*pb.SecretSource) (*box, error) {
	sp, err := s.spec(ctx, def, tags, sources)
	if err != nil {
		return nil, err
	}
	owner := engine.Owner(ctx)
	nameKey := ""
	if def.HasName() {
		nameKey = owner + "\x00" + appID + "\x00" + def.GetName()
		st := s.state
		st.mu.Lock()
		_, taken := st.names[nameKey]
		st.mu.Unlock()
		if taken {
			return nil, errorf(codes.AlreadyExists, "a sandbox named %q is running in this app already", def.GetName())
		}
	}
	if s.cfg.HoldCreate != nil {
		release, err := s.cfg.HoldCreate(ctx, engine.Owner(ctx), false)
		if err != nil {
			return nil, err
		}
		defer release()
	}
	sb, err := s.cfg.Engine.CreateSandbox(ctx, sp)
	if err != nil {
		return nil, err
	}
	b := s.track(sb, owner, appID)
	if nameKey != "" {
		st := s.state
		st.mu.Lock()
		if _, taken := st.names[nameKey]; taken {
			st.mu.Unlock()
			s.cfg.Engine.TerminateSandbox(ctx, sb.ID())
			return nil, errorf(codes.AlreadyExists, "a sandbox named %q is running in this app already", def.GetName())
		}
		if _, live := st.boxes[b.id]; live {
			// (Else it ended already, and forget has run: no name to keep.)
			st.names[nameKey] = sb.ID()
			b.nameKey = nameKey
		}
		st.mu.Unlock()
	}
	if args := def.GetEntrypointArgs(); len(args) > 0 {
		x := newExecution(&b.retained)
		b.mu.Lock()
		b.entry = x
		b.mu.Unlock()
		s.start(x, func() {
			s.runProcess(b, x, engine.ExecSpec{Cmd: args})
			// Modal's sandbox ends with its entrypoint; a server closing ends neither.
			if s.ctx.Err() == nil {
				s.cfg.Engine.TerminateSandbox(b.ctx, b.id)
			}
		})
	}
	return b, nil
}

func (c *control) SandboxCreateV2(ctx context.Context, req *pb.SandboxCreateV2Request) (*pb.SandboxCreateV2Response, error) {
	b, err := c.s.create(ctx, req.GetAppId(), req.GetDefinition(), req.GetTags(), req.GetSecretSources())
	if err != nil {
		return nil, err
	}
	return pb.SandboxCreateV2Response_builder{SandboxId: b.id, TaskId: b.id,
		CommandRouterAccess: c.s.routerAccess(ctx, b.id)}.Build(), nil
}

func (c *control) SandboxCreate(ctx context.Context, req *pb.SandboxCreateRequest) (*pb.SandboxCreateResponse, error) {
	b, err := c.s.create(ctx, req.GetAppId(), req.GetDefinition(), req.GetTags(), nil)
	if err != nil {
		return nil, err
	}
	return pb.SandboxCreateResponse_builder{SandboxId: b.id}.Build(), nil
}

// routerAccess is the router's URL and a token for sandbox id. The router is this same
// listener: the JS client needs an https:// URL and dials it without TLS when the control
// plane is localhost or 127.0.0.1; Python clients take http:// as plaintext.
func (s *Server) routerAccess(ctx context.Context, id string) *pb.CommandRouterAccess {
	host, _ := ctx.Value(hostKey{}).(string)
	if _, _, err := net.SplitHostPort(host); err != nil {
		host = net.JoinHostPort(host, "443")
	}
	scheme := "https://"
	if callerOf(ctx).client == "1" {
		scheme = "http://"
	}
	tok := s.sign(routerClaims{Sandbox: id, Owner: engine.Owner(ctx), Exp: time.Now().Add(routerTokenLife).Unix()})
	return pb.CommandRouterAccess_builder{Url: scheme + host, Jwt: tok}.Build()
}

func (c *control) getTaskID(ctx context.Context, req *pb.SandboxGetTaskIdRequest) (*pb.SandboxGetTaskIdResponse, error) {
	id := req.GetSandboxId()
	if _, err := c.s.box(ctx, id); err != nil {
		if r, ok := c.s.ended(ctx, id, err); ok {
			return pb.SandboxGetTaskIdResponse_builder{TaskResult: r}.Build(), nil
		}
		return nil, err
	}
	return pb.SandboxGetTaskIdResponse_builder{TaskId: &id}.Build(), nil
}

func (c *control) SandboxGetTaskId(ctx context.Context, req *pb.SandboxGetTaskIdRequest) (*pb.SandboxGetTaskIdResponse, error) {
	return c.getTaskID(ctx, req)
}

func (c *control) SandboxGetTaskIdV2(ctx context.Context, req *pb.SandboxGetTaskIdRequest) (*pb.SandboxGetTaskIdResponse, error) {
	return c.getTaskID(ctx, req)
}

// access is a live sandbox's router access.
func (c *control) access(ctx context.Context, id string) (*pb.CommandRouterAccess, error) {
	if _, err := c.s.box(ctx, id); err != nil {
		return nil, err
	}
	return c.s.routerAccess(ctx, id), nil
}

func (c *control) SandboxGetCommandRouterAccess(ctx context.Context, req *pb.SandboxGetCommandRouterAccessRequest) (*pb.SandboxGetCommandRouterAccessResponse, error) {
	a, err := c.access(ctx, req.GetSandboxId())
	if err != nil {
		return nil, err
	}
	return pb.SandboxGetCommandRouterAccessResponse_builder{Url: a.GetUrl(), Jwt: a.GetJwt()}.Build(), nil
}

func (c *control) TaskGetCommandRouterAccess(ctx context.Context, req *pb.TaskGetCommandRouterAccessRequest) (*pb.TaskGetCommandRouterAccessResponse, error) {
	a, err := c.access(ctx, req.GetTaskId())
	if err != nil {
		return nil, err
	}
	return pb.TaskGetCommandRouterAccessResponse_builder{Url: a.GetUrl(), Jwt: a.GetJwt()}.Build(), nil
}

// endResult is how b's ended sandbox ended: its entrypoint's exit, or why Airlock ended it.
func endResult(b *box) waitResult {
	reason := b.sb.Info().Ended
	b.mu.Lock()
	entry := b.entry
	b.mu.Unlock()
	if entry != nil {
		if code, sig, done := entry.exit(); done && reason == "terminated" {
			st := int32(pb.GenericResult_GENERIC_STATUS_SUCCESS)
			if code != 0 || sig != 0 {
				st = int32(pb.GenericResult_GENERIC_STATUS_FAILURE)
			}
			if sig != 0 {
				code = 128 + sig
			}
			return waitResult{status: st, exitcode: code, reason: "its command exited"}
		}
	}
	switch reason {
	case "expired":
		return waitResult{status: int32(pb.GenericResult_GENERIC_STATUS_TIMEOUT), exitcode: 124, reason: "its timeout passed"}
	case "idle":
		return waitResult{status: int32(pb.GenericResult_GENERIC_STATUS_IDLE_TIMEOUT), exitcode: 124, reason: "it was idle past its idle timeout"}
	case "terminated":
		return waitResult{status: int32(pb.GenericResult_GENERIC_STATUS_TERMINATED), exitcode: 137, reason: "it was terminated"}
	}
	return waitResult{status: int32(pb.GenericResult_GENERIC_STATUS_FAILURE), exitcode: 137, reason: "it died (" + reason + ")"}
}

// ended is the result of a sandbox of ctx's owner that has ended (err being the engine's
// answer for it): remembered if Modal tracked it, else "terminated" for a sandbox the engine
// knows as gone. ok is false for a sandbox that never was.
func (s *Server) ended(ctx context.Context, id string, err error) (*pb.GenericResult, bool) {
	r, ok := s.state.endedResult(engine.Owner(ctx), id)
	if !ok {
		if !errors.Is(err, api.ErrGone) {
			return nil, false
		}
		r = waitResult{status: int32(pb.GenericResult_GENERIC_STATUS_TERMINATED), exitcode: 137, reason: "it ended"}
	}
	return pb.GenericResult_builder{Status: pb.GenericResult_GenericStatus(r.status), Exitcode: r.exitcode,
		Exception: "the sandbox has ended: " + r.reason}.Build(), true
}

// wait waits up to timeout for the sandbox to end; no result while it runs.
func (c *control) wait(ctx context.Context, req *pb.SandboxWaitRequest) (*pb.SandboxWaitResponse, error) {
	id := req.GetSandboxId()
	b, err := c.s.box(ctx, id)
	if err == nil {
		d := time.Duration(min(max(req.GetTimeout(), 0), 55) * float32(time.Second))
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-b.sb.Done():
		case <-t.C:
			return &pb.SandboxWaitResponse{}, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-c.s.ctx.Done():
			return nil, errorf(codes.Unavailable, "the daemon is shutting down")
		}
		// The tracker records the end right after Done; until then the engine says gone.
		waitForget(ctx, c.s.state, id)
		_, err = c.s.cfg.Engine.GetSandbox(ctx, id)
	}
	if r, ok := c.s.ended(ctx, id, err); ok {
		return pb.SandboxWaitResponse_builder{Result: r}.Build(), nil
	}
	return nil, err
}

// waitForget waits briefly for the tracker to record a sandbox's end.
func waitForget(ctx context.Context, st *state, id string) {
	for range 100 {
		st.mu.Lock()
		_, tracked := st.boxes[id]
		st.mu.Unlock()
		if !tracked {
			return
		}
		select {
		case <-time.After(5 * time.Millisecond):
		case <-ctx.Done():
			return
		}
	}
}

func (c *control) SandboxWait(ctx context.Context, req *pb.SandboxWaitRequest) (*pb.SandboxWaitResponse, error) {
	return c.wait(ctx, req)
}

func (c *control) SandboxWaitV2(ctx context.Context, req *pb.SandboxWaitRequest) (*pb.SandboxWaitResponse, error) {
	return c.wait(ctx, req)
}

func (c *control) terminate(ctx context.Context, req *pb.SandboxTerminateRequest) (*pb.SandboxTerminateResponse, error) {
	id := req.GetSandboxId()
	_, err := c.s.cfg.Engine.TerminateSandbox(ctx, id)
	if r, ok := c.s.ended(ctx, id, err); err != nil && ok {
		return pb.SandboxTerminateResponse_builder{ExistingResult: r}.Build(), nil
	}
	return &pb.SandboxTerminateResponse{}, err
}

func (c *control) SandboxTerminate(ctx context.Context, req *pb.SandboxTerminateRequest) (*pb.SandboxTerminateResponse, error) {
	return c.terminate(ctx, req)
}

func (c *control) SandboxTerminateV2(ctx context.Context, req *pb.SandboxTerminateRequest) (*pb.SandboxTerminateResponse, error) {
	return c.terminate(ctx, req)
}

// list answers one page: the owner's live sandboxes created before before_timestamp (0: no
// bound), newest first, matching the app and every tag asked for.
func (c *control) list(ctx context.Context, req *pb.SandboxListRequest) (*pb.SandboxListResponse, error) {
	want := map[string]string{}
	for _, t := range req.GetTags() {
		want[t.GetTagName()] = t.GetTagValue()
	}
	before := req.GetBeforeTimestamp()
	var out []*pb.SandboxInfo
	for _, sb := range slices.Backward(c.s.cfg.Engine.ListSandboxes(ctx)) {
		info := sb.Info()
		created := float64(info.Created.UnixNano()) / 1e9
		if before > 0 && created >= before {
			continue
		}
		if !matches(info.Spec.Tags, want) {
			continue
		}
		appID := ""
		c.s.state.mu.Lock()
		if b, ok := c.s.state.boxes[sb.ID()]; ok {
			appID = b.appID
		}
		c.s.state.mu.Unlock()
		if req.GetAppId() != "" && appID != req.GetAppId() {
			continue
		}
		var tags []*pb.SandboxTag
		for k, v := range info.Spec.Tags {
			tags = append(tags, pb.SandboxTag_builder{TagName: k, TagValue: v}.Build())
		}
		out = append(out, pb.SandboxInfo_builder{Id: sb.ID(), CreatedAt: created, AppId: appID, Tags: tags,
			ImageId: imageID(info.Spec.ImageID), TimeoutSecs: uint32(info.Spec.Timeout.Seconds())}.Build())
		if len(out) == 100 {
			break
		}
	}
	return pb.SandboxListResponse_builder{Sandboxes: out}.Build(), nil
}

func matches(have, want map[string]string) bool {
	for k, v := range want {
		if hv, ok := have[k]; !ok || hv != v {
			return false
		}
	}
	return true
}

func (c *control) SandboxList(ctx context.Context, req *pb.SandboxListRequest) (*pb.SandboxListResponse, error) {
	return c.list(ctx, req)
}

func (c *control) SandboxListV2(ctx context.Context, req *pb.SandboxListRequest) (*pb.SandboxListResponse, error) {
	return c.list(ctx, req)
}

func (c *control) getFromName(ctx context.Context, req *pb.SandboxGetFromNameRequest) (*pb.SandboxGetFromNameResponse, error) {
	st := c.s.state
	st.mu.Lock()
	var id string
	for key, sid := range st.names {
		owner, rest, _ := strings.Cut(key, "\x00")
		_, name, _ := strings.Cut(rest, "\x00")
		if owner == engine.Owner(ctx) && name == req.GetSandboxName() {
			if b, ok := st.boxes[sid]; ok && c.appNamed(ctx, b.appID, req.GetAppName(), req.GetEnvironmentName()) {
				id = sid
			}
		}
	}
	st.mu.Unlock()
	if id == "" {
		return nil, errorf(codes.NotFound, "Sandbox with name '%s' not found in app '%s'", req.GetSandboxName(), req.GetAppName())
	}
	return pb.SandboxGetFromNameResponse_builder{SandboxId: id}.Build(), nil
}

// appNamed reports whether app id is the app called name. state.mu must be held.
func (c *control) appNamed(ctx context.Context, id, name, env string) bool {
	return c.s.state.apps[engine.Owner(ctx)+"\x00"+env+"\x00"+name] == id
}

func (c *control) SandboxGetFromName(ctx context.Context, req *pb.SandboxGetFromNameRequest) (*pb.SandboxGetFromNameResponse, error) {
	return c.getFromName(ctx, req)
}

func (c *control) SandboxGetFromNameV2(ctx context.Context, req *pb.SandboxGetFromNameRequest) (*pb.SandboxGetFromNameResponse, error) {
	return c.getFromName(ctx, req)
}

// tunnels answers for encryptedPorts. Modal's tunnels are TLS endpoints of their own
// (https://host:port to the port's root), which a plaintext listener cannot give; Airlock's
// port proxy reaches the same ports by path and token, so the refusal names those URLs.
func (c *control) tunnels(ctx context.Context, req *pb.SandboxGetTunnelsRequest) (*pb.SandboxGetTunnelsResponse, error) {
	b, err := c.s.box(ctx, req.GetSandboxId())
	if err != nil {
		return nil, err
	}
	ports := b.sb.Spec().Ports
	if len(ports) == 0 {
		return pb.SandboxGetTunnelsResponse_builder{Result: success()}.Build(), nil
	}
	host, _ := ctx.Value(hostKey{}).(string)
	urls := make([]string, 0, len(ports))
	for _, p := range ports {
		urls = append(urls, fmt.Sprintf("http://%s/v1/sandboxes/%s/ports/%d/?%s=%s", host, b.id, p.Port, api.PortTokenQuery, p.Token))
	}
	return nil, errorf(codes.FailedPrecondition, "Airlock serves no Modal TLS tunnels; the sandbox's ports are on Airlock's port proxy: %s", strings.Join(urls, " "))
}

func (c *control) SandboxGetTunnels(ctx context.Context, req *pb.SandboxGetTunnelsRequest) (*pb.SandboxGetTunnelsResponse, error) {
	return c.tunnels(ctx, req)
}

func (c *control) SandboxGetTunnelsV2(ctx context.Context, req *pb.SandboxGetTunnelsRequest) (*pb.SandboxGetTunnelsResponse, error) {
	return c.tunnels(ctx, req)
}

// SandboxGetLogs streams a V1 sandbox's entrypoint output as one batch per chunk; its entry
// ids are byte offsets.
func (c *control) SandboxGetLogs(req *pb.SandboxGetLogsRequest, ss grpc.ServerStreamingServer[pb.TaskLogsBatch]) error {
	ctx := ss.Context()
	b, err := c.s.box(ctx, req.GetSandboxId())
	if err != nil {
		return err
	}
	b.mu.Lock()
	x := b.entry
	b.mu.Unlock()
	if x == nil {
		return ss.Send(pb.TaskLogsBatch_builder{Eof: true}.Build())
	}
	fd := 0
	if req.GetFileDescriptor() == pb.FileDescriptor_FILE_DESCRIPTOR_STDERR {
		fd = 1
	}
	var offset uint64
	if id := req.GetLastEntryId(); id != "" && id != "0-0" {
		n, err := strconv.ParseUint(id, 10, 64)
		if err != nil {
			return errorf(codes.InvalidArgument, "last_entry_id %q is not one of ours", id)
		}
		offset = n
	}
	err = x.read(ctx, fd, offset, func(p []byte) error {
		offset += uint64(len(p))
		item := pb.TaskLogs_builder{Data: string(p), FileDescriptor: req.GetFileDescriptor()}.Build()
		return ss.Send(pb.TaskLogsBatch_builder{Items: []*pb.TaskLogs{item}, EntryId: strconv.FormatUint(offset, 10)}.Build())
	})
	if err != nil {
		return err
	}
	return ss.Send(pb.TaskLogsBatch_builder{Eof: true, EntryId: strconv.FormatUint(offset, 10)}.Build())
}

func (c *control) SandboxStdinWrite(ctx context.Context, req *pb.SandboxStdinWriteRequest) (*pb.SandboxStdinWriteResponse, error) {
	b, err := c.s.box(ctx, req.GetSandboxId())
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	x := b.entry
	b.mu.Unlock()
	if x == nil {
		return nil, errorf(codes.FailedPrecondition, "sandbox %s has no entrypoint command to take stdin", b.id)
	}
	// V1 stdin is indexed by write (from 1), not by byte: a write at an index already taken
	// is a retry, and is skipped.
	select {
	case <-x.ready:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	x.stdinMu.Lock()
	defer x.stdinMu.Unlock()
	if req.GetIndex() != 0 && req.GetIndex() <= x.stdinIndex {
		return &pb.SandboxStdinWriteResponse{}, nil
	}
	n, _ := x.stdinStatus()
	if err := x.writeStdinLocked(ctx, n, req.GetInput(), req.GetEof()); err != nil {
		return nil, err
	}
	x.stdinIndex = req.GetIndex()
	return &pb.SandboxStdinWriteResponse{}, nil
}

// statusMessage is the message of a gRPC status error.
func statusMessage(err error) (string, bool) {
	if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
		return st.Message(), true
	}
	return "", false
}
