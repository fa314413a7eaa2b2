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
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/airlockhq/airlock/api"
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
	pkgs = slices.Clone(pkgs) // a stack below: appending must never write into the caller's array
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

// TestImageBuildApt: on a real daemon, through POST /v1/images (`airlock image build -f
// spec.yaml --server`), apt_install then run_commands on a Debian-tools base installs a package
// from a flat repository inside the image (file:, so nothing leaves the sandbox although the
// apt step has internet mode) as the image's root; a sandbox of the result, made through the
// API, runs it; building again reuses both layers and starts no sandbox. On an engine that
// offers no network the apt step fails clearly, before any sandbox is made.
func TestImageBuildApt(t *testing.T) {
	mustEngine(t)
	t.Run("no network offered", func(t *testing.T) {
		e := buildEngine(t)
		base := aptBase(t, images)
		b := &image.Builder{Store: images, Runner: image.EngineRunner(e, images)}
		_, err := build(t, b, &image.BuildSpec{Name: "test/apt-offline:1", Base: base.ID,
			Steps: []image.BuildStep{{AptInstall: []string{"airlock-hello"}}}})
		if got, want := fmt.Sprint(err), "step 1 (apt_install): this step needs network mode internet, which this server does not offer (it offers block)"; !strings.HasPrefix(got, want) {
			t.Errorf("got error %q, want it to start %q", got, want)
		}
	})

	state, st := stateWithStore(t, "airlock-imgbuild-")
	aptBase(t, st)
	cg := fmt.Sprintf("airlock-imgbuild-%d", os.Getpid())
	t.Cleanup(func() { removeCgroupRoot(cg) })
	d := startDaemon(t, state, cg, freeAddr(t))
	t.Cleanup(func() {
		if d.cmd.ProcessState == nil {
			d.stop()
		}
	})
	spec := filepath.Join(t.TempDir(), "spec.yaml")
	if err := os.WriteFile(spec, []byte(`name: test/apt-built:1
base: test/apt-base:1
steps:
  - apt_install: [airlock-hello]
  - run_commands:
      - mkdir -p /opt
      - airlock-hello > /opt/said.txt
      - dpkg-query -W -f='${Status}' airlock-hello >> /opt/said.txt
`), 0o644); err != nil {
		t.Fatal(err)
	}
	buildCLI := func(what string) (string, time.Duration) {
		t.Helper()
		start := time.Now()
		out, stderr, code := runCLI(t, "", "image build -f "+spec+" --server "+d.url)
		elapsed := time.Since(start)
		if code != 0 {
			t.Fatalf("%s: exit %d: %s%s", what, code, out, stderr)
		}
		return out, elapsed
	}
	first, firstTime := buildCLI("build")
	for _, want := range []string{"[1/2] apt_install (running)", "[2/2] run_commands (running)", "built test/apt-built:1 sha256:"} {
		if !strings.Contains(first, want) {
			t.Errorf("build output lacks %q:\n%s", want, first)
		}
	}
	t.Logf("apt build through the daemon: %v", firstTime)

	var sb api.SandboxInfo
	if code := postJSON(t, d.url+"/v1/sandboxes", `{"image":"test/apt-built:1","timeout":60}`, &sb); code != 201 {
		t.Fatalf("create a sandbox of the built image: %d", code)
	}
	var res api.ExecResult
	postJSON(t, d.url+"/v1/sandboxes/"+sb.ID+"/exec", `{"cmd":["/bin/sh","-c","airlock-hello; cat /opt/said.txt"]}`, &res)
	if got, want := res.Stdout, "hello from a deb\nhello from a deb\ninstall ok installed"; got != want {
		t.Errorf("got %q (exit %d, %q), want the package's output and its dpkg status", got, res.ExitCode, res.Stderr)
	}

	again, againTime := buildCLI("rebuild")
	if got, want := strings.Count(again, "(cached)"), 2; got != want {
		t.Errorf("rebuild: %d steps cached, want %d:\n%s", got, want, again)
	}
	t.Logf("apt cached rebuild through the daemon: %v", againTime)
}
