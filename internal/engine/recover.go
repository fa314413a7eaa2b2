package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/netpolicy"
)

// Recoverer is implemented by runtimes whose sandboxes outlive the daemon.
type Recoverer interface {
	Recover(ctx context.Context) ([]Recovered, error)
}

// Recovered is a sandbox a previous daemon left running.
type Recovered struct {
	ID   string
	Inst Instance
	Meta []byte
}

// recordVersion is the version of record this engine writes.
const recordVersion = 1

// record is what the engine keeps with every sandbox (Spec.Meta) so that a restarted daemon
// knows what it is: its kind, its owner and its normalized spec, in the engine's own terms.
// It is versioned (V); decodeRecord also reads the format before versions (legacyRecord).
type record struct {
	V       int       `json:"v"`
	Kind    Kind      `json:"kind"`
	Owner   string    `json:"owner,omitempty"`
	Seed    string    `json:"seed,omitempty"` // the seed name of a KindSeedSession
	For     Kind      `json:"for,omitempty"`  // what a KindPooled sandbox was prepared as
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires,omitzero"` // long-lived kinds only
	// LastActive is the sandbox's last call as a daemon that stopped gracefully saw it, so
	// that its successor keeps the idle deadline; zero otherwise (a crashed daemon's successor
	// counts idleness from adoption). The successor clears it once it has read it.
	LastActive time.Time    `json:"last_active,omitzero"`
	Spec       *SandboxSpec `json:"spec,omitempty"` // long-lived kinds only
}

// legacyRecord is the pre-version format: a long-lived sandbox's API request, its session
// marked by a tag. One-shot sandboxes had no meta at all.
type legacyRecord struct {
	Req struct {
		Timeout      float64           `json:"timeout"`
		IdleTimeout  float64           `json:"idle_timeout"`
		MemoryMB     int64             `json:"memory_mb"`
		CPU          float64           `json:"cpu"`
		Image        string            `json:"image"`
		Workdir      string            `json:"workdir"`
		BlockNetwork *bool             `json:"block_network"`
		Env          map[string]string `json:"env"`
		Tags         map[string]string `json:"tags"`
	} `json:"req"`
	Created time.Time     `json:"created"`
	Expires time.Time     `json:"expires"`
	Idle    time.Duration `json:"idle"`
	Owner   string        `json:"owner,omitempty"`
}

// The tags by which the pre-version format marked sessions; read only to migrate it.
const (
	legacySessionTag = "airlock.session"
	legacySeedTag    = "airlock.seed_session"
)

// decodeRecord reads meta in the current or the pre-version format. The error says which rule
// refused it, for the log.
func decodeRecord(meta []byte) (record, error) {
	var head struct {
		V *int `json:"v"`
	}
	if len(meta) == 0 {
		return record{}, errors.New("no record (a one-shot sandbox of a daemon before versioned records)")
	}
	if err := json.Unmarshal(meta, &head); err != nil {
		return record{}, errors.New("record is not JSON")
	}
	if head.V != nil {
		if *head.V != recordVersion {
			return record{}, errors.New("record version is unknown to this daemon")
		}
		var r record
		if err := json.Unmarshal(meta, &r); err != nil {
			return record{}, errors.New("record does not decode")
		}
		return r, nil
	}
	var l legacyRecord
	if err := json.Unmarshal(meta, &l); err != nil || l.Req.BlockNetwork == nil {
		return record{}, errors.New("pre-version record without a normalized request")
	}
	kind, seed := KindSandbox, ""
	tags := map[string]string{}
	for k, v := range l.Req.Tags {
		if !strings.HasPrefix(k, ReservedTagPrefix) {
			tags[k] = v
		}
	}
	if l.Req.Tags[legacySessionTag] == "1" {
		kind = KindSession
		if name, ok := l.Req.Tags[legacySeedTag]; ok {
			kind, seed = KindSeedSession, name
		}
	}
	// Those daemons refused any network, so every such sandbox was blocked.
	network := netpolicy.Policy{Mode: netpolicy.Block}
	if !*l.Req.BlockNetwork {
		network.Mode = netpolicy.Internet
	}
	if len(tags) == 0 && len(l.Req.Tags) == 0 {
		tags = l.Req.Tags // keep nil as nil
	}
	return record{V: recordVersion, Kind: kind, Owner: l.Owner, Seed: seed, Created: l.Created, Expires: l.Expires,
		Spec: &SandboxSpec{Timeout: l.Expires.Sub(l.Created), IdleTimeout: l.Idle, MemoryBytes: l.Req.MemoryMB << 20,
			CPU: l.Req.CPU, Image: l.Req.Image, Workdir: l.Req.Workdir, Network: network,
			Env: l.Req.Env, Tags: tags}}, nil
}

// Recover adopts the long-lived sandboxes a previous daemon left running and destroys the rest
// (one-shot sandboxes, whose caller is gone, and any it cannot read), logging why. Call it
// once, before serving.
func (e *Engine) Recover(ctx context.Context) (adopted, destroyed int, err error) {
	rt, ok := e.cfg.Runtime.(Recoverer)
	if !ok {
		return 0, 0, nil
	}
	found, err := rt.Recover(ctx)
	for _, r := range found {
		if e.adopt(ctx, r) {
			adopted++
		} else {
			destroyed++
		}
	}
	if err != nil {
		err = errors.Join(errors.New("recover sandboxes"), err)
	}
	return adopted, destroyed, err
}

