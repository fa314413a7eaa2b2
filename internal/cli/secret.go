package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

// secretCmd manages the named secrets of the caller's API key on a daemon.
func secretCmd() *cobra.Command {
	o := &clientOptions{server: "http://127.0.0.1:8080"}
	cmd := &cobra.Command{
		Use:   "secret",
		Short: "Manage named secrets (environment variables stored encrypted by the daemon)",
		Long: "Named secrets are environment variables the daemon stores for your API key, encrypted at\n" +
			"rest, and injects only into the runs, sandboxes and sessions that name them (\"secrets\":\n" +
			"[\"NAME\"] in the request). Their values are never shown again.",
	}
	create := &cobra.Command{
		Use:   "create NAME VAR[=VALUE]...",
		Short: "Create or replace a secret; VAR alone takes its value from your environment",
		Long: "Stores the variables under NAME. VAR=VALUE gives a value on the command line (it may stay in\n" +
			"your shell's history); VAR alone takes the value of VAR in this command's environment.",
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			values, err := secretValues(args[1:], os.LookupEnv)
			if err != nil {
				return err
			}
			info, err := o.client().CreateSecret(cmd.Context(), args[0], values)
			if err != nil {
				return fmt.Errorf("create secret %s: %w", args[0], err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "secret %s: %s\n", info.Name, strings.Join(info.Keys, ", "))
			return nil
		},
	}
	var asJSON bool
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List your secrets and their variables' names",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			list, err := o.client().Secrets(cmd.Context())
			if err != nil {
				return fmt.Errorf("list secrets: %w", err)
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(list)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tVARIABLES\tUPDATED")
			for _, s := range list {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", s.Name, strings.Join(s.Keys, ","), s.UpdatedAt.Format("2006-01-02 15:04:05"))
			}
			return tw.Flush()
		},
	}
	ls.Flags().BoolVar(&asJSON, "json", false, "print the list as JSON")
	rm := &cobra.Command{
		Use:   "rm NAME...",
		Short: "Delete secrets",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, n := range args {
				if err := o.client().DeleteSecret(cmd.Context(), n); err != nil {
					return fmt.Errorf("delete secret %s: %w", n, err)
				}
			}
			return nil
		},
	}
	bindClientFlags(cmd.PersistentFlags(), o, "airlock daemon URL")
	cmd.AddCommand(create, ls, rm)
	return cmd
}

// secretValues turns VAR=VALUE and VAR arguments into variables, VAR alone taking its value
// from lookup (the environment).
func secretValues(args []string, lookup func(string) (string, bool)) (map[string]string, error) {
	values := map[string]string{}
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		if !ok {
			if v, ok = lookup(k); !ok {
				return nil, fmt.Errorf("%s is not set in the environment (give %s=VALUE)", k, k)
			}
		}
		if _, dup := values[k]; dup {
			return nil, fmt.Errorf("%s is given twice", k)
		}
		values[k] = v
	}
	return values, nil
}
