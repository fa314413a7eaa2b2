package native

import (
	"fmt"
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

// hostImage describes the `host` image: the host's own /usr and friends, read-only, with a
// synthesized minimal /etc. Top-level entries that are symlinks on the host (merged /usr) are
// recreated as symlinks.
func hostImage(uid, gid int) (binds []bindSpec, links [][2]string, etc map[string]string, err error) {
	add := func(rel string) error {
		src := "/" + rel
		fi, err := os.Lstat(src)
		if err != nil {
			return nil
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			target, err := os.Readlink(src)
			if err != nil {
				return fmt.Errorf("read link %s: %w", src, err)
			}
			links = append(links, [2]string{src, target})
			return nil
		}
		binds = append(binds, bindSpec{Source: src, Target: src, File: !fi.IsDir()})
		return nil
	}
	for _, d := range hostTop {
		if err := add(d); err != nil {
			return nil, nil, nil, err
		}
	}
	for _, e := range hostEtc {
		if err := add(filepath.Join("etc", e)); err != nil {
			return nil, nil, nil, err
		}
	}
	etc = map[string]string{
		"passwd": fmt.Sprintf("root:x:0:0:root:/root:/usr/sbin/nologin\n"+
			"sandbox:x:%d:%d:sandbox:/workspace:/bin/bash\n"+
			"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n", uid, gid),
		"group":         fmt.Sprintf("root:x:0:\nsandbox:x:%d:\nnogroup:x:65534:\n", gid),
		"hosts":         "127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n",
		"hostname":      "sandbox\n",
		"nsswitch.conf": "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n",
		"resolv.conf":   "",
	}
	// Drop links whose parent is synthesized (e.g. /etc entries under a bound directory).
	filtered := links[:0]
	for _, l := range links {
		if !strings.HasPrefix(l[0], "/etc/") || !isBound(binds, filepath.Dir(l[0])) {
			filtered = append(filtered, l)
		}
	}
	return binds, filtered, etc, nil
}

func isBound(binds []bindSpec, dir string) bool {
	for _, b := range binds {
		if b.Target == dir {
			return true
		}
	}
	return false
}