// adopt registers a recovered sandbox, or destroys it and says why; true if adopted.
func (e *Engine) adopt(ctx context.Context, r Recovered) bool {
	log := e.cfg.Logger.With("sandbox", r.ID)
	rec, err := decodeRecord(r.Meta)
	switch {
	case err != nil:
		log.WarnContext(ctx, "destroying a recovered sandbox", "rule", err.Error())
	case rec.Kind == KindOneShot:
		log.InfoContext(ctx, "destroying a recovered sandbox", "rule", "one-shot: its caller is gone")
		err = errors.New("one-shot")
	case rec.Kind == KindPooled:
		log.InfoContext(ctx, "destroying a recovered sandbox", "rule", "prepared by the warm pool, never handed out")
		err = errors.New("pooled")
	case rec.Spec == nil || !(rec.Kind == KindSandbox || rec.Kind.IsSession()):
		log.WarnContext(ctx, "destroying a recovered sandbox", "rule", "record of kind "+string(rec.Kind)+" without a spec")
		err = errors.New("unknown kind")
	}
	if err != nil {
		e.destroy(ctx, r.ID, r.Inst)
		return false
	}
	release, err := e.acquireSandbox(rec.Owner)
	if err != nil {
		log.WarnContext(ctx, "destroying a recovered sandbox", "rule", "no slot: "+api.PublicDetail(err).Message)
		e.destroy(ctx, r.ID, r.Inst)
		return false
	}
	if id := rec.Spec.ImageID; id != "" {
		// The same image by id, whatever its names point at now. Its layers are mounted in
		// the live sandbox, so one the store lost meanwhile still serves it: the sandbox is
		// kept either way, unleased in that case.
		if _, lease, err := e.leaseImage(ctx, id); err != nil {
			log.WarnContext(ctx, "a recovered sandbox's image cannot be leased again", "image", id, "err", err)
		} else {
			e.mu.Lock()
			e.leases[r.ID] = lease
			e.mu.Unlock()
		}
	}
	lastActive := time.Now()
	if !rec.LastActive.IsZero() && rec.LastActive.Before(lastActive) {
		lastActive = rec.LastActive
	}
	sb := &Sandbox{e: e, id: r.ID, kind: rec.Kind, seed: rec.Seed, inst: r.Inst, client: r.Inst.Agent(),
		created: rec.Created, expires: rec.Expires, spec: *rec.Spec, release: release, lastActive: lastActive,
		owner: rec.Owner}
	if !rec.LastActive.IsZero() {
		// Read once: should this daemon crash, its successor must not take that old moment
		// for the last call and find the sandbox idle at once.
		sb.mu.Lock()
		err := sb.persistLocked(time.Time{})
		sb.mu.Unlock()
		if err != nil {
			log.WarnContext(ctx, "clearing a recovered sandbox's last activity from its record", "err", err)
		}
	}
	e.register(sb)
	e.hookLive(ctx, sb)
	if rec.Kind == KindSeedSession && rec.Seed != "" {
		// The seed routes find it by its name again (per owner, as SeedSession keys it).
		ent := &seedEntry{ready: make(chan struct{}), id: r.ID}
		close(ent.ready)
		e.seedMu.Lock()
		e.seed[rec.Owner+"\x00"+rec.Seed] = ent
		e.seedMu.Unlock()
	}
	log.InfoContext(ctx, "adopted a recovered sandbox", "kind", rec.Kind, "expires", rec.Expires)
	return true
}

// persistLocked writes sb's record as it stands now, with lastActive (zero for none), through
// its runtime (native keeps it in the sandbox's state file; a runtime without SetMeta keeps
// the record of creation). sb.mu must be held, so that racing writers persist in the order
// their changes took effect.
func (sb *Sandbox) persistLocked(lastActive time.Time) error {
	meta, err := json.Marshal(record{V: recordVersion, Kind: sb.kind, Owner: sb.owner, Seed: sb.seed,
		Created: sb.created, Expires: sb.expires, LastActive: lastActive, Spec: &sb.spec})
	if err != nil {
		return fmt.Errorf("encode sandbox record: %w", err)
	}
	if ms, ok := sb.inst.(metaSetter); ok {
		return noSpace(ms.SetMeta(meta))
	}
	return nil
}

// keep leaves sb running for the next daemon (Shutdown with KeepSandboxes), its record
// carrying the moment of its last call so that the idle deadline carries over.
func (e *Engine) keep(ctx context.Context, sb *Sandbox) {
	sb.mu.Lock()
	last := sb.lastActive
	if sb.active > 0 {
		last = time.Now() // a call in flight is cut by the exit: active until now
	}
	err := sb.persistLocked(last)
	sb.mu.Unlock()
	if err != nil {
		e.cfg.Logger.WarnContext(ctx, "persisting a kept sandbox's last activity; the next daemon counts its idleness from adoption",
			"sandbox", sb.id, "err", err)
	}
}
