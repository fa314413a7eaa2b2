package netpolicy

// The per-sandbox DNS forwarder. It listens on the sandbox's gateway address (the sandbox's
// resolv.conf names it), forwards what the policy lets resolve to the host's resolvers and
// filters their answers:
//
//   - Allowlist: a name no name rule matches is REFUSED without a packet upstream, so DNS is no
//     exfiltration channel for unlisted names. A listed name is forwarded; the answer keeps its
//     CNAME chain and A records, minus addresses in blocked ranges (DNS rebinding), and the kept
//     addresses are handed to Admit (the firewall) before the answer leaves, so a connect right
//     after the answer finds them admitted.
//   - Internet: every name is forwarded; blocked addresses are still stripped from answers.
//
// AAAA is answered empty (sandboxes have no IPv6; clients fall back to A at once). Queries a
// resolver for one sandbox has no business with are refused: several questions, meta types
// (ANY, AXFR, IXFR, TSIG…), updates and other opcodes, other classes, oversize or escaped names.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

const (
	// DefaultQueryRate is a forwarder's query budget per second when its config names none.
	DefaultQueryRate = 100

	// upstreamTimeout bounds one exchange with one upstream before the next is tried.
	upstreamTimeout = 2 * time.Second
	// minAdmitTTL and maxAdmitTTL bound how long an answered address stays admitted: long
	// enough that a client with a short-TTL answer still connects, short enough that an
	// address a name no longer has does not stay open for the sandbox's lifetime.
	minAdmitTTL = 30 * time.Second
	maxAdmitTTL = time.Hour
	// maxUDPSize is the EDNS payload size we offer and accept at most (the 2020 DNS flag day
	// value: no IP fragmentation, which is what spoofed-fragment attacks need).
	maxUDPSize = 1232
	// maxTCPSize bounds an answer over TCP; a sandbox needs nothing near the 64 KiB DNS limit.
	maxTCPSize = 16 << 10
	// maxTCPConns bounds concurrent TCP connections; one more is closed at once, not queued.
	maxTCPConns = 16
	// maxTCPQueries bounds the queries one TCP connection may send before it is closed.
	maxTCPQueries = 32
	// tcpReadTimeout is how long a TCP client has for its first query, tcpIdleTimeout for the
	// next ones; ioTimeout bounds every write to a client, so a reader that stops reading
	// cannot hold a goroutine (and Close) forever.
	tcpReadTimeout = 2 * time.Second
	tcpIdleTimeout = 8 * time.Second
	ioTimeout      = 2 * time.Second
	// maxInflight bounds queries waiting on an upstream at once; more get SERVFAIL.
	maxInflight = 64
	// maxUpstreamRRs bounds the answer records of an upstream answer we look at, and
	// maxAnswerAddrs the addresses we keep (each becomes a firewall set element).
	maxUpstreamRRs = 256
	maxAnswerAddrs = 32
	// maxNameLen is the longest name in presentation form without the final dot.
	maxNameLen = 253
	// maxResolvConfServers is glibc's MAXNS: the resolvers past the third are never used there.
	maxResolvConfServers = 3
)

// ForwarderConfig configures one sandbox's forwarder.
type ForwarderConfig struct {
	// Listen is the address to serve UDP and TCP on: the sandbox's gateway, port 53. Port 0
	// picks a free port (the same for both protocols).
	Listen netip.AddrPort
	// Upstreams are the resolvers to forward to, tried in order: a timeout, an error, a
	// SERVFAIL or REFUSED moves on to the next.
	Upstreams []netip.AddrPort
	// Mode is Internet or Allowlist.
	Mode Mode
	// Rules are the policy's allow rules; in Allowlist mode their names decide what resolves
	// and their ports what Admit opens.
	Rules []Rule
	// Allowed are ranges exempt from the rebinding filter: the operator's allowed ranges and
	// the policy's own CIDR rules.
	Allowed []netip.Prefix
	// Admit opens the firewall to addrs on ports port…portEnd (0, 0: every port) for ttl. In
	// Allowlist mode it is required and called before the answer is sent; an error turns the
	// answer into SERVFAIL. Internet mode does not call it.
	Admit func(addrs []netip.Addr, port, portEnd uint16, ttl time.Duration) error
	// QueryRate is the queries per second the forwarder answers (bursts of as many); queries
	// past it get REFUSED. Zero means DefaultQueryRate.
	QueryRate int
	// Logger receives the forwarder's logs; nil discards them.
	Logger *slog.Logger
}

