package agentclient

import (
	"context"
	"errors"
	"io"
	"net/http"
)

// AnswerBudget bounds the daemon memory that agent answers take while the daemon reads and uses
// them (see WithAnswerBudget).
type AnswerBudget interface {
	// Reserve is called before the first byte of an answer is read, with the most the answer may
	// take on the wire (MaxMessage). It blocks until that much is available or fails, and then the
	// read fails with its error.
	Reserve(ctx context.Context, n int64) error
	// Settle is called once the whole answer has been read, with its size on the wire, so that
	// the part of the reservation it did not use can be given back.
	Settle(n int64)
}

type budgetKey struct{}

// WithAnswerBudget charges the answers of the agent calls made with ctx to b. Use it for unary
// calls only: the reservation is made when the answer starts, which for a unary call is when the
// work is done, but for a stream would be for the stream's whole life.
func WithAnswerBudget(ctx context.Context, b AnswerBudget) context.Context {
	return context.WithValue(ctx, budgetKey{}, b)
}

// budgetTransport charges answer bodies to the request context's AnswerBudget, if any.
type budgetTransport struct{ base http.RoundTripper }

func (t budgetTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	base := t.base
	if base == nil {
		base = http.DefaultTransport
	}
	resp, err := base.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	if b, ok := req.Context().Value(budgetKey{}).(AnswerBudget); ok {
		resp.Body = &chargedBody{ReadCloser: resp.Body, ctx: req.Context(), b: b}
	}
	return resp, nil
}

// chargedBody reserves budget before its first byte is read, so that the reader's buffers
// (which grow as bytes arrive) never outrun it.
type chargedBody struct {
	io.ReadCloser
	ctx               context.Context
	b                 AnswerBudget
	reserved, settled bool
	n                 int64
}

func (c *chargedBody) Read(p []byte) (int, error) {
	if !c.reserved {
		if err := c.b.Reserve(c.ctx, MaxMessage); err != nil {
			return 0, err
		}
		c.reserved = true
	}
	n, err := c.ReadCloser.Read(p)
	c.n += int64(n)
	if errors.Is(err, io.EOF) && !c.settled {
		c.settled = true
		c.b.Settle(c.n)
	}
	return n, err
}

// CloseIdleConnections forwards to the wrapped transport, so http.Client.CloseIdleConnections
// still works through the wrapper.
func (t budgetTransport) CloseIdleConnections() {
	if ci, ok := t.base.(interface{ CloseIdleConnections() }); ok {
		ci.CloseIdleConnections()
	}
}
