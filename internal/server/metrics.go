package server

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/audit"
	"github.com/airlockhq/airlock/internal/engine"
)

// metrics are the server's Prometheus metrics, in a registry of its own (no global state).
type metrics struct {
	reg        *prometheus.Registry
	requests   *prometheus.CounterVec
	latency    *prometheus.HistogramVec
	executions *prometheus.CounterVec
	execTime   prometheus.Histogram
	cells      *prometheus.CounterVec
	operatorMetrics
}

func newMetrics(e *engine.Engine) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "airlock_http_requests_total", Help: "HTTP requests by route and status code.",
		}, []string{"route", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "airlock_http_request_duration_seconds", Help: "HTTP request latency by route.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}, []string{"route"}),
		executions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "airlock_executions_total", Help: "One-shot executions by outcome (success, failure, timeout, oom).",
		}, []string{"outcome"}),
		execTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "airlock_execution_seconds", Help: "Wall-clock time of one-shot programs.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 16),
		}),
		cells: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "airlock_session_cells_total", Help: "Session cells by outcome (success, error, interrupted, restarted).",
		}, []string{"outcome"}),
	}
	m.reg.MustRegister(m.requests, m.latency, m.executions, m.execTime, m.cells,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "airlock_sandboxes_live", Help: "Sandboxes alive now (one-shot and long-lived)."},
			func() float64 { return float64(e.Live()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "airlock_admission_waiting", Help: "Requests queued for a sandbox slot."},
			func() float64 { return float64(e.Waiting()) }),
		poolCollector{e},
	)
	m.operatorMetrics = newOperatorMetrics(m.reg, e)
	return m
}

// poolCollector reports the warm pool per class, read when scraped. A class the pool forgot
// (idle) disappears, and its counters start from zero if it comes back.
type poolCollector struct{ e *engine.Engine }

var (
	poolReady    = prometheus.NewDesc("airlock_pool_ready", "Ready sandboxes in the warm pool, by class.", []string{"class"}, nil)
	poolTarget   = prometheus.NewDesc("airlock_pool_target", "Ready sandboxes the warm pool aims at, by class (from demand).", []string{"class"}, nil)
	poolHandouts = prometheus.NewDesc("airlock_pool_handouts_total", "Sandboxes handed out by the warm pool, by class.", []string{"class"}, nil)
	poolMisses   = prometheus.NewDesc("airlock_pool_misses_total", "Requests of a pooled class that found no ready sandbox (cold creates), by class.", []string{"class"}, nil)
	poolRefills  = prometheus.NewDesc("airlock_pool_refills_total", "Sandboxes the warm pool prepared, by class.", []string{"class"}, nil)
	poolFailures = prometheus.NewDesc("airlock_pool_refill_failures_total", "Refills of the warm pool that failed, by class.", []string{"class"}, nil)
)

func (poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{poolReady, poolTarget, poolHandouts, poolMisses, poolRefills, poolFailures} {
		ch <- d
	}
}

func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.e.PoolStats() {
		ch <- prometheus.MustNewConstMetric(poolReady, prometheus.GaugeValue, float64(s.Ready), s.Class)
		ch <- prometheus.MustNewConstMetric(poolTarget, prometheus.GaugeValue, float64(s.Target), s.Class)
		ch <- prometheus.MustNewConstMetric(poolHandouts, prometheus.CounterValue, float64(s.Handouts), s.Class)
		ch <- prometheus.MustNewConstMetric(poolMisses, prometheus.CounterValue, float64(s.Misses), s.Class)
		ch <- prometheus.MustNewConstMetric(poolRefills, prometheus.CounterValue, float64(s.Refills), s.Class)
		ch <- prometheus.MustNewConstMetric(poolFailures, prometheus.CounterValue, float64(s.Failures), s.Class)
	}
}

// statusWriter records the status code a handler wrote.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach Flush, full duplex and hijacking (WebSocket).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// instrument counts and times requests by route pattern (never by raw path: ids would explode
// the label set).
func (m *metrics) instrument(route string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		h.ServeHTTP(sw, r)
		if sw.code == 0 {
			sw.code = http.StatusOK
		}
		m.requests.WithLabelValues(route, strconv.Itoa(sw.code)).Inc()
		m.latency.WithLabelValues(route).Observe(time.Since(start).Seconds())
	})
}

