package cli

import (
	"github.com/spf13/cobra"
)

func benchCmd() *cobra.Command {
	return &cobra.Command{Use: "bench", Short: "Benchmark one-shot runs against baselines", RunE: runBench}
}
