package e2e

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/airlockhq/airlock/internal/image"
)

// aptBasePackages are the host packages an apt-capable base is made of (their dependency
// closure is taken from the host's dpkg database).
var aptBasePackages = []string{"apt", "dpkg", "dash", "coreutils", "tar", "gzip", "libc-bin", "sed", "grep", "findutils", "diffutils"}

// hostPackageFiles is the dependency closure of pkgs as installed on the host, and its files.
func hostPackageFiles(t *testing.T, pkgs []string) []string {
	t.Helper()
	seen := map[string]bool{}
	var files []string
	for len(pkgs) > 0 {
		p := pkgs[len(pkgs)-1]
		pkgs = pkgs[:len(pkgs)-1]
		if seen[p] {
			continue
		}
		out, err := exec.Command("dpkg-query", "-W", "-f=${Depends},${Pre-Depends}", p).Output()
		if err != nil {
			continue // a virtual or absent alternative
		}
		seen[p] = true
		for _, alt := range strings.Split(string(out), ",") {
			if f := strings.Fields(strings.Split(alt, "|")[0]); len(f) > 0 {
				pkgs = append(pkgs, strings.Split(f[0], ":")[0])
			}
		}
		list, err := exec.Command("dpkg", "-L", p).Output()
		if err != nil {
			t.Fatalf("dpkg -L %s: %v", p, err)
		}
		files = append(files, strings.Split(strings.TrimSpace(string(list)), "\n")...)
	}
	return files
}

// aptBase commits a base made of the host's apt, dpkg and their libraries (the host is Debian),
// an empty dpkg database, and a flat apt repository at /srv/repo holding one tiny package
// built here with dpkg-deb, which sources.list names as file:/srv/repo: the build needs no
// network at all.
func aptBase(t *testing.T, st *image.Store) *image.Image {
	t.Helper()
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Skip("needs dpkg-deb (a Debian host)")
	}
	deb := tinyDeb(t)
	f, err := os.CreateTemp(t.TempDir(), "base-*.tar")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	have := map[string]bool{}
	var dir func(string)
	dir = func(d string) {
		if d == "." || d == "/" || d == "" || have[d] {
			return
		}
		dir(path.Dir(d))
		have[d] = true
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755})
	}
	file := func(name string, mode int64, body []byte) {
		dir(path.Dir(name))
		have[name] = true
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(body))})
		tw.Write(body)
	}
	for _, l := range []string{"bin", "sbin", "lib", "lib64"} {
		have[l] = true
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: l, Linkname: "usr/" + l, Mode: 0o777})
	}
	for _, p := range hostPackageFiles(t, aptBasePackages) {
		if strings.HasPrefix(p, "/usr/share/doc") || strings.HasPrefix(p, "/usr/share/man") || strings.HasPrefix(p, "/usr/share/locale") {
			continue
		}
		realDir, err := filepath.EvalSymlinks(filepath.Dir(p))
		if err != nil {
			continue
		}
		name := strings.TrimPrefix(filepath.Join(realDir, filepath.Base(p)), "/")
		fi, err := os.Lstat("/" + name)
		if err != nil || have[name] || fi.IsDir() {
			continue
		}
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			target, _ := os.Readlink("/" + name)
			dir(path.Dir(name))
			have[name] = true
			tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777})
		case fi.Mode().IsRegular():
			body, err := os.ReadFile("/" + name)
			if err != nil {
				t.Fatal(err)
			}
			file(name, int64(fi.Mode().Perm()), body)
		}
	}
	for _, d := range []string{"var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/apt/lists/partial", "var/cache/apt/archives/partial",
		"var/log/apt", "etc/apt/apt.conf.d", "etc/apt/preferences.d", "etc/apt/sources.list.d", "etc/dpkg/dpkg.cfg.d", "tmp", "root"} {
		dir(d)
	}
	file("var/lib/dpkg/status", 0o644, nil)
	file("var/lib/dpkg/available", 0o644, nil)
	file("etc/apt/sources.list", 0o644, []byte("deb [trusted=yes] file:/srv/repo ./\n"))
	sum := sha256.Sum256(deb)
	packages := fmt.Sprintf("Package: airlock-hello\nVersion: 1.0\nArchitecture: all\nMaintainer: Airlock <test@localhost>\n"+
		"Description: a package of the build test\nFilename: ./airlock-hello_1.0_all.deb\nSize: %d\nSHA256: %s\n\n", len(deb), hex.EncodeToString(sum[:]))
	file("srv/repo/airlock-hello_1.0_all.deb", 0o644, deb)
	file("srv/repo/Packages", 0o644, []byte(packages))
	psum := sha256.Sum256([]byte(packages))
	file("srv/repo/Release", 0o644, []byte(fmt.Sprintf("Origin: airlock-test\nLabel: airlock-test\nSuite: test\nCodename: test\nArchitectures: all amd64\n"+
		"SHA256:\n %s %d Packages\n", hex.EncodeToString(psum[:]), len(packages))))
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	img, err := st.Commit(t.Context(), nil, f, "test/apt-base:1")
	if err != nil {
		t.Fatalf("commit the apt base: %v", err)
	}
	return img
}

