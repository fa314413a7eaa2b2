package native

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// hostEtc lists the parts of the host's /etc that a program may need and that hold no secret:
// the dynamic linker cache, alternatives symlinks, CA certificates, Python and matplotlib
// configuration, fonts. Nothing else of /etc enters a sandbox; passwd, group, hosts and the
// resolver configuration are synthesized.
var hostEtc = []string{
	"alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "ssl/certs",
	"ca-certificates.conf", "matplotlibrc", "python3", "python3.11", "python3.12", "python3.13",
	"mime.types", "localtime", "timezone", "os-release", "debian_version", "protocols",
	"services", "bash.bashrc", "inputrc", "gai.conf", "fonts", "magic", "papersize",
}

// hostTop lists the top-level directories of the `host` image, bound read-only.
var hostTop = []string{"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"}

// hostImage describes the `host` image: the host's own /usr and friends, bound read-only
// (top-level entries that are symlinks on the host, as with merged /usr, are recreated as
// symlinks), and an /etc directory the daemon assembles once, in etcDir: copies of the hostEtc
// entries plus synthesized passwd, group, hosts, hostname, nsswitch.conf and resolv.conf. Each
// sandbox binds etcDir read-only: one mount instead of one per entry.
func hostImage(etcDir string, uid, gid int) (binds []bindSpec, links [][2]string, err error) {
	for _, d := range hostTop {
		src := "/" + d
		fi, err := os.Lstat(src)
		if err != nil {
			continue
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			target, err := os.Readlink(src)
			if err != nil {
				return nil, nil, fmt.Errorf("read link %s: %w", src, err)
			}
			links = append(links, [2]string{src, target})
			continue
		}
		binds = append(binds, bindSpec{Source: src, Target: src})
	}
	if err := buildEtc(etcDir, uid, gid); err != nil {
		return nil, nil, fmt.Errorf("assemble /etc: %w", err)
	}
	binds = append(binds, bindSpec{Source: etcDir, Target: "/etc"})
	return binds, links, nil
}

// buildEtc writes the sandboxes' /etc into dir, replacing what was there. It rewrites dir in
// place, keeping the inodes of what is already there, rather than making it anew: sandboxes a
// previous daemon left running, which this one adopts, have dir bound as their /etc (and their
// own resolv.conf bound over dir's), and a new directory or file would leave them an empty
// /etc (no passwd, no resolver) for the rest of their lives.
func buildEtc(dir string, uid, gid int) error {
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	// Entries an older daemon wrote that this one does not (say, a host file since removed) go.
	keep := map[string]bool{"passwd": true, "group": true, "hosts": true, "hostname": true, "nsswitch.conf": true, "resolv.conf": true}
	for _, e := range hostEtc {
		keep[strings.SplitN(e, "/", 2)[0]] = true
	}
	old, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range old {
		if !keep[e.Name()] {
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	for _, e := range hostEtc {
		if err := copyTree(filepath.Join("/etc", e), filepath.Join(dir, e)); err != nil {
			return err
		}
	}
	files := map[string]string{
		"passwd": fmt.Sprintf("root:x:0:0:root:/root:/usr/sbin/nologin\n"+
			"sandbox:x:%d:%d:sandbox:/workspace:/bin/bash\n"+
			"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n", uid, gid),
		"group":         fmt.Sprintf("root:x:0:\nsandbox:x:%d:\nnogroup:x:65534:\n", gid),
		"hosts":         "127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n",
		"hostname":      "sandbox\n",
		"nsswitch.conf": "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n",
		"resolv.conf":   "",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// copyTree copies src (a file, a symlink or a directory tree) to dst, keeping symlinks as
// symlinks and making everything world-readable; a missing src is skipped.
func copyTree(src, dst string) error {
	if _, err := os.Lstat(src); err != nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil // unreadable parts of the host's /etc stay out
		}
		rel, _ := filepath.Rel(src, p)
		out := filepath.Join(dst, rel)
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return nil
			}
			if cur, err := os.Readlink(out); err == nil && cur == t {
				return nil // as it was (a rebuild over a previous daemon's /etc)
			}
			os.RemoveAll(out)
			return os.Symlink(t, out)
		case d.IsDir():
			return os.MkdirAll(out, 0o755)
		case d.Type().IsRegular():
			return copyFile(p, out)
		}
		return nil // devices, sockets, FIFOs: never
	})
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return nil
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