// Validate reports a config NewForwarder cannot serve.
func (c ForwarderConfig) Validate() error {
	switch {
	case !c.Listen.IsValid() || !c.Listen.Addr().Is4():
		return fmt.Errorf("dns forwarder: listen address %v: want IPv4", c.Listen)
	case len(c.Upstreams) == 0:
		return errors.New("dns forwarder: no upstream resolver")
	case c.Mode != Internet && c.Mode != Allowlist:
		return fmt.Errorf("dns forwarder: mode %q: want %q or %q", c.Mode, Internet, Allowlist)
	case c.Mode == Allowlist && c.Admit == nil:
		return errors.New("dns forwarder: allowlist mode needs Admit")
	case c.QueryRate < 0:
		return fmt.Errorf("dns forwarder: query rate %d is negative", c.QueryRate)
	}
	for _, u := range c.Upstreams {
		if !u.IsValid() || u.Port() == 0 {
			return fmt.Errorf("dns forwarder: upstream %v: want address and port", u)
		}
	}
	return nil
}

// Forwarder is one sandbox's running DNS forwarder. Close stops it.
type Forwarder struct {
	cfg      ForwarderConfig
	log      *slog.Logger
	addr     netip.AddrPort
	udp, tcp *dns.Server
	limiter  *tokenBucket
	inflight chan struct{} // a slot per query waiting on an upstream

	// ctx is cancelled by Close, which aborts exchanges with upstreams in flight.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // the serve goroutines; each server waits for its handlers
	// running are the servers started, the ones Close shuts down.
	running []*dns.Server

	closeOnce sync.Once
	closeErr  error
}

// NewForwarder binds cfg.Listen on UDP and TCP and serves both in goroutines the Forwarder owns
// until Close.
func NewForwarder(cfg ForwarderConfig) (*Forwarder, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.QueryRate == 0 {
		cfg.QueryRate = DefaultQueryRate
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	pc, ln, err := listenBoth(cfg.Listen)
	if err != nil {
		return nil, err
	}
	f := &Forwarder{
		cfg:      cfg,
		log:      log.With("dns", pc.LocalAddr().String()),
		addr:     pc.LocalAddr().(*net.UDPAddr).AddrPort(),
		limiter:  newTokenBucket(cfg.QueryRate),
		inflight: make(chan struct{}, maxInflight),
	}
	f.ctx, f.cancel = context.WithCancel(context.Background())
	f.udp = &dns.Server{
		PacketConn:    pc,
		UDPSize:       maxUDPSize,
		MsgAcceptFunc: acceptQuery,
		Handler:       dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) { f.serve(w, r, false) }),
	}
	f.tcp = &dns.Server{
		Listener:      &limitListener{Listener: ln, slots: make(chan struct{}, maxTCPConns)},
		ReadTimeout:   tcpReadTimeout,
		IdleTimeout:   func() time.Duration { return tcpIdleTimeout },
		MaxTCPQueries: maxTCPQueries,
		MsgAcceptFunc: acceptQuery,
		Handler:       dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) { f.serve(w, r, true) }),
	}
	for _, srv := range []*dns.Server{f.udp, f.tcp} {
		started := make(chan struct{})
		failed := make(chan error, 1)
		srv.NotifyStartedFunc = func() { close(started) }
		f.wg.Go(func() {
			if err := srv.ActivateAndServe(); err != nil {
				failed <- err
			}
		})
		// Wait for the server to run: Shutdown refuses a server not started yet, and Close
		// must be able to stop what NewForwarder returned.
		select {
		case <-started:
			f.running = append(f.running, srv)
		case err := <-failed:
			f.Close()
			return nil, fmt.Errorf("dns forwarder: serve: %w", err)
		}
	}
	return f, nil
}

// listenBoth binds UDP and TCP on one address; for port 0 it takes the port UDP was given,
// trying again if TCP has that port taken.
func listenBoth(ap netip.AddrPort) (net.PacketConn, net.Listener, error) {
	for attempt := 0; ; attempt++ {
		pc, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(ap))
		if err != nil {
			return nil, nil, fmt.Errorf("dns forwarder: listen udp %s: %w", ap, err)
		}
		bound := pc.LocalAddr().(*net.UDPAddr).AddrPort()
		ln, err := net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(bound))
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
		if ap.Port() != 0 || attempt == 4 {
			return nil, nil, fmt.Errorf("dns forwarder: listen tcp %s: %w", bound, err)
		}
	}
}

// Addr is the address the forwarder serves on (with the port it was given for port 0).
func (f *Forwarder) Addr() netip.AddrPort { return f.addr }

