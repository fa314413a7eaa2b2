package modal

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	pb "github.com/modal-labs/modal-client/go/proto/modal_proto"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/image"
)

// Modal image ids are "im-" and the hex of an image's id in Airlock's store (sha256:…), so an
// id names the same image for as long as the store keeps it, across daemon restarts.
const imagePrefix = "im-"

func imageID(storeID string) string { return imagePrefix + strings.TrimPrefix(storeID, "sha256:") }

// storeRef is the store id a Modal image id names.
func storeRef(id string) (string, error) {
	hex, ok := strings.CutPrefix(id, imagePrefix)
	if !ok || len(hex) != 64 || strings.Trim(hex, "0123456789abcdef") != "" {
		return "", errorf(codes.NotFound, "Could not find image with ID %s", id)
	}
	return "sha256:" + hex, nil
}

// resolveImage finds a registry reference or store id in the image store.
func (s *Server) resolveImage(ref string) (*image.Image, error) {
	if s.cfg.Images == nil {
		return nil, api.Errorf(api.ErrUnimplemented, "this daemon has no image store")
	}
	img, err := s.cfg.Images.Resolve(ref)
	if errors.Is(err, api.ErrNotFound) {
		return nil, api.Errorf(api.ErrNotFound, "image %q is not in the daemon's image store: its operator pulls or tags it under that name first (airlock image pull %s, or airlock image tag SRC %s); Airlock never substitutes another image", ref, ref, ref)
	}
	return img, err
}

func (c *control) ImageFromId(ctx context.Context, req *pb.ImageFromIdRequest) (*pb.ImageFromIdResponse, error) {
	ref, err := storeRef(req.GetImageId())
	if err != nil {
		return nil, err
	}
	img, err := c.s.resolveImage(ref)
	if errors.Is(err, api.ErrNotFound) {
		return nil, errorf(codes.NotFound, "Could not find image with ID %s", req.GetImageId())
	}
	if err != nil {
		return nil, err
	}
	return pb.ImageFromIdResponse_builder{ImageId: imageID(img.ID)}.Build(), nil
}

// ImageGetOrCreate makes one layer of a Modal image: "FROM <ref>" (a registry reference the
// store must hold) or "FROM base" (the previous layer), then Dockerfile commands, which
// Airlock's spec builder runs where they map (RUN, ENV, WORKDIR). The answer carries the
// result, so the client never joins a build stream.
func (c *control) ImageGetOrCreate(ctx context.Context, req *pb.ImageGetOrCreateRequest) (*pb.ImageGetOrCreateResponse, error) {
	if id := req.GetExistingImageId(); id != "" {
		out, err := c.ImageFromId(ctx, pb.ImageFromIdRequest_builder{ImageId: id}.Build())
		if err != nil {
			return nil, err
		}
		return pb.ImageGetOrCreateResponse_builder{ImageId: out.GetImageId(), Result: success()}.Build(), nil
	}
	id, err := c.s.buildImage(ctx, req.GetImage())
	if err != nil {
		d := api.PublicDetail(err)
		if st, ok := statusMessage(err); ok {
			d.Message = st
		}
		// A failed build is a result, which the SDK raises with its message.
		return pb.ImageGetOrCreateResponse_builder{Result: pb.GenericResult_builder{
			Status: pb.GenericResult_GENERIC_STATUS_FAILURE, Exception: d.Message}.Build()}.Build(), nil
	}
	return pb.ImageGetOrCreateResponse_builder{ImageId: imageID(id), Result: success()}.Build(), nil
}

func success() *pb.GenericResult {
	return pb.GenericResult_builder{Status: pb.GenericResult_GENERIC_STATUS_SUCCESS}.Build()
}

