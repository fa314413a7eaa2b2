package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/airlockhq/airlock"
	"github.com/airlockhq/airlock/api"
	"github.com/airlockhq/airlock/internal/llmagent"
)

// llmOptions are the flags that name the code agent's model. The key is read from a file or
// from AIRLOCK_LLM_API_KEY, never from a flag, so that it shows in no process list.
type llmOptions struct {
	baseURL string
	model   string
	keyFile string
}

func bindLLMFlags(fs *pflag.FlagSet, o *llmOptions) {
	flagEnv(fs, &o.baseURL, "llm-base-url", "AIRLOCK_LLM_BASE_URL", "code agent: the OpenAI-compatible API its model answers at, e.g. https://api.openai.com/v1")
	flagEnv(fs, &o.model, "llm-model", "AIRLOCK_LLM_MODEL", "code agent: the model's name at --llm-base-url")
	flagEnv(fs, &o.keyFile, "llm-key-file", "AIRLOCK_LLM_KEY_FILE", "code agent: file holding the endpoint's API key (AIRLOCK_LLM_API_KEY gives it instead); never logged, never passed to a sandbox")
}

// configured reports whether any LLM flag was given.
func (o *llmOptions) configured() bool { return o.baseURL != "" || o.model != "" }

// agent builds the code agent; the key comes from --llm-key-file, else AIRLOCK_LLM_API_KEY.
func (o *llmOptions) agent(logger *slog.Logger) (*llmagent.Agent, error) {
	key := os.Getenv("AIRLOCK_LLM_API_KEY")
	if o.keyFile != "" {
		b, err := os.ReadFile(o.keyFile)
		if err != nil {
			return nil, fmt.Errorf("llm key file: %w", err)
		}
		key = strings.TrimSpace(string(b))
	}
	return llmagent.New(llmagent.Config{BaseURL: o.baseURL, Model: o.model, APIKey: llmagent.Secret(key), Logger: logger})
}

// agentRunner is the daemon's server.AgentRunner: the agent's code runs through the daemon's
// own API (base, set once serve listens) with the caller's key.
type agentRunner struct {
	a    *llmagent.Agent
	base string
}

func (r *agentRunner) Run(ctx context.Context, key string, req api.AgentRunRequest) (*api.AgentRun, error) {
	return r.a.Run(ctx, airlock.New(r.base, key), req)
}

// agentCmd is `airlock agent "task"`. (A sandbox's init is also started as "airlock agent",
// but it is recognised by its environment before any command runs, see runInit.)
func agentCmd() *cobra.Command {
	var (
		co      = clientOptions{server: "http://127.0.0.1:8080"}
		llm     llmOptions
		req     api.AgentRunRequest
		jsonOut bool
	)
	cmd := &cobra.Command{
		Use:   "agent TASK",
		Short: "Let an LLM write, run and repair Python for a task, in sandboxes of a daemon",
		Long: "The model behind --llm-base-url writes a program for TASK; it runs in a sandbox of the daemon at --server; " +
			"on an error the model sees the output and repairs the program, up to --max-attempts runs. " +
			"The task is handed to the model as untrusted data, and the LLM key never enters a sandbox.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !llm.configured() {
				return errors.New("--llm-base-url and --llm-model are required (or AIRLOCK_LLM_BASE_URL, AIRLOCK_LLM_MODEL)")
			}
			a, err := llm.agent(warnLogger())
			if err != nil {
				return err
			}
			req.Task = args[0]
			run, err := a.Run(cmd.Context(), co.client(), req)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if jsonOut {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(run)
			}
			for i, at := range run.Attempts {
				fmt.Fprintf(out, "── attempt %d: exit code %d ──\n%s\n", i+1, at.ExitCode, strings.TrimRight(at.Code, "\n"))
				if at.Stdout != "" {
					fmt.Fprintf(out, "── stdout ──\n%s\n", strings.TrimRight(at.Stdout, "\n"))
				}
				if at.Stderr != "" {
					fmt.Fprintf(out, "── stderr ──\n%s\n", strings.TrimRight(at.Stderr, "\n"))
				}
			}
			fmt.Fprintf(out, "── answer ──\n%s\n", run.Answer)
			if !run.Success {
				return &exitError{code: 1}
			}
			return nil
		},
	}
	f := cmd.Flags()
	bindClientFlags(f, &co, "daemon whose sandboxes run the agent's code")
	bindLLMFlags(f, &llm)
	f.IntVar(&req.MaxAttempts, "max-attempts", 3, "code runs the model may make (1…10)")
	f.StringVar(&req.Mode, "mode", api.AgentModeExecute, "execute (a fresh sandbox per attempt) or session (one Python session)")
	f.Float64Var(&req.Timeout, "timeout", 30, "seconds each attempt's code may run")
	f.Int64Var(&req.MemoryMB, "memory", 0, "memory limit of the code's sandbox in MiB (default the daemon's)")
	f.BoolVar(&jsonOut, "json", false, "print the whole run as JSON (attempts, answer)")
	return cmd
}
