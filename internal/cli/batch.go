package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/airlockhq/airlock/api"
)

// batchCmd submits and follows async batches (POST /v1/batches) on a daemon.
func batchCmd() *cobra.Command {
	o := &clientOptions{server: "http://127.0.0.1:8080"}
	cmd := &cobra.Command{
		Use:   "batch",
		Short: "Submit and follow async batches of snippets (POST /v1/batches)",
		Long: "An async batch queues up to 10,000 snippets and answers its id at once; the daemon (or every\n" +
			"node of a cluster) runs them as it has room, keeps the results for the retention period,\n" +
			"and POSTs each completion to a webhook when one is given.",
	}
	var webhook, secret, retention string
	submit := &cobra.Command{
		Use:   "submit FILE|-",
		Short: "Queue a batch: FILE (or - for stdin) holds a JSON array of snippets or a whole request",
		Long: "FILE holds either a JSON array of snippets ([{\"language\":\"python\",\"code\":\"print(1)\"}, …])\n" +
			"or a whole request ({\"snippets\":[…],\"webhook\":{…},\"retention\":\"24h\"}). Prints the batch's\n" +
			"status as JSON: its id, and the webhook secret the daemon made when none was given.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := readBatch(cmd.InOrStdin(), args[0])
			if err != nil {
				return err
			}
			if webhook != "" {
				req.Webhook = &api.Webhook{URL: webhook, Secret: secret}
			}
			if retention != "" {
				req.Retention = retention
			}
			st, err := o.client().SubmitBatch(cmd.Context(), req)
			if err != nil {
				return fmt.Errorf("submit batch: %w", err)
			}
			return printJSON(cmd.OutOrStdout(), st)
		},
	}
	submit.Flags().StringVar(&webhook, "webhook", "", "POST each completion to this http(s) URL")
	submit.Flags().StringVar(&secret, "webhook-secret", "", "sign the webhook deliveries with this secret (default: one the daemon makes)")
	submit.Flags().StringVar(&retention, "retention", "", "keep the batch and its results this long (default 24h, at most 168h)")
	var after, limit int
	get := &cobra.Command{
		Use:   "get ID",
		Short: "Print a batch's status, counts and a page of its results in the batch's order, as JSON",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := o.client().Batch(cmd.Context(), args[0], after, limit)
			if err != nil {
				return fmt.Errorf("batch %s: %w", args[0], err)
			}
			return printJSON(cmd.OutOrStdout(), st)
		},
	}
	get.Flags().IntVar(&after, "after", -1, "results of indexes after this one")
	get.Flags().IntVar(&limit, "limit", 100, "at most this many results (0 for counts only, at most 1000)")
	wait := &cobra.Command{
		Use:   "wait ID",
		Short: "Print each result as an NDJSON line as it completes, until the batch is complete",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := o.client()
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetEscapeHTML(false)
			if err := c.BatchResults(cmd.Context(), args[0], true, func(it api.BatchItem) error { return enc.Encode(it) }); err != nil {
				return fmt.Errorf("batch %s: %w", args[0], err)
			}
			st, err := c.Batch(cmd.Context(), args[0], -1, 0)
			if err != nil {
				return fmt.Errorf("batch %s: %w", args[0], err)
			}
			n := st.Counts
			fmt.Fprintf(cmd.ErrOrStderr(), "batch %s %s: %d done, %d failed, %d canceled of %d\n", st.ID, st.Status, n.Done, n.Failed, n.Canceled, st.Total)
			if st.Status != api.BatchComplete {
				return fmt.Errorf("batch %s: the results stream ended before the batch completed; run wait again", st.ID)
			}
			return nil
		},
	}
	cancel := &cobra.Command{
		Use:   "cancel ID",
		Short: "Cancel a batch's snippets not started yet",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := o.client().CancelBatch(cmd.Context(), args[0])
			if err != nil {
				return fmt.Errorf("cancel batch %s: %w", args[0], err)
			}
			return printJSON(cmd.OutOrStdout(), st)
		},
	}
	bindClientFlags(cmd.PersistentFlags(), o, "airlock daemon URL")
	cmd.AddCommand(submit, get, wait, cancel)
	return cmd
}

// readBatch reads a batch request from file (- for in): a JSON array of snippets, or a whole
// api.SubmitBatchRequest.
func readBatch(in io.Reader, file string) (api.SubmitBatchRequest, error) {
	var req api.SubmitBatchRequest
	var b []byte
	var err error
	if file == "-" {
		b, err = io.ReadAll(in)
	} else {
		b, err = os.ReadFile(file)
	}
	if err != nil {
		return req, fmt.Errorf("read batch: %w", err)
	}
	b = bytes.TrimSpace(b)
	dec := func(v any) error {
		d := json.NewDecoder(bytes.NewReader(b))
		d.DisallowUnknownFields()
		return d.Decode(v)
	}
	if len(b) > 0 && b[0] == '[' {
		err = dec(&req.Snippets)
	} else {
		err = dec(&req)
	}
	if err != nil {
		return req, fmt.Errorf("batch %s: not a JSON array of snippets nor a batch request: %w", file, err)
	}
	return req, nil
}
