package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"

	"github.com/airlockhq/airlock"
	"github.com/airlockhq/airlock/api"
)

var taskFlag = flag.String("task", "Calculate the first 20 Fibonacci numbers", "what the generated program should do")

const systemPrompt = `You are a Python code generator.
Generate only Python code that solves the given task.
The code should print its result to stdout.
Do not include any explanation, only code.`

// llm is an OpenAI-compatible chat completions client.
type llm struct {
	base, key, model string
	hc               *http.Client
}

func llmFromEnv() (*llm, error) {
	l := &llm{base: os.Getenv("OPENAI_BASE_URL"), key: os.Getenv("OPENAI_API_KEY"), model: os.Getenv("OPENAI_MODEL"),
		hc: http.DefaultClient}
	if l.key == "" {
		return nil, errors.New("OPENAI_API_KEY is not set")
	}
	if l.base == "" {
		l.base = "https://api.openai.com/v1"
	}
	if l.model == "" {
		l.model = "gpt-4o-mini"
	}
	return l, nil
}

type message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

func (l *llm) complete(ctx context.Context, msgs []message) (string, error) {
	body, _ := json.Marshal(map[string]any{"model": l.model, "messages": msgs})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(l.base, "/")+"/chat/completions", bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+l.key)
	resp, err := l.hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return "", fmt.Errorf("chat completions: HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(b))
	}
	var out struct {
		Choices []struct {
			Message message `json:"message"`
		} `json:"choices"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return "", fmt.Errorf("chat completions: %w", err)
	}
	if len(out.Choices) == 0 {
		return "", errors.New("chat completions: no choices")
	}
	return out.Choices[0].Message.Content, nil
}

// extractCode removes the markdown fence an LLM puts around code despite being told not to
// (```python, ```py or a bare ```), keeping the first fenced block.
func extractCode(s string) string {
	if _, after, ok := strings.Cut(s, "```"); ok {
		if _, body, ok := strings.Cut(after, "\n"); ok { // drop the fence line and its language tag
			s, _, _ = strings.Cut(body, "```")
		}
	}
	return strings.TrimSpace(s) + "\n"
}

// Outcome is llm_code_agent's return value.
type Outcome struct {
	Task          string               `json:"task"`
	GeneratedCode string               `json:"generated_code"`
	Result        *api.ExecuteResponse `json:"execution_result"`
	Attempts      int                  `json:"attempts"`
}

// maxAttempts bounds the write → run → read the error → retry loop.
const maxAttempts = 3

// codeAgent asks the LLM for code solving task, runs it untrusted in a fresh sandbox, and when
// it fails shows the LLM the error and asks for a fix, up to maxAttempts times.
func codeAgent(ctx context.Context, c *airlock.Client, l *llm, task string) (*Outcome, error) {
	msgs := []message{{Role: "system", Content: systemPrompt}, {Role: "user", Content: task}}
	var out *Outcome
	for attempt := 1; attempt <= maxAttempts; attempt++ {
		answer, err := l.complete(ctx, msgs)
		if err != nil {
			return nil, err
		}
		code := extractCode(answer)
		res, err := c.Execute(ctx, api.ExecuteRequest{Code: code, Timeout: 60})
		if err != nil {
			return nil, err
		}
		out = &Outcome{Task: task, GeneratedCode: code, Result: res, Attempts: attempt}
		if res.Success {
			return out, nil
		}
		msgs = append(msgs, message{Role: "assistant", Content: answer}, message{Role: "user", Content: fmt.Sprintf(
			"That code failed with exit status %d.\nstderr:\n%s\nReply with corrected code only.", res.ReturnCode, res.Stderr)})
	}
	return out, nil
}

func run(ctx context.Context, c *airlock.Client, w io.Writer) error {
	l, err := llmFromEnv()
	if err != nil {
		return err
	}
	out, err := codeAgent(ctx, c, l, *taskFlag)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "=== Task ===\n%s\n\n=== Generated code (attempt %d) ===\n%s\n=== Result (exit %d) ===\n%s%s",
		out.Task, out.Attempts, out.GeneratedCode, out.Result.ReturnCode, out.Result.Stdout, out.Result.Stderr)
	return nil
}