// buildImage returns the store id of the image im describes, building its commands.
func (s *Server) buildImage(ctx context.Context, im *pb.Image) (string, error) {
	if im.HasGpuConfig() && (im.GetGpuConfig().GetCount() > 0 || im.GetGpuConfig().GetGpuType() != "") {
		return "", errNoGPU
	}
	if len(im.GetSecretIds()) > 0 {
		return "", api.Errorf(api.ErrInvalidArgument, "image build secrets are not supported by Airlock's Modal API")
	}
	if len(im.GetContextFiles()) > 0 || im.GetContextMountId() != "" {
		return "", api.Errorf(api.ErrInvalidArgument, "images with local files (COPY, addLocalFile) are not supported by Airlock's Modal API")
	}
	cmds := im.GetDockerfileCommands()
	if len(cmds) == 0 {
		return "", api.Errorf(api.ErrInvalidArgument, "an image needs a FROM command")
	}
	verb, from, _ := strings.Cut(strings.TrimSpace(cmds[0]), " ")
	from = strings.TrimSpace(from)
	if !strings.EqualFold(verb, "FROM") || from == "" {
		return "", api.Errorf(api.ErrInvalidArgument, "an image's first command must be FROM, not %q", cmds[0])
	}
	base := ""
	for _, b := range im.GetBaseImages() {
		if b.GetDockerTag() == from {
			ref, err := storeRef(b.GetImageId())
			if err != nil {
				return "", api.Errorf(api.ErrNotFound, "base image %s is unknown", b.GetImageId())
			}
			base = ref
		}
	}
	if base == "" {
		base = from
	}
	img, err := s.resolveImage(base)
	if err != nil {
		return "", err
	}
	steps, err := buildSteps(cmds[1:])
	if err != nil {
		return "", err
	}
	if len(steps) == 0 {
		return img.ID, nil
	}
	if s.cfg.Builder == nil {
		return "", api.Errorf(api.ErrUnimplemented, "this daemon cannot build images")
	}
	// The builder names what it builds: a name derived from the layer, so the same layer
	// asked for again is the same name (and the builder's cache answers it).
	sum := sha256.Sum256([]byte(img.ID + "\x00" + strings.Join(cmds[1:], "\x00")))
	name := "modal-build/" + hex.EncodeToString(sum[:8]) + ":latest"
	built, err := s.cfg.Builder.Build(ctx, &image.BuildSpec{Name: name, Base: img.ID, Steps: steps}, "", func(image.BuildEvent) {})
	if err != nil {
		return "", fmt.Errorf("build image: %w", err)
	}
	return built.ID, nil
}

// buildSteps maps Dockerfile commands onto Airlock's build steps: RUN, ENV and WORKDIR.
func buildSteps(cmds []string) ([]image.BuildStep, error) {
	var steps []image.BuildStep
	for _, c := range cmds {
		c = strings.TrimSpace(c)
		if c == "" || strings.HasPrefix(c, "#") {
			continue
		}
		verb, rest, _ := strings.Cut(c, " ")
		rest = strings.TrimSpace(rest)
		switch strings.ToUpper(verb) {
		case "RUN":
			steps = append(steps, image.BuildStep{RunCommands: []string{rest}})
		case "WORKDIR":
			steps = append(steps, image.BuildStep{Workdir: rest})
		case "ENV":
			env, err := parseEnv(rest)
			if err != nil {
				return nil, err
			}
			steps = append(steps, image.BuildStep{Env: env})
		default:
			return nil, api.Errorf(api.ErrInvalidArgument, "Dockerfile command %q is not supported by Airlock's image builder (FROM, RUN, ENV and WORKDIR are)", c)
		}
	}
	return steps, nil
}

// parseEnv reads ENV's two forms: "K=V K2=V2" and "K V".
func parseEnv(s string) (map[string]string, error) {
	env := map[string]string{}
	if k, v, ok := strings.Cut(s, " "); ok && !strings.Contains(k, "=") {
		env[k] = strings.TrimSpace(v)
		return env, nil
	}
	for f := range strings.FieldsSeq(s) {
		k, v, ok := strings.Cut(f, "=")
		if !ok || k == "" {
			return nil, api.Errorf(api.ErrInvalidArgument, "ENV %q: want K=V", s)
		}
		env[k] = strings.Trim(v, `"`)
	}
	return env, nil
}

// ImageJoinStreaming answers at once: every image is built by ImageGetOrCreate.
func (c *control) ImageJoinStreaming(req *pb.ImageJoinStreamingRequest, ss grpc.ServerStreamingServer[pb.ImageJoinStreamingResponse]) error {
	if _, err := c.ImageFromId(ss.Context(), pb.ImageFromIdRequest_builder{ImageId: req.GetImageId()}.Build()); err != nil {
		return err
	}
	return ss.Send(pb.ImageJoinStreamingResponse_builder{Result: success(), Eof: true,
		EntryId: fmt.Sprint(time.Now().UnixMilli())}.Build())
}
