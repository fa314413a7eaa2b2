package cli

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/airlockhq/airlock/internal/image"
	"github.com/airlockhq/airlock/internal/server"
)

// defaultStateDir is the daemon's state directory when --state-dir is not given (as the
// native runtime's default).
const defaultStateDir = "/var/lib/airlock"

// imageDir is the image store of a state directory.
func imageDir(stateDir string) string {
	if stateDir == "" {
		stateDir = defaultStateDir
	}
	return filepath.Join(stateDir, "images")
}

// imageCmd manages the image store of a state directory directly, not through a daemon: the
// store is flock-safe to share with a daemon running on it, and import and export then read
// and write local files without streaming them through the API.
func imageCmd() *cobra.Command {
	var stateDir string
	open := func() (*image.Store, error) {
		return image.Open(image.Config{Dir: imageDir(stateDir), Logger: warnLogger()})
	}
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Manage images: ls, pull, import, export, tag, rm, inspect, prune",
		Long: "Manage the image store of a state directory (<state-dir>/images) directly; a daemon\n" +
			"serving the same state directory sees the changes at once.",
	}
	flagEnv(cmd.PersistentFlags(), &stateDir, "state-dir", "AIRLOCK_STATE_DIR", "state directory whose image store to use (default "+defaultStateDir+")")
	cmd.AddCommand(imageLsCmd(open), imagePullCmd(open), imageImportCmd(open), imageExportCmd(open),
		imageTagCmd(open), imageRmCmd(open), imageInspectCmd(open), imagePruneCmd(open), imageBuildCmd(open))
	return cmd
}

type openStore func() (*image.Store, error)

func imageLsCmd(open openStore) *cobra.Command {
	var quiet bool
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List images",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := open()
			if err != nil {
				return err
			}
			imgs, err := s.List()
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if quiet {
				for _, img := range imgs {
					fmt.Fprintln(out, img.ShortID())
				}
				return nil
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tIMAGE ID\tLAYERS\tSIZE\tADDED")
			for _, img := range imgs {
				names := img.Names
				if len(names) == 0 {
					names = []string{"<none>"}
				}
				info := server.ImageInfo(img)
				for _, n := range names {
					fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", image.Familiar(n), img.ShortID(), len(img.Layers),
						mib(info.Size), img.Added.Local().Format(time.DateTime))
				}
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print image ids only")
	return cmd
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func imagePullCmd(open openStore) *cobra.Command {
	var (
		opts          image.PullOptions
		passwordStdin bool
	)
	cmd := &cobra.Command{
		Use:   "pull REF",
		Short: "Pull an image from a registry (name[:tag] or name@sha256:…)",
		Long: "Pull an image; a multi-arch index resolves to linux on this machine's architecture and\n" +
			"every blob is checked against its digest. Credentials: --username with the password on\n" +
			"stdin (--password-stdin) or in AIRLOCK_REGISTRY_PASSWORD, or a bearer token in\n" +
			"AIRLOCK_REGISTRY_TOKEN.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Password, opts.Token = os.Getenv("AIRLOCK_REGISTRY_PASSWORD"), os.Getenv("AIRLOCK_REGISTRY_TOKEN")
			if passwordStdin {
				line, err := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
				if err != nil && !errors.Is(err, io.EOF) {
					return fmt.Errorf("read the password: %w", err)
				}
				opts.Password = strings.TrimRight(line, "\r\n")
			}
			s, err := open()
			if err != nil {
				return err
			}
			start := time.Now()
			img, err := s.Pull(cmd.Context(), args[0], opts)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "pulled %s (%s, %d layers) in %s\n", args[0], img.ShortID(), len(img.Layers), time.Since(start).Round(time.Millisecond))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.Username, "username", "", "registry user name")
	f.BoolVar(&passwordStdin, "password-stdin", false, "read the registry password from stdin")
	f.BoolVar(&opts.Insecure, "insecure", false, "talk to the registry over plain http")
	return cmd
}

func imageImportCmd(open openStore) *cobra.Command {
	var tag string
	cmd := &cobra.Command{
		Use:   "import PATH",
		Short: "Import a docker-save tarball or an OCI layout directory",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := open()
			if err != nil {
				return err
			}
			start := time.Now()
			img, err := s.Import(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if tag != "" {
				if err := s.Tag(img.ID, tag); err != nil {
					return err
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "imported %s (%d layers) in %s\n", img.ShortID(), len(img.Layers), time.Since(start).Round(time.Millisecond))
			return nil
		},
	}
	cmd.Flags().StringVarP(&tag, "tag", "t", "", "name the image name[:tag]")
	return cmd
}

func imageExportCmd(open openStore) *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "export REF",
		Short: "Write an image as a docker-save tarball (docker load reads it)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := open()
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if out == "" {
				if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
					return errors.New("refusing to write a tarball to a terminal: use -o FILE or redirect stdout")
				}
				return s.Export(cmd.Context(), args[0], w)
			}
			// Written beside the target and renamed, so a failed export leaves no partial file.
			f, err := os.CreateTemp(filepath.Dir(out), ".airlock-export-*")
			if err != nil {
				return err
			}
			defer os.Remove(f.Name())
			err = s.Export(cmd.Context(), args[0], f)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
			return os.Rename(f.Name(), out)
		},
	}
	cmd.Flags().StringVarP(&out, "output", "o", "", "write to this file (default stdout)")
	return cmd
}

func imageTagCmd(open openStore) *cobra.Command {
	return &cobra.Command{
		Use:   "tag SRC DST",
		Short: "Give an image another name",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := open()
			if err != nil {
				return err
			}
			return s.Tag(args[0], args[1])
		},
	}
}

func imageRmCmd(open openStore) *cobra.Command {
	return &cobra.Command{
		Use:   "rm REF...",
		Short: "Remove image names, or images (by id or by their last name)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := open()
			if err != nil {
				return err
			}
			var errs []error
			for _, ref := range args {
				if err := s.Remove(ref); err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", ref, err))
					continue
				}
				fmt.Fprintln(cmd.OutOrStdout(), "removed", ref)
			}
			return errors.Join(errs...)
		},
	}
}

func imageInspectCmd(open openStore) *cobra.Command {
	return &cobra.Command{
		Use:   "inspect REF...",
		Short: "Print images as JSON (the API's ImageInfo)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := open()
			if err != nil {
				return err
			}
			var out []any
			for _, ref := range args {
				img, err := s.Inspect(ref)
				if err != nil {
					return err
				}
				out = append(out, server.ImageInfo(img))
			}
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetIndent("", "  ")
			return enc.Encode(out)
		},
	}
}

func imagePruneCmd(open openStore) *cobra.Command {
	return &cobra.Command{
		Use:   "prune",
		Short: "Remove images without a name and not in use, and layers no image uses",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := open()
			if err != nil {
				return err
			}
			res, err := s.Prune(cmd.Context())
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed %d images, %d layers, %d blobs: %s freed\n", len(res.Images), res.Layers, res.Blobs, mib(res.Bytes))
			return nil
		},
	}
}
