package e2e

import (
	"archive/tar"
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/airlockhq/airlock/internal/engine"
)

type tarEntry struct {
	name, body, link string
	typ              byte
	mode             int64
}

func makeTar(t *testing.T, entries []tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Linkname: e.link, Size: int64(len(e.body))}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		io.WriteString(tw, e.body)
	}
	tw.Close()
	return buf.Bytes()
}

// A directory goes out of a sandbox as a tar (files with their modes, directories, a symlink
// as a symlink) and comes back into another directory with the same modes.
func TestArchiveRoundTrip(t *testing.T) {
	a := newAPIServer(t, engine.Config{})
	id := a.create(`{}`)
	a.exec(id, "sh", "-c", "mkdir -p tree/sub && printf run > tree/x.sh && chmod 750 tree/x.sh && "+
		"printf data > tree/sub/d.txt && chmod 600 tree/sub/d.txt && ln -s /etc/passwd tree/link")
	resp, err := http.Get(a.url + "/v1/sandboxes/" + id + "/files/archive?path=tree")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("download: %d %s", resp.StatusCode, b)
	}
	got := map[string]string{}
	var files []tarEntry
	tr := tar.NewReader(resp.Body)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		got[h.Name] = string(h.Typeflag) + " " + h.Linkname + string(b)
		files = append(files, tarEntry{name: h.Name, typ: h.Typeflag, mode: h.Mode, body: string(b), link: h.Linkname})
		if h.Name == "x.sh" && h.Mode != 0o750 {
			t.Errorf("x.sh mode %o, want 750", h.Mode)
		}
	}
	want := map[string]string{"x.sh": "0 run", "sub/": "5 ", "sub/d.txt": "0 data", "link": "2 /etc/passwd"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("entry %q: got %q, want %q (all: %q)", k, got[k], v, got)
		}
	}
	// The symlink's target is not followed: no /etc/passwd content in the archive.
	for k, v := range got {
		if strings.Contains(v, "root:") {
			t.Errorf("entry %q has /etc/passwd's content", k)
		}
	}
	req, _ := http.NewRequest("PUT", a.url+"/v1/sandboxes/"+id+"/files/archive?path=copy", bytes.NewReader(makeTar(t, files)))
	up, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	up.Body.Close()
	if up.StatusCode != 200 {
		t.Fatalf("upload: %d", up.StatusCode)
	}
	res := a.exec(id, "sh", "-c", "cd copy && stat -c '%n %a' x.sh sub/d.txt && readlink link && cat x.sh sub/d.txt")
	if wantOut := "x.sh 750\nsub/d.txt 600\n/etc/passwd\nrundata"; res.Stdout != wantOut {
		t.Errorf("unpacked: got %q, want %q", res.Stdout, wantOut)
	}
}

// A hostile tar (an absolute name, a .. escape, a device node, a hard link, a file written
// through a symlink the archive itself made) is refused with 400, and nothing lands outside the
// target directory.
func TestArchiveHostileRefused(t *testing.T) {
	a := newAPIServer(t, engine.Config{})
	id := a.create(`{}`)
	tests := []struct {
		name    string
		entries []tarEntry
	}{
		{"absolute", []tarEntry{{name: "/tmp/abs", body: "x", typ: tar.TypeReg, mode: 0o644}}},
		{"dotdot", []tarEntry{{name: "a/../../escaped", body: "x", typ: tar.TypeReg, mode: 0o644}}},
		{"device", []tarEntry{{name: "null", typ: tar.TypeChar, mode: 0o666}}},
		{"through its own symlink", []tarEntry{{name: "l", link: "/tmp", typ: tar.TypeSymlink, mode: 0o777},
			{name: "l/escaped", body: "x", typ: tar.TypeReg, mode: 0o644}}},
		{"hard link", []tarEntry{{name: "h", link: "/etc/shadow", typ: tar.TypeLink, mode: 0o644}}},
		{"not a tar", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			body := []byte("this is not a tar archive, just some text that is long enough to be read as a header block ...")
			body = append(body, make([]byte, 512)...)
			if tc.entries != nil {
				body = makeTar(t, tc.entries)
			}
			req, _ := http.NewRequest("PUT", a.url+"/v1/sandboxes/"+id+"/files/archive?path=in/dir", bytes.NewReader(body))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 400 {
				t.Errorf("got %d %s, want 400", resp.StatusCode, b)
			}
		})
	}
	res := a.exec(id, "sh", "-c", "ls /tmp/abs /tmp/escaped in/escaped escaped in/dir/null in/dir/h 2>/dev/null; true")
	if res.Stdout != "" {
		t.Errorf("files escaped: %q", res.Stdout)
	}
}