// tinyDeb builds airlock-hello_1.0_all.deb: /usr/bin/airlock-hello prints a line.
func tinyDeb(t *testing.T) []byte {
	t.Helper()
	root := filepath.Join(t.TempDir(), "pkg")
	for p, body := range map[string]string{
		"DEBIAN/control": "Package: airlock-hello\nVersion: 1.0\nArchitecture: all\nMaintainer: Airlock <test@localhost>\n" +
			"Description: a package of the build test\n",
		"usr/bin/airlock-hello": "#!/bin/sh\necho hello from a deb\n",
	} {
		if err := os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, p), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(filepath.Join(root, "DEBIAN/control"), 0o644)
	out := filepath.Join(t.TempDir(), "airlock-hello_1.0_all.deb")
	if b, err := exec.Command("dpkg-deb", "--root-owner-group", "--build", root, out).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb: %v: %s", err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestImageBuildApt: apt_install then run_commands on a Debian-tools base installs a package
// from a flat repository inside the image (file:, no network) as the image's root; sandboxes of
// the result run it; building again reuses both layers.
func TestImageBuildApt(t *testing.T) {
	mustEngine(t)
	st, err := image.Open(image.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	base := aptBase(t, st)
	runner := &buildRunner{rt: rt, tmp: t.TempDir()}
	b := &image.Builder{Store: st, Runner: runner}
	sp := &image.BuildSpec{Name: "test/apt-built:1", Base: base.ID, Steps: []image.BuildStep{
		{AptInstall: []string{"airlock-hello"}},
		{RunCommands: []string{"mkdir -p /opt", "airlock-hello > /opt/said.txt", "dpkg-query -W -f='${Status}' airlock-hello >> /opt/said.txt"}},
	}}
	first, err := build(t, b, sp)
	if err != nil {
		for _, e := range first.events {
			if e.Type == "log" {
				t.Log(e.Line)
			}
		}
		t.Fatalf("build: %v", err)
	}
	t.Logf("apt build: %v", first.elapsed)
	sb := imageSandboxOf(t, "apt-built", first.img)
	if out, stderr, code := sh(t, sb, "airlock-hello; cat /opt/said.txt"); code != 0 || out != "hello from a deb\nhello from a deb\ninstall ok installed" {
		t.Errorf("got %q (exit %d, %q), want the package's output and its dpkg status", out, code, stderr)
	}
	again, err := build(t, b, sp)
	if err != nil {
		t.Fatalf("rebuild: %v", err)
	}
	if got, want := fmt.Sprint(again.cached), "[true true]"; got != want {
		t.Errorf("rebuild cached %s, want %s", got, want)
	}
	t.Logf("apt cached rebuild: %v", again.elapsed)
}