func (m *metrics) execution(r *api.ExecuteResponse) {
	outcome := "failure"
	switch {
	case r.TimedOut:
		outcome = "timeout"
	case r.OOMKilled:
		outcome = "oom"
	case r.Success:
		outcome = "success"
	}
	m.executions.WithLabelValues(outcome).Inc()
	m.execTime.Observe(r.ExecutionTime)
}

func (m *metrics) cell(r *api.RunResult) {
	outcome := "success"
	switch {
	case r.Restarted:
		outcome = "restarted"
	case r.Interrupted || r.TimedOut:
		outcome = "interrupted"
	case r.Error != nil:
		outcome = "error"
	}
	m.cells.WithLabelValues(outcome).Inc()
}

func (s *Server) handleMetrics(w http.ResponseWriter, r *http.Request) error {
	promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{}).ServeHTTP(w, r)
	return nil
}

// operatorMetrics are the metrics fed by the engine's audit records (serverSink) and by the
// per-key limits: they cover every front end, as the engine audits every event.
type operatorMetrics struct {
	refusals  *prometheus.CounterVec   // by key id and reason
	ooms      *prometheus.CounterVec   // by event
	timeouts  *prometheus.CounterVec   // by event
	durations *prometheus.HistogramVec // by event
}

func newOperatorMetrics(reg *prometheus.Registry, e *engine.Engine) operatorMetrics {
	m := operatorMetrics{
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "airlock_key_refusals_total", Help: "Requests refused by a per-key limit, by key id and reason (rate, runs, sandboxes, sessions, cpu, inflight).",
		}, []string{"key", "reason"}),
		ooms: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "airlock_oom_kills_total", Help: "Runs and sandboxes whose memory limit killed a process, by event (run, batch_item, sandbox.destroy, session.destroy).",
		}, []string{"event"}),
		timeouts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "airlock_timeouts_total", Help: "Runs, execs and cells that hit their timeout, by event.",
		}, []string{"event"}),
		durations: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "airlock_event_duration_seconds", Help: "Duration of engine events as the engine saw them: run, batch_item (the whole run, queue included), sandbox.create, session.create, sandbox.exec, session.cell, session.install.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 14),
		}, []string{"event"}),
	}
	reg.MustRegister(m.refusals, m.ooms, m.timeouts, m.durations)
	for _, k := range []engine.Kind{engine.KindOneShot, engine.KindSandbox, engine.KindSession, engine.KindSeedSession} {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "airlock_sandboxes",
			Help: "Sandboxes by state and kind: running now, or ended and still remembered (their ids answer 410).", ConstLabels: prometheus.Labels{"kind": string(k), "state": "running"}},
			func() float64 { return float64(e.SandboxCounts()[k]) }))
	}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "airlock_sandboxes",
		Help: "Sandboxes by state and kind: running now, or ended and still remembered (their ids answer 410).", ConstLabels: prometheus.Labels{"kind": "any", "state": "ended"}},
		func() float64 { return float64(e.EndedRemembered()) }))
	return m
}

func (m *metrics) refusal(key, reason string) { m.refusals.WithLabelValues(key, reason).Inc() }

// serverSink is the server's consumer of the engine's audit records (Server.AuditSink).
type serverSink struct{ s *Server }

func (ss serverSink) Record(ctx context.Context, r audit.Record) {
	keySink{ss.s}.Record(ctx, r)
	m := ss.s.metrics
	if r.OOMKilled {
		m.ooms.WithLabelValues(r.Event).Inc()
	}
	if r.TimedOut {
		m.timeouts.WithLabelValues(r.Event).Inc()
	}
	if !strings.HasSuffix(r.Event, ".destroy") && r.Event != "file.write" {
		m.durations.WithLabelValues(r.Event).Observe(r.DurationMS / 1000)
	}
}
