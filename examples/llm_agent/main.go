// Command llm_agent is the port of a Modal "llm_code_agent" (seed 000): ask an LLM for a
// Python program that solves a task, then run what it wrote in a fresh sandbox.
//
// It talks to any OpenAI-compatible chat completions endpoint: OPENAI_API_KEY (required),
// OPENAI_BASE_URL (default https://api.openai.com/v1) and OPENAI_MODEL (default gpt-4o-mini).
//
//	AIRLOCK_SERVER=http://127.0.0.1:8080 OPENAI_API_KEY=… go run ./examples/llm_agent -task 'first 20 Fibonacci numbers'
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"

	"github.com/airlockhq/airlock"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, airlock.NewFromEnv(), os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "llm_agent:", err)
		os.Exit(1)
	}
}
