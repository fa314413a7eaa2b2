package cluster

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/airlockhq/airlock/api"
)

// hookSender POSTs webhook events. Webhook URLs are user input: only http and https, and,
// unless the operator allows them, never to loopback, private or link-local addresses —
// checked on the URL when a batch is submitted and again on every address dialed, so that a
// name resolving to such an address (or re-resolving to one later) is refused as well.
type hookSender struct {
	allowPrivate bool
	client       *http.Client
}

// hookAttemptTimeout bounds one delivery attempt.
const hookAttemptTimeout = 10 * time.Second

func newHookSender(allowPrivate bool) *hookSender {
	h := &hookSender{allowPrivate: allowPrivate}
	d := &net.Dialer{Timeout: 5 * time.Second, Control: func(_, address string, _ syscall.RawConn) error {
		if allowPrivate {
			return nil
		}
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return fmt.Errorf("webhook address %s: %w", address, err)
		}
		if !publicAddr(ap.Addr()) {
			return fmt.Errorf("webhook address %s is not public (airlock serve --webhook-allow-private allows it)", ap.Addr())
		}
		return nil
	}}
	h.client = &http.Client{
		Timeout: hookAttemptTimeout,
		Transport: &http.Transport{Proxy: nil, DialContext: d.DialContext, MaxIdleConnsPerHost: 16,
			IdleConnTimeout: 90 * time.Second, TLSHandshakeTimeout: 5 * time.Second},
		// A redirect would reach an address the URL's check never saw: not followed, and a 3xx
		// is no delivery.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return h
}

// cgnat is the shared address space of carrier-grade NAT (RFC 6598), private in all but name.
var cgnat = netip.MustParsePrefix("100.64.0.0/10")

// publicAddr reports whether a is an address on the public internet.
func publicAddr(a netip.Addr) bool {
	a = a.Unmap()
	return a.IsValid() && !a.IsLoopback() && !a.IsPrivate() && !a.IsLinkLocalUnicast() && !a.IsLinkLocalMulticast() &&
		!a.IsInterfaceLocalMulticast() && !a.IsMulticast() && !a.IsUnspecified() && !cgnat.Contains(a) &&
		!(a.Is4() && a.As4()[0] == 0)
}

// check refuses a webhook URL that is not http(s) or, unless allowed, names a non-public host.
func (h *hookSender) check(raw string) error {
	bad := func(why string) error { return api.Errorf(api.ErrInvalidArgument, "webhook url %q: %s", raw, why) }
	if len(raw) > 2048 {
		return api.Errorf(api.ErrInvalidArgument, "webhook url: at most 2048 bytes")
	}
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return bad("not a URL")
	case u.Scheme != "http" && u.Scheme != "https":
		return bad("only http and https URLs are allowed")
	case u.Hostname() == "":
		return bad("no host")
	case u.User != nil:
		return bad("credentials in the URL are not allowed; use the webhook secret")
	}
	if h.allowPrivate {
		return nil
	}
	host := strings.ToLower(u.Hostname())
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return bad("loopback hosts are refused (airlock serve --webhook-allow-private allows them)")
	}
	if a, err := netip.ParseAddr(host); err == nil && !publicAddr(a) {
		return bad("loopback, private and link-local addresses are refused (airlock serve --webhook-allow-private allows them)")
	}
	return nil
}

// Sign is the X-Airlock-Signature value of body sent at t with secret: t=<unix>,v1=<hex
// HMAC-SHA256 of "<unix>.<body>">.
func Sign(secret string, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(ts + "."))
	mac.Write(body)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac.Sum(nil))
}

// post sends one attempt of an event; nil when the receiver answered 2xx.
func (h *hookSender) post(ctx context.Context, hook *api.Webhook, id string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, hook.URL, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("webhook request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "airlock-webhook")
	req.Header.Set(api.WebhookDeliveryHeader, id)
	req.Header.Set(api.WebhookSignatureHeader, Sign(hook.Secret, time.Now(), body))
	resp, err := h.client.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("webhook answered %s", resp.Status)
	}
	return nil
}

// Back-off between the attempts of one event: from hookFirstBackoff, doubling up to
// hookMaxBackoff, each with ±50% jitter so that many failing events do not retry in step.
const (
	hookFirstBackoff = 500 * time.Millisecond
	hookMaxBackoff   = 30 * time.Second
)

// deliver sends one webhook event, retrying with back-off until it is delivered or
// WebhookRetryFor has passed since it was queued (a redelivered event keeps its first
// deadline), then records the outcome and acks. A node dying meanwhile never acks: JetStream
// gives the event to another node, and the receiver de-duplicates by the delivery id.
func (q *Queue) deliver(ctx context.Context, msg jetstream.Msg) {
	var h hookMsg
	if err := json.Unmarshal(msg.Data(), &h); err != nil || !validBatchID(h.Batch) {
		msg.Term()
		return
	}
	m, err := q.loadMeta(ctx, h.Batch)
	if err != nil {
		msg.NakWithDelay(time.Second)
		return
	}
	if m == nil || m.Webhook == nil {
		msg.Ack() // expired: nobody to tell
		return
	}
	if rec, err := q.get(ctx, h.hookKey()); err != nil {
		msg.NakWithDelay(time.Second)
		return
	} else if rec != nil {
		msg.Ack() // delivered (or given up on) already
		return
	}
	queued := time.Now()
	if md, err := msg.Metadata(); err == nil {
		queued = md.Timestamp
	}
	deadline := queued.Add(q.cfg.WebhookRetryFor)
	body, err := json.Marshal(h.Event)
	if err != nil {
		msg.Term()
		return
	}
	stop := q.keepAlive(ctx, msg)
	defer stop()
	backoff := hookFirstBackoff
	outcome := "delivered"
	for attempt := 1; ; attempt++ {
		err := q.hook.post(ctx, m.Webhook, h.deliveryID(), body)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			msg.Nak() // shutting down: another node sends it
			return
		}
		wait := backoff/2 + rand.N(backoff)
		if time.Now().Add(wait).After(deadline) {
			q.cfg.Logger.WarnContext(ctx, "webhook: giving up", "batch", h.Batch, "delivery", h.deliveryID(), "attempts", attempt, "err", err)
			outcome = "failed"
			break
		}
		select {
		case <-ctx.Done():
			msg.Nak()
			return
		case <-time.After(wait):
		}
		backoff = min(2*backoff, hookMaxBackoff)
	}
	sctx := context.WithoutCancel(ctx)
	keys := []string{h.hookKey()}
	if outcome == "failed" {
		keys = append(keys, strings.Replace(h.hookKey(), ".hook.", ".hookfail.", 1))
	}
	for _, k := range keys {
		if _, err := q.create(sctx, m, k, []byte(outcome)); err != nil && !errors.Is(err, context.Canceled) {
			q.cfg.Logger.WarnContext(ctx, "webhook: recording the delivery", "delivery", h.deliveryID(), "err", err)
		}
	}
	ackCtx, cancel := context.WithTimeout(sctx, opTimeout)
	defer cancel()
	msg.DoubleAck(ackCtx)
}