// Close stops serving, aborts exchanges in flight and waits for every goroutine of the
// forwarder. It may be called more than once.
func (f *Forwarder) Close() error {
	f.closeOnce.Do(func() {
		f.cancel()
		var errs []error
		for _, srv := range f.running {
			if err := srv.Shutdown(); err != nil {
				errs = append(errs, fmt.Errorf("dns forwarder: shut down: %w", err))
			}
		}
		f.wg.Wait()
		// The servers close their sockets when they stop; these are for a server that never
		// started (NewForwarder failing half way), so their errors say nothing.
		f.udp.PacketConn.Close()
		f.tcp.Listener.Close()
		f.closeErr = errors.Join(errs...)
	})
	return f.closeErr
}

// acceptQuery lets every message that is not a response reach the handler, which answers
// REFUSED to what it will not serve (miekg's default answers FORMERR or NOTIMP instead, and
// only for some). Responses are ignored: answering them could be used to reflect traffic.
func acceptQuery(dh dns.Header) dns.MsgAcceptAction {
	if dh.Bits&(1<<15) != 0 { // QR
		return dns.MsgIgnore
	}
	return dns.MsgAccept
}

func (f *Forwarder) serve(w dns.ResponseWriter, req *dns.Msg, tcp bool) {
	resp := f.handle(f.ctx, req, tcp)
	if resp == nil {
		return
	}
	if err := w.WriteMsg(resp); err != nil {
		f.log.Debug("dns answer not sent", "err", err)
	}
}

// handle answers one query; nil means no answer at all.
func (f *Forwarder) handle(ctx context.Context, req *dns.Msg, tcp bool) *dns.Msg {
	if req.Response {
		return nil
	}
	if !f.limiter.allow(time.Now()) {
		return f.finish(req, reply(req, dns.RcodeRefused), tcp)
	}
	if opt := req.IsEdns0(); opt != nil && opt.Version() != 0 {
		return f.finish(req, reply(req, dns.RcodeBadVers), tcp)
	}
	if why := refusal(req); why != "" {
		f.log.Debug("dns query refused", "why", why, "question", questionString(req))
		return f.finish(req, reply(req, dns.RcodeRefused), tcp)
	}
	q := req.Question[0]
	var rules []Rule
	if f.cfg.Mode == Allowlist {
		for _, r := range f.cfg.Rules {
			if r.MatchName(q.Name) {
				rules = append(rules, r)
			}
		}
		if len(rules) == 0 {
			f.log.Debug("dns query refused", "why", "name not allowed", "name", q.Name)
			return f.finish(req, reply(req, dns.RcodeRefused), tcp)
		}
	}
	if q.Qtype == dns.TypeAAAA {
		return f.finish(req, reply(req, dns.RcodeSuccess), tcp)
	}
	select {
	case f.inflight <- struct{}{}:
		defer func() { <-f.inflight }()
	default:
		return f.finish(req, reply(req, dns.RcodeServerFailure), tcp)
	}
	up, err := f.forward(ctx, q)
	if err != nil {
		f.log.Warn("dns query not resolved", "name", q.Name, "type", dns.TypeToString[q.Qtype], "err", err)
		return f.finish(req, reply(req, dns.RcodeServerFailure), tcp)
	}
	resp, addrs, ttl := f.filter(req, up)
	if f.cfg.Mode == Allowlist && len(addrs) > 0 {
		if err := f.admit(rules, addrs, ttl); err != nil {
			f.log.Warn("dns answer not admitted", "name", q.Name, "err", err)
			return f.finish(req, reply(req, dns.RcodeServerFailure), tcp)
		}
	}
	return f.finish(req, resp, tcp)
}

