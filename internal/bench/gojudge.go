package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// KeyGoJudge is the go-judge baseline's target key.
const KeyGoJudge = "gojudge"

// goJudge is an operator-provided go-judge binary (Config.GoJudge) that the bench starts on a
// loopback port with directories of its own, and stops after: the fastest self-hosted peer,
// measured in the same run as Airlock.
type goJudge struct {
	cmd *exec.Cmd
	url string
	dir string
	// cgroupPrefix is go-judge's -cgroup-prefix, removed after it exits.
	cgroupPrefix string
	client       *http.Client
	waited       chan struct{} // closed when the process has been reaped
}

// startGoJudge starts bin and waits until it answers. Its working directory is a fresh
// temporary one (so it finds no mount.yaml or seccomp.yaml of the caller's), its file store
// another inside it, its cgroups under a prefix of this process's own.
func startGoJudge(ctx context.Context, bin string) (_ *goJudge, err error) {
	dir, err := os.MkdirTemp("", "airlock-bench-gojudge-")
	if err != nil {
		return nil, fmt.Errorf("go-judge directory: %w", err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("go-judge port: %w", err)
	}
	addr := ln.Addr().String()
	ln.Close()
	if err := os.Mkdir(filepath.Join(dir, "files"), 0o700); err != nil {
		return nil, fmt.Errorf("go-judge directory: %w", err)
	}
	prefix := "airlock-bench-gojudge-" + strconv.Itoa(os.Getpid())
	cmd := exec.Command(bin, "-http-addr", addr, "-dir", filepath.Join(dir, "files"),
		"-cgroup-prefix", prefix, "-silent")
	cmd.Dir = dir
	logf, err := os.Create(filepath.Join(dir, "go-judge.log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start go-judge: %w", err)
	}
	g := &goJudge{cmd: cmd, url: "http://" + addr, dir: dir, cgroupPrefix: prefix, waited: make(chan struct{}),
		client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}}
	go func() { cmd.Wait(); close(g.waited) }()
	deadline := time.Now().Add(15 * time.Second)
	for {
		req, _ := http.NewRequestWithContext(ctx, "GET", g.url+"/version", nil)
		resp, err := g.client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return g, nil
			}
		}
		select {
		case <-g.waited:
			b, _ := os.ReadFile(filepath.Join(dir, "go-judge.log"))
			return nil, fmt.Errorf("go-judge exited at start: %s", bytes.TrimSpace(b))
		default:
		}
		if time.Now().After(deadline) {
			g.stop()
			return nil, errors.New("go-judge did not answer within 15 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// goJudgeRun is the body of go-judge's POST /run for python3 -c 'print(1)', with Airlock's
// default limits (512 MiB, 256 processes, a 30 s clock) and the same environment as the
// baselines.
var goJudgeRun = func() []byte {
	b, _ := json.Marshal(map[string]any{"cmd": []map[string]any{{
		"args": []string{"/usr/bin/python3", "-c", printCode}, "env": hostEnv(),
		"files":    []map[string]any{{"content": ""}, {"name": "stdout", "max": 1 << 20}, {"name": "stderr", "max": 1 << 20}},
		"cpuLimit": int64(30 * time.Second), "clockLimit": int64(30 * time.Second),
		"memoryLimit": 512 << 20, "procLimit": 256,
	}}})
	return b
}()

// run sends print(1) through go-judge's /run and checks the answer.
func (g *goJudge) run(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, "POST", g.url+"/run", bytes.NewReader(goJudgeRun))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := g.client.Do(req)
	if err != nil {
		return fmt.Errorf("go-judge /run: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("go-judge /run: %w", err)
	}
	var out []struct {
		Status     string            `json:"status"`
		ExitStatus int               `json:"exitStatus"`
		Files      map[string]string `json:"files"`
	}
	if err := json.Unmarshal(body, &out); err != nil || len(out) != 1 {
		return fmt.Errorf("go-judge /run answered %d %q", resp.StatusCode, body)
	}
	if out[0].Status != "Accepted" || out[0].Files["stdout"] != wantOutput {
		return fmt.Errorf("go-judge print(1): status %s, exit %d, stdout %q, stderr %q", out[0].Status,
			out[0].ExitStatus, out[0].Files["stdout"], out[0].Files["stderr"])
	}
	return nil
}

// stop ends go-judge (SIGTERM, then SIGKILL after 10 s) and removes its directories.
func (g *goJudge) stop() {
	g.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(10 * time.Second)
	select {
	case <-g.waited:
	case <-t.C:
		g.cmd.Process.Kill()
		<-g.waited
	}
	t.Stop()
	g.client.CloseIdleConnections()
	os.RemoveAll(g.dir)
	removeCgroupTrees(g.cgroupPrefix)
}

// removeCgroupTrees removes the (empty) cgroup directories go-judge made under name in every
// hierarchy, deepest first: go-judge leaves them behind when it exits.
func removeCgroupTrees(name string) {
	roots, _ := filepath.Glob("/sys/fs/cgroup/*/" + name)
	roots = append(roots, "/sys/fs/cgroup/"+name)
	for _, root := range roots {
		var dirs []string
		filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			os.Remove(dirs[i]) // rmdir: fails, harmlessly, on a group that still has tasks
		}
	}
}
