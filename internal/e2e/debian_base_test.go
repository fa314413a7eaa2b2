package e2e

import (
	"os"
	"testing"

	"github.com/airlockhq/airlock/internal/image"
)

// TestImageDebianBase: base "debian" bootstraps Debian (debootstrap, minbase) from Debian's
// archive into one layer, and a step runs on it; a sandbox of the result is Debian. It reaches
// the Internet (deb.debian.org) and takes about a minute (48–60 s measured), so it runs only with
// AIRLOCK_TEST_DEBOOTSTRAP=1 and skips otherwise, strict mode included (like AIRLOCK_TEST_VM=0).
func TestImageDebianBase(t *testing.T) {
	if os.Getenv("AIRLOCK_TEST_DEBOOTSTRAP") != "1" {
		t.Skip("reaches Debian's archive (deb.debian.org) and takes about a minute: set AIRLOCK_TEST_DEBOOTSTRAP=1 to run it")
	}
	e := buildEngine(t)
	b := &image.Builder{Store: images, Runner: image.EngineRunner(e, images)}
	res, err := build(t, b, &image.BuildSpec{Name: "test/debian-built:1", Base: image.DebianBase, Steps: []image.BuildStep{
		{RunCommands: []string{"cp /etc/debian_version /etc/airlock-built"}},
	}})
	if err != nil {
		for _, ev := range res.events {
			if ev.Type == "log" {
				t.Log(ev.Line)
			}
		}
		t.Fatalf("build on debian: %v", err)
	}
	t.Logf("debian bootstrap and one step: %v", res.elapsed)
	out, stderr, code := sh(t, imageSandboxOf(t, "debian-built", res.img), "cat /etc/airlock-built; . /etc/os-release; echo $VERSION_CODENAME")
	if want := "12"; code != 0 || len(out) < 2 || out[:2] != want {
		t.Errorf("got %q (exit %d, %q), want Debian %s's version and codename", out, code, stderr, want)
	}
}