// refusal says why a query is refused, or "" to serve it.
func refusal(req *dns.Msg) string {
	switch {
	case req.Opcode != dns.OpcodeQuery:
		return "opcode " + dns.OpcodeToString[req.Opcode]
	case len(req.Question) != 1:
		return fmt.Sprintf("%d questions", len(req.Question))
	}
	q := req.Question[0]
	switch {
	case q.Qclass != dns.ClassINET:
		return "class " + dns.ClassToString[q.Qclass]
	// OPT is no question, and 128-255 are the meta types (RFC 6895): TKEY, TSIG, IXFR, AXFR,
	// MAILB, MAILA, ANY. None is for a sandbox.
	case q.Qtype == dns.TypeOPT || q.Qtype >= 128 && q.Qtype <= 255 || q.Qtype == dns.TypeNone:
		return "type " + dns.Type(q.Qtype).String()
	case len(strings.TrimSuffix(q.Name, ".")) > maxNameLen || !dns.IsFqdn(q.Name):
		return "name too long"
	// miekg spells bytes other than letters, digits, hyphen and underscore as \DDD or \c:
	// names no rule can mean, and good for nothing but smuggling.
	case strings.Contains(q.Name, `\`):
		return "escaped name"
	}
	return ""
}

// forward asks the upstreams in order; an answer is one with NOERROR or NXDOMAIN.
func (f *Forwarder) forward(ctx context.Context, q dns.Question) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(q.Name, q.Qtype)
	// Our own EDNS, never the client's options, and no DO bit: answers are filtered, so
	// signatures over them would not verify anyway.
	m.SetEdns0(maxUDPSize, false)
	var errs []error
	for _, u := range f.cfg.Upstreams {
		r, err := exchange(ctx, "udp", m, u)
		if err == nil && r.Truncated {
			r, err = exchange(ctx, "tcp", m, u)
		}
		if err == nil && (len(r.Question) != 1 || !strings.EqualFold(r.Question[0].Name, q.Name) ||
			r.Question[0].Qtype != q.Qtype) {
			err = errors.New("answer to another question")
		}
		if err == nil && r.Rcode != dns.RcodeSuccess && r.Rcode != dns.RcodeNameError {
			err = fmt.Errorf("answered %s", dns.RcodeToString[r.Rcode])
		}
		if err == nil {
			return r, nil
		}
		errs = append(errs, fmt.Errorf("upstream %s: %w", u, err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, errors.Join(errs...)
}

// exchange sends m to one upstream and reads its answer, giving up after upstreamTimeout or
// when ctx ends (miekg's client honours only ctx's deadline, so cancelling closes the socket).
func exchange(ctx context.Context, network string, m *dns.Msg, u netip.AddrPort) (*dns.Msg, error) {
	c := &dns.Client{Net: network, Timeout: upstreamTimeout, UDPSize: maxUDPSize}
	co, err := c.DialContext(ctx, u.String())
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", network, err)
	}
	defer co.Close()
	stop := context.AfterFunc(ctx, func() { co.Close() })
	defer stop()
	r, _, err := c.ExchangeWithConnContext(ctx, m, co)
	if err != nil {
		return nil, fmt.Errorf("exchange over %s: %w", network, err)
	}
	return r, nil
}

// filter builds the answer to req from the upstream's: the question's CNAME chain and the
// records of the asked type on it, A records outside blocked ranges only, and an SOA for
// negative caching. It returns the kept A addresses and how long to admit them; record TTLs
// are cut to that time, so no client caches an address longer than it is admitted.
func (f *Forwarder) filter(req, up *dns.Msg) (*dns.Msg, []netip.Addr, time.Duration) {
	q := req.Question[0]
	resp := reply(req, up.Rcode)
	answer := up.Answer
	if len(answer) > maxUpstreamRRs {
		answer = answer[:maxUpstreamRRs]
	}
	// The chain: the asked name, then every CNAME target reached from it. Upstreams list the
	// chain in order, but nothing requires it, so repeat until no name is added (at most once
	// per record).
	chain := map[string]bool{strings.ToLower(q.Name): true}
	for grew := true; grew; {
		grew = false
		for _, rr := range answer {
			if c, ok := rr.(*dns.CNAME); ok && chain[strings.ToLower(c.Hdr.Name)] && !chain[strings.ToLower(c.Target)] {
				chain[strings.ToLower(c.Target)] = true
				grew = true
			}
		}
	}
	var addrs []netip.Addr
	minTTL := uint32(maxAdmitTTL / time.Second)
	keep := func(rr dns.RR) {
		resp.Answer = append(resp.Answer, rr)
		minTTL = min(minTTL, rr.Header().Ttl)
	}
	dropped := 0
	for _, rr := range answer {
		h := rr.Header()
		if h.Class != dns.ClassINET || !chain[strings.ToLower(h.Name)] {
			continue
		}
		switch rr := rr.(type) {
		case *dns.CNAME:
			keep(rr)
		case *dns.A:
			a, ok := netip.AddrFromSlice(rr.A.To4())
			if q.Qtype != dns.TypeA || !ok || len(addrs) == maxAnswerAddrs {
				continue
			}
			if IsBlocked(a, f.cfg.Allowed) {
				dropped++
				continue
			}
			addrs = append(addrs, a)
			keep(rr)
		default:
			// Other types only for their own question, and never AAAA (no IPv6 inside).
			if h.Rrtype == q.Qtype && h.Rrtype != dns.TypeAAAA {
				keep(rr)
			}
		}
	}
	if dropped > 0 {
		f.log.Info("dns answer: blocked addresses dropped (rebinding)", "name", q.Name, "dropped", dropped)
	}
	ttl := min(max(time.Duration(minTTL)*time.Second, minAdmitTTL), maxAdmitTTL)
	for _, rr := range resp.Answer {
		rr.Header().Ttl = min(rr.Header().Ttl, uint32(ttl/time.Second))
	}
	if len(resp.Answer) == 0 {
		for _, rr := range up.Ns {
			if soa, ok := rr.(*dns.SOA); ok {
				resp.Ns = append(resp.Ns, soa)
				break
			}
		}
	}
	return resp, addrs, ttl
}

// admit opens addrs for each port range of the rules that matched the name; a rule for every
// port makes the others moot.
func (f *Forwarder) admit(rules []Rule, addrs []netip.Addr, ttl time.Duration) error {
	type ports struct{ lo, hi uint16 }
	var ranges []ports
	for _, r := range rules {
		p := ports{r.Port, r.PortEnd}
		if r.Port == 0 {
			ranges = []ports{{}}
			break
		}
		if !slices.Contains(ranges, p) {
			ranges = append(ranges, p)
		}
	}
	for _, p := range ranges {
		if err := f.cfg.Admit(addrs, p.lo, p.hi, ttl); err != nil {
			return fmt.Errorf("admit %v ports %d-%d: %w", addrs, p.lo, p.hi, err)
		}
	}
	return nil
}

// reply starts an answer to req with rcode, recursion available.
func reply(req *dns.Msg, rcode int) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Rcode = rcode
	m.RecursionAvailable = true
	return m
}

// finish gives resp our OPT record if the client sent one (RFC 6891) and truncates it to what
// the client can take: 512 bytes over UDP without EDNS, its EDNS size up to maxUDPSize with,
// maxTCPSize over TCP.
func (f *Forwarder) finish(req, resp *dns.Msg, tcp bool) *dns.Msg {
	size := dns.MinMsgSize
	if opt := req.IsEdns0(); opt != nil {
		resp.SetEdns0(maxUDPSize, false)
		size = min(max(int(opt.UDPSize()), dns.MinMsgSize), maxUDPSize)
	} else if resp.Rcode > 0xF {
		// An extended rcode (BADVERS) needs an OPT record to be spelled in.
		resp.SetEdns0(maxUDPSize, false)
	}
	if tcp {
		size = maxTCPSize
	}
	resp.Truncate(size)
	return resp
}

func questionString(req *dns.Msg) string {
	if len(req.Question) == 0 {
		return ""
	}
	return req.Question[0].String()
}

// tokenBucket is a query-rate limit: rate tokens a second, at most rate banked.
type tokenBucket struct {
	rate float64

	mu     sync.Mutex
	tokens float64
	last   time.Time
}

func newTokenBucket(rate int) *tokenBucket {
	return &tokenBucket{rate: float64(rate), tokens: float64(rate)}
}

func (b *tokenBucket) allow(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.last.IsZero() {
		b.tokens = min(b.rate, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// limitListener closes connections past its slots at once (a bounded server refuses rather
// than queues), and gives every accepted connection a write timeout.
type limitListener struct {
	net.Listener
	slots chan struct{}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.slots <- struct{}{}:
			return &limitConn{Conn: c, slots: l.slots}, nil
		default:
			c.Close()
		}
	}
}

type limitConn struct {
	net.Conn
	slots   chan struct{}
	release sync.Once
}

func (c *limitConn) Write(p []byte) (int, error) {
	if err := c.Conn.SetWriteDeadline(time.Now().Add(ioTimeout)); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.release.Do(func() { <-c.slots })
	return err
}

// UpstreamsFromResolvConf reads the nameservers of a resolv.conf: IPv4 only (the forwarder
// runs on the host but speaks for sandboxes without IPv6; an IPv6 resolver would be a second
// path to keep equal), port 53, at most the first three as glibc does.
func UpstreamsFromResolvConf(path string) ([]netip.AddrPort, error) {
	file, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read resolvers: %w", err)
	}
	defer file.Close()
	var ups []netip.AddrPort
	sc := bufio.NewScanner(file)
	for sc.Scan() && len(ups) < maxResolvConfServers {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || fields[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(fields[1])
		if err != nil || !a.Unmap().Is4() {
			continue
		}
		ups = append(ups, netip.AddrPortFrom(a.Unmap(), 53))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read resolvers %s: %w", path, err)
	}
	if len(ups) == 0 {
		return nil, fmt.Errorf("read resolvers %s: no IPv4 nameserver", path)
	}
	return ups, nil
}
