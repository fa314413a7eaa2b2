package cli

import (
	"encoding/json"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

// psCmd lists the caller's one-shot runs in flight on a daemon, or cancels one.
func psCmd() *cobra.Command {
	o := &clientOptions{server: "http://127.0.0.1:8080"}
	var (
		kill   string
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "ps [--kill ID]",
		Short: "List your one-shot runs in flight on an airlock daemon, or cancel one",
		Long: "List the one-shot runs (airlock run, POST /v1/execute) of your API key that are running on\n" +
			"the daemon: id, age, language, CPU and memory so far. --kill ID cancels one: its sandbox\n" +
			"is destroyed and the run answers exit code 137.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c := o.client()
			if kill != "" {
				x, err := c.CancelExecution(ctx, kill)
				if err != nil {
					return fmt.Errorf("cancel %s: %w", kill, err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "cancelled %s (%s, ran %s)\n", x.ID, x.Language, seconds(x.AgeSeconds))
				return nil
			}
			xs, err := c.Executions(ctx)
			if err != nil {
				return fmt.Errorf("list executions: %w", err)
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(xs)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tKEY\tAGE\tLANGUAGE\tCPU\tMEMORY")
			for _, x := range xs {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%.1f MiB\n", x.ID, x.Key, seconds(x.AgeSeconds), x.Language, seconds(x.CPUSeconds), x.MemoryMB)
			}
			return tw.Flush()
		},
	}
	f := cmd.Flags()
	bindClientFlags(f, o, "airlock daemon URL")
	f.StringVar(&kill, "kill", "", "cancel the run with this id")
	f.BoolVar(&asJSON, "json", false, "print the list as JSON")
	return cmd
}

// seconds formats s seconds to a tenth.
func seconds(s float64) string {
	return time.Duration(s * float64(time.Second)).Round(100 * time.Millisecond).String()
}
