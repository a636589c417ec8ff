package hooks_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap/zaptest"

	"github.com/patchagent/patchagent/hooks"
	"github.com/patchagent/patchagent/hooks/hookstest"
)

const (
	bin     = "/opt/pm2/bin/pm2"
	binPath = "/opt/node/bin:/usr/local/bin:/usr/bin:/bin"
	secret  = "hunter2-secret"
)

var appUser = hooks.AppUser{Name: "app", UID: 1001, GID: 1001, Groups: []uint32{1001, 27}, Home: "/home/app"}

// inst is one pm2 instance in a jlist fixture.
type inst struct {
	name     string
	id, pid  int
	status   string
	restarts int
	uptime   int64
	mode     string
}

// jlist renders instances the way pm2 7 does, with the app's environment
// (holding a secret) among pm2_env's keys.
func jlist(insts ...inst) string {
	var out []map[string]any
	for _, in := range insts {
		mode := in.mode
		if mode == "" {
			mode = "fork_mode"
		}
		out = append(out, map[string]any{
			"pid": in.pid, "name": in.name, "pm_id": in.id,
			"monit": map[string]any{"memory": 4096, "cpu": 0},
			"pm2_env": map[string]any{
				"status": in.status, "pm_uptime": in.uptime, "restart_time": in.restarts,
				"unstable_restarts": 0, "exec_mode": mode, "username": "app",
				"DB_PASSWORD": secret, "PATH": "/usr/bin",
				"env": map[string]any{"DB_PASSWORD": secret},
			},
		})
	}
	if out == nil {
		return "[]"
	}
	b, err := json.Marshal(out)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// proc is the Process that inst should parse to.
func proc(in inst) hooks.Process {
	mode := in.mode
	if mode == "" {
		mode = "fork_mode"
	}
	p := hooks.Process{Name: in.name, ID: in.id, PID: in.pid, Status: in.status, Restarts: in.restarts, ExecMode: mode}
	if in.uptime > 0 {
		p.Started = time.UnixMilli(in.uptime)
	}
	return p
}

func procs(ins ...inst) []hooks.Process {
	var out []hooks.Process
	for _, in := range ins {
		out = append(out, proc(in))
	}
	return out
}

// fakeDaemon makes a PM2_HOME whose daemon looks alive: pm2.pid names this
// test process and rpc.sock accepts connections.
func fakeDaemon(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pa-pm2-") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	writePid(t, dir, os.Getpid())
	listen(t, dir)
	return dir
}

func writePid(t *testing.T, dir string, pid int) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "pm2.pid"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
		t.Fatal(err)
	}
}

func listen(t *testing.T, dir string) *net.UnixListener {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "rpc.sock"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return ln
}

func newPM2(t *testing.T, run hooks.Runner, pm2Home string) *hooks.PM2 {
	return hooks.NewPM2(zaptest.NewLogger(t), run, hooks.PM2Config{
		Bin: bin, User: appUser, Home: pm2Home, Path: binPath,
		CallTimeout: 7 * time.Second, StopWait: 300 * time.Millisecond, Poll: 10 * time.Millisecond,
	})
}

// pm2Cmd is the exact command PM2 must run for args.
func pm2Cmd(pm2Home string, args ...string) hooks.Cmd {
	return hooks.Cmd{
		Name: bin, Args: args, Dir: "/home/app",
		Env:  []string{"HOME=/home/app", "PM2_HOME=" + pm2Home, "PATH=" + binPath},
		Cred: &hooks.Credential{UID: 1001, GID: 1001, Groups: []uint32{1001, 27}},
	}
}

func assertCmds(t *testing.T, f *hookstest.FakeRunner, want ...hooks.Cmd) {
	t.Helper()
	if diff := cmp.Diff(want, f.Cmds()); diff != "" {
		t.Errorf("commands run (-want +got):\n%s", diff)
	}
}

func TestProcesses(t *testing.T) {
	web0 := inst{name: "web", id: 0, pid: 4242, status: "online", restarts: 2, uptime: 1764115200123}
	web1 := inst{name: "web", id: 1, pid: 4243, status: "online", uptime: 1764115200456, mode: "cluster_mode"}
	web1.mode, web0.mode = "cluster_mode", "cluster_mode"
	worker := inst{name: "worker", id: 2, pid: 5000, status: "stopped"}
	banner := "\n                        -------------\n\n__/\\\\\\\\\\\\\\\\\\\\\\\\\\____/\\\\\\\\____\n" +
		"[PM2] Spawning PM2 daemon with pm2_home=/home/app/.pm2\n[PM2] PM2 Successfully daemonized\n"
	tests := []struct {
		name    string
		reply   hookstest.Reply
		want    []hooks.Process
		wantErr error  // errors.Is target
		errHas  string // substring of a non-sentinel error
	}{
		{name: "single instance", reply: hookstest.OK(jlist(web0, worker)), want: procs(web0)},
		{name: "banner before the JSON", reply: hookstest.OK(banner + jlist(worker, web0)), want: procs(web0)},
		{name: "noise after the JSON", reply: hookstest.OK(jlist(web0) + "\n[PM2][WARN] Current process list is not synchronized\n"), want: procs(web0)},
		{name: "cluster mode, two instances", reply: hookstest.OK(jlist(web0, worker, web1)), want: procs(web0, web1)},
		{name: "unknown app", reply: hookstest.OK(jlist(worker)), wantErr: hooks.ErrUnknownApp},
		{name: "no processes at all", reply: hookstest.OK(banner + "[]\n"), wantErr: hooks.ErrUnknownApp},
		{name: "truncated JSON", reply: hookstest.OK(jlist(web0)[:200]), errHas: "parsing pm2 jlist"},
		{name: "wrong field type", reply: hookstest.OK(`[{"name":"web","pm_id":"zero","pm2_env":{"DB_PASSWORD":"` + secret + `"}}]`), errHas: "parsing pm2 jlist"},
		{name: "no JSON array", reply: hookstest.OK("[PM2] something else\n"), errHas: "no JSON array"},
		{name: "pm2 fails", reply: hookstest.Exit(bin, 1, "[PM2][ERROR] broken"), errHas: "exited with code 1: [PM2][ERROR] broken"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			home := fakeDaemon(t)
			f := (&hookstest.FakeRunner{}).On(bin, "jlist", tt.reply)
			got, err := newPM2(t, f, home).Processes(t.Context(), "web")
			assertCmds(t, f, pm2Cmd(home, "jlist"))
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Processes (-want +got):\n%s", diff)
			}
			switch {
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) {
					t.Errorf("err = %v, want %v", err, tt.wantErr)
				}
			case tt.errHas != "":
				if err == nil || !strings.Contains(err.Error(), tt.errHas) || errors.Is(err, hooks.ErrUnknownApp) {
					t.Errorf("err = %v, want one containing %q", err, tt.errHas)
				}
			case err != nil:
				t.Errorf("err = %v", err)
			}
			if err != nil && strings.Contains(err.Error(), secret) {
				t.Errorf("err = %q exposes the app's environment", err)
			}
			if s := fmt.Sprintf("%#v", got); strings.Contains(s, secret) {
				t.Errorf("Processes exposes the app's environment: %s", s)
			}
		})
	}
}

func TestEachCallHasItsOwnDeadline(t *testing.T) {
	home := fakeDaemon(t)
	var deadlines []time.Duration
	f := &hookstest.FakeRunner{Handler: func(ctx context.Context, c hooks.Cmd) (hooks.Result, error) {
		dl, ok := ctx.Deadline()
		if !ok {
			return hooks.Result{}, errors.New("no deadline")
		}
		deadlines = append(deadlines, time.Until(dl))
		return hooks.Result{Stdout: []byte(jlist(inst{name: "web", status: "online", pid: 1}))}, nil
	}}
	if _, err := newPM2(t, f, home).Processes(t.Context(), "web"); err != nil {
		t.Fatal(err)
	}
	if len(deadlines) != 1 || deadlines[0] > 7*time.Second || deadlines[0] < 6*time.Second {
		t.Errorf("deadlines = %v, want one of about the 7s CallTimeout", deadlines)
	}
}

// sleeper starts a process the test owns and can kill: it stands for an app
// instance.
func sleeper(t *testing.T) *exec.Cmd {
	t.Helper()
	c := exec.Command("/bin/sleep", "60")
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Process.Kill()
		c.Wait()
	})
	return c
}

func TestStop(t *testing.T) {
	for _, n := range []int{1, 2} {
		t.Run(fmt.Sprintf("%d instance(s)", n), func(t *testing.T) {
			home := fakeDaemon(t)
			var before, after []inst
			var sleepers []*exec.Cmd
			for i := range n {
				s := sleeper(t)
				sleepers = append(sleepers, s)
				before = append(before, inst{name: "web", id: i, pid: s.Process.Pid, status: "online", uptime: 1764115200000})
				after = append(after, inst{name: "web", id: i, status: "stopped", uptime: 1764115200000})
			}
			// pm2 stop kills the instances; they stay zombies (nobody has
			// waited for them yet), which counts as gone.
			stop := hookstest.OK("[PM2] Applying action stopProcessId on app [web]\n")
			stop.Do = func(hooks.Cmd) {
				for _, s := range sleepers {
					s.Process.Signal(syscall.SIGINT)
				}
			}
			f := (&hookstest.FakeRunner{}).Then(
				hookstest.OK(jlist(before...)), stop, hookstest.OK(jlist(after...)))
			got, err := newPM2(t, f, home).Stop(t.Context(), "web")
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(procs(before...), got); diff != "" {
				t.Errorf("Stop returned (-want +got):\n%s", diff)
			}
			assertCmds(t, f, pm2Cmd(home, "jlist"), pm2Cmd(home, "stop", "web", "--no-color"), pm2Cmd(home, "jlist"))
			for _, s := range sleepers {
				if hooks.PidAlive(s.Process.Pid) {
					t.Errorf("pid %d alive after Stop returned", s.Process.Pid)
				}
			}
		})
	}
}

func TestStopFailures(t *testing.T) {
	tests := []struct {
		name     string
		replies  func(pid int) []hookstest.Reply
		wantCmds [][]string
		wantErr  error
		errHas   func(pid int) string
	}{
		{
			name: "pm2 says stopped but the pid is alive",
			replies: func(pid int) []hookstest.Reply {
				return []hookstest.Reply{
					hookstest.OK(jlist(inst{name: "web", pid: pid, status: "online"})),
					hookstest.OK(""),
					hookstest.OK(jlist(inst{name: "web", status: "stopped"})),
				}
			},
			wantCmds: [][]string{{"jlist"}, {"stop", "web", "--no-color"}, {"jlist"}},
			errHas:   func(pid int) string { return fmt.Sprintf("pid(s) [%d] still alive", pid) },
		},
		{
			name: "pm2 still shows it online",
			replies: func(pid int) []hookstest.Reply {
				return []hookstest.Reply{
					hookstest.OK(jlist(inst{name: "web", pid: pid, status: "online"})),
					hookstest.OK(""),
					hookstest.OK(jlist(inst{name: "web", pid: pid, status: "online"})),
				}
			},
			wantCmds: [][]string{{"jlist"}, {"stop", "web", "--no-color"}, {"jlist"}},
			errHas:   func(pid int) string { return fmt.Sprintf("pm_id 0 online (pid %d)", pid) },
		},
		{
			name: "unknown app: nothing is stopped",
			replies: func(int) []hookstest.Reply {
				return []hookstest.Reply{hookstest.OK(jlist(inst{name: "worker", status: "online", pid: 1}))}
			},
			wantCmds: [][]string{{"jlist"}},
			wantErr:  hooks.ErrUnknownApp,
		},
		{
			name: "pm2 stop fails",
			replies: func(pid int) []hookstest.Reply {
				return []hookstest.Reply{
					hookstest.OK(jlist(inst{name: "web", pid: pid, status: "online"})),
					hookstest.Exit(bin, 1, "[PM2][ERROR] Process or Namespace web not found"),
				}
			},
			wantCmds: [][]string{{"jlist"}, {"stop", "web", "--no-color"}},
			errHas:   func(int) string { return "[PM2][ERROR] Process or Namespace web not found" },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			home := fakeDaemon(t)
			s := sleeper(t)
			pid := s.Process.Pid
			f := (&hookstest.FakeRunner{}).Then(tt.replies(pid)...)
			start := time.Now()
			got, err := newPM2(t, f, home).Stop(t.Context(), "web")
			if err == nil {
				t.Fatalf("Stop = %v, nil; want an error", got)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("err = %v, want %v", err, tt.wantErr)
			}
			if tt.errHas != nil && !strings.Contains(err.Error(), tt.errHas(pid)) {
				t.Errorf("err = %q, want it to contain %q", err, tt.errHas(pid))
			}
			if took := time.Since(start); took > 3*time.Second {
				t.Errorf("Stop took %s with StopWait 300ms", took)
			}
			var want []hooks.Cmd
			for _, a := range tt.wantCmds {
				want = append(want, pm2Cmd(home, a...))
			}
			assertCmds(t, f, want...)
		})
	}
}

func TestNoPM2WithoutDaemon(t *testing.T) {
	calls := map[string]func(*hooks.PM2, context.Context) error{
		"Processes": func(p *hooks.PM2, ctx context.Context) error { _, err := p.Processes(ctx, "web"); return err },
		"Stop":      func(p *hooks.PM2, ctx context.Context) error { _, err := p.Stop(ctx, "web"); return err },
		"Start":     func(p *hooks.PM2, ctx context.Context) error { return p.Start(ctx, "web") },
	}
	for name, call := range calls {
		t.Run(name, func(t *testing.T) {
			home := t.TempDir() // no daemon
			f := &hookstest.FakeRunner{}
			err := call(newPM2(t, f, home), t.Context())
			if !errors.Is(err, hooks.ErrDaemonNotRunning) {
				t.Errorf("err = %v, want ErrDaemonNotRunning", err)
			}
			assertCmds(t, f)
		})
	}
}

func TestStopDaemonDiesMidway(t *testing.T) {
	home := fakeDaemon(t)
	list := hookstest.OK(jlist(inst{name: "web", pid: os.Getpid(), status: "online"}))
	list.Do = func(hooks.Cmd) { os.Remove(filepath.Join(home, "pm2.pid")) }
	f := (&hookstest.FakeRunner{}).Then(list)
	_, err := newPM2(t, f, home).Stop(t.Context(), "web")
	if !errors.Is(err, hooks.ErrDaemonNotRunning) {
		t.Errorf("err = %v, want ErrDaemonNotRunning", err)
	}
	assertCmds(t, f, pm2Cmd(home, "jlist")) // no pm2 stop to spawn a daemon
}

func TestDaemonAlive(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(t *testing.T, home string)
		wantErr string // "" means alive
	}{
		{name: "no pid file", setup: func(*testing.T, string) {}, wantErr: "pm2.pid"},
		{
			name: "garbage pid file",
			setup: func(t *testing.T, home string) {
				os.WriteFile(filepath.Join(home, "pm2.pid"), []byte("nope\n"), 0o644)
			},
			wantErr: "holds no pid",
		},
		{
			name: "stale pid",
			setup: func(t *testing.T, home string) {
				c := exec.Command("/bin/true")
				if err := c.Run(); err != nil {
					t.Fatal(err)
				}
				writePid(t, home, c.Process.Pid)
				listen(t, home)
			},
			wantErr: "is gone",
		},
		{
			name: "zombie pid",
			setup: func(t *testing.T, home string) {
				s := sleeper(t)
				s.Process.Signal(syscall.SIGKILL)
				waitZombie(t, s.Process.Pid)
				writePid(t, home, s.Process.Pid)
				listen(t, home)
			},
			wantErr: "is gone",
		},
		{
			name:    "live pid, no rpc.sock",
			setup:   func(t *testing.T, home string) { writePid(t, home, os.Getpid()) },
			wantErr: "rpc.sock accepts no connection",
		},
		{
			name: "live pid, rpc.sock left by a dead daemon",
			setup: func(t *testing.T, home string) {
				writePid(t, home, os.Getpid())
				ln := listen(t, home)
				ln.SetUnlinkOnClose(false)
				ln.Close()
			},
			wantErr: "rpc.sock accepts no connection",
		},
		{
			name: "alive",
			setup: func(t *testing.T, home string) {
				writePid(t, home, os.Getpid())
				listen(t, home)
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			home, err := os.MkdirTemp("", "pa-pm2-")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(home) })
			tt.setup(t, home)
			err = newPM2(t, &hookstest.FakeRunner{}, home).DaemonAlive()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("DaemonAlive = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, hooks.ErrDaemonNotRunning) {
				t.Fatalf("DaemonAlive = %v, want ErrDaemonNotRunning", err)
			}
			for _, s := range []string{tt.wantErr, "PM2_HOME=" + home} {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("DaemonAlive = %q, want it to contain %q", err, s)
				}
			}
		})
	}
}

func TestPM2HomeDefault(t *testing.T) {
	// PM2_HOME defaults to ~/.pm2 of the app user, and the daemon is looked
	// for there.
	home := t.TempDir()
	u := appUser
	u.Home = home
	p := hooks.NewPM2(zaptest.NewLogger(t), &hookstest.FakeRunner{}, hooks.PM2Config{Bin: bin, User: u})
	err := p.DaemonAlive()
	if want := "PM2_HOME=" + filepath.Join(home, ".pm2"); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("DaemonAlive = %v, want it to name %s", err, want)
	}
}

func waitZombie(t *testing.T, pid int) {
	t.Helper()
	for range 200 {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if i := strings.LastIndexByte(string(b), ')'); i > 0 && len(b) > i+2 && b[i+2] == 'Z' {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("pid %d never became a zombie", pid)
}

func TestStart(t *testing.T) {
	on0 := inst{name: "web", id: 0, pid: 11, status: "online"}
	on1 := inst{name: "web", id: 1, pid: 12, status: "online"}
	off0 := inst{name: "web", id: 0, status: "stopped"}
	off1 := inst{name: "web", id: 1, status: "stopped"}
	tests := []struct {
		name     string
		replies  []hookstest.Reply
		wantCmds [][]string
		wantErr  error
		errHas   string
	}{
		{
			name:     "all online: never restarted",
			replies:  []hookstest.Reply{hookstest.OK(jlist(on0, on1))},
			wantCmds: [][]string{{"jlist"}},
		},
		{
			name:     "stopped",
			replies:  []hookstest.Reply{hookstest.OK(jlist(off0)), hookstest.OK("")},
			wantCmds: [][]string{{"jlist"}, {"start", "web", "--no-color"}},
		},
		{
			name:     "errored",
			replies:  []hookstest.Reply{hookstest.OK(jlist(inst{name: "web", status: "errored"})), hookstest.OK("")},
			wantCmds: [][]string{{"jlist"}, {"start", "web", "--no-color"}},
		},
		{
			name:     "cluster, all stopped: by name",
			replies:  []hookstest.Reply{hookstest.OK(jlist(off0, off1)), hookstest.OK("")},
			wantCmds: [][]string{{"jlist"}, {"start", "web", "--no-color"}},
		},
		{
			name:     "cluster, one stopped: only that pm_id",
			replies:  []hookstest.Reply{hookstest.OK(jlist(on0, off1)), hookstest.OK("")},
			wantCmds: [][]string{{"jlist"}, {"start", "1", "--no-color"}},
		},
		{
			name:     "unknown app",
			replies:  []hookstest.Reply{hookstest.OK(jlist())},
			wantCmds: [][]string{{"jlist"}},
			wantErr:  hooks.ErrUnknownApp,
		},
		{
			name:     "pm2 start fails",
			replies:  []hookstest.Reply{hookstest.OK(jlist(off0)), hookstest.Exit(bin, 1, "Script not found")},
			wantCmds: [][]string{{"jlist"}, {"start", "web", "--no-color"}},
			errHas:   "Script not found",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			home := fakeDaemon(t)
			f := (&hookstest.FakeRunner{}).Then(tt.replies...)
			err := newPM2(t, f, home).Start(t.Context(), "web")
			switch {
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) {
					t.Errorf("err = %v, want %v", err, tt.wantErr)
				}
			case tt.errHas != "":
				if err == nil || !strings.Contains(err.Error(), tt.errHas) {
					t.Errorf("err = %v, want one containing %q", err, tt.errHas)
				}
			case err != nil:
				t.Errorf("err = %v", err)
			}
			var want []hooks.Cmd
			for _, a := range tt.wantCmds {
				want = append(want, pm2Cmd(home, a...))
			}
			assertCmds(t, f, want...)
		})
	}
}

func TestArgv(t *testing.T) {
	tests := []struct {
		name string
		got  []string
		want []string
	}{
		{"jlist", hooks.JlistArgs(), []string{"jlist"}},
		{"stop", hooks.StopArgs("my-app"), []string{"stop", "my-app", "--no-color"}},
		{"start by name", hooks.StartArgs("my-app"), []string{"start", "my-app", "--no-color"}},
		{"start by id", hooks.StartArgs("3"), []string{"start", "3", "--no-color"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, tt.got); diff != "" {
				t.Errorf("argv (-want +got):\n%s", diff)
			}
		})
	}
}

func TestAppNamesPM2WouldMisread(t *testing.T) {
	for _, app := range []string{"", "all", "--help", "3", "my app", "a\nb"} {
		t.Run(fmt.Sprintf("%q", app), func(t *testing.T) {
			home := fakeDaemon(t)
			f := &hookstest.FakeRunner{}
			p := newPM2(t, f, home)
			if _, err := p.Stop(t.Context(), app); err == nil {
				t.Error("Stop succeeded")
			}
			if err := p.Start(t.Context(), app); err == nil {
				t.Error("Start succeeded")
			}
			assertCmds(t, f)
		})
	}
}

func TestFindPM2(t *testing.T) {
	// Layout: <root>/npm/bin/pm2 -> ../lib/node_modules/pm2/bin/pm2 (as npm
	// installs it), <root>/nodebin/node, <root>/empty.
	root := t.TempDir()
	mk := func(rel string, mode os.FileMode) string {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("#!/usr/bin/env node\n"), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	real := mk("npm/lib/node_modules/pm2/bin/pm2", 0o755)
	npmBin := filepath.Join(root, "npm/bin")
	os.MkdirAll(npmBin, 0o755)
	if err := os.Symlink("../lib/node_modules/pm2/bin/pm2", filepath.Join(npmBin, "pm2")); err != nil {
		t.Fatal(err)
	}
	node := mk("nodebin/node", 0o755)
	nodeDir := filepath.Dir(node)
	withNode := mk("nvm/bin/pm2", 0o755)
	mk("nvm/bin/node", 0o755)
	noExec := mk("noexec/pm2", 0o644)
	empty := filepath.Join(root, "empty")
	os.MkdirAll(empty, 0o755)
	realDir := filepath.Dir(real)
	join := func(dirs ...string) string {
		return strings.Join(append(dirs, "/usr/local/bin", "/usr/bin", "/bin"), ":")
	}

	tests := []struct {
		name       string
		configured string
		search     []string
		nodeDirs   []string
		wantBin    string
		wantPath   string
		wantErr    string
	}{
		{
			name: "configured, node next to it", configured: withNode, nodeDirs: []string{nodeDir},
			wantBin: withNode, wantPath: join(filepath.Dir(withNode)),
		},
		{
			name: "configured symlink: both directories, node elsewhere", configured: filepath.Join(npmBin, "pm2"),
			nodeDirs: []string{empty, nodeDir},
			wantBin:  filepath.Join(npmBin, "pm2"), wantPath: join(npmBin, realDir, nodeDir),
		},
		{name: "configured relative", configured: "bin/pm2", wantErr: "not an absolute path"},
		{name: "configured missing", configured: filepath.Join(empty, "pm2"), wantErr: "no such file"},
		{name: "configured not executable", configured: noExec, nodeDirs: []string{nodeDir}, wantErr: "not executable"},
		{name: "configured directory", configured: empty, wantErr: "not a regular file"},
		{
			name: "searched: first directory with pm2 wins", search: []string{empty, npmBin, filepath.Dir(withNode)},
			nodeDirs: []string{nodeDir},
			wantBin:  filepath.Join(npmBin, "pm2"), wantPath: join(npmBin, realDir, nodeDir),
		},
		{name: "searched: skips a non-executable pm2", search: []string{filepath.Dir(noExec), filepath.Dir(withNode)},
			wantBin: withNode, wantPath: join(filepath.Dir(withNode))},
		{name: "searched: none", search: []string{empty}, nodeDirs: []string{nodeDir}, wantErr: "finding pm2: not in " + empty},
		{name: "no node", configured: filepath.Join(npmBin, "pm2"), nodeDirs: []string{empty}, wantErr: "no node"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			gotBin, gotPath, err := hooks.FindPM2In(tt.configured, tt.search, tt.nodeDirs)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("FindPM2 = %q, %q, %v; want an error containing %q", gotBin, gotPath, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if gotBin != tt.wantBin || gotPath != tt.wantPath {
				t.Errorf("FindPM2 = %q, %q; want %q, %q", gotBin, gotPath, tt.wantBin, tt.wantPath)
			}
		})
	}
}

func TestFindPM2InUsersNpmGlobal(t *testing.T) {
	home := t.TempDir()
	dir := filepath.Join(home, ".npm-global", "bin")
	os.MkdirAll(dir, 0o755)
	for _, f := range []string{"pm2", "node"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("#!/bin/true\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	gotBin, gotPath, err := hooks.FindPM2(hooks.AppUser{Name: "app", Home: home}, "")
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "pm2"); gotBin != want {
		t.Errorf("bin = %q, want %q", gotBin, want)
	}
	if want := dir + ":/usr/local/bin:/usr/bin:/bin"; gotPath != want {
		t.Errorf("path = %q, want %q", gotPath, want)
	}
}

func TestStartFrom(t *testing.T) {
	home := fakeDaemon(t)
	web := inst{name: "web", id: 0, pid: 4242, status: "online"}
	other := inst{name: "other", id: 1, pid: 4243, status: "online"}
	t.Run("unknown to pm2: started from the ecosystem file", func(t *testing.T) {
		f := (&hookstest.FakeRunner{}).Then(hookstest.OK(jlist(other)), hookstest.OK(""), hookstest.OK(jlist(other, web)))
		if err := newPM2(t, f, home).StartFrom(context.Background(), "web", "/srv/web/ecosystem.config.js"); err != nil {
			t.Fatal(err)
		}
		assertCmds(t, f, pm2Cmd(home, "jlist"), pm2Cmd(home, "start", "/srv/web/ecosystem.config.js", "--only", "web", "--no-color"), pm2Cmd(home, "jlist"))
	})
	t.Run("known to pm2: refused, nothing started", func(t *testing.T) {
		f := (&hookstest.FakeRunner{}).Then(hookstest.OK(jlist(web)))
		err := newPM2(t, f, home).StartFrom(context.Background(), "web", "/srv/web/server.js")
		if err == nil || !strings.Contains(err.Error(), "pm2 knows it already") {
			t.Fatalf("err %v", err)
		}
		assertCmds(t, f, pm2Cmd(home, "jlist"))
	})
	t.Run("definition does not bring the app", func(t *testing.T) {
		f := (&hookstest.FakeRunner{}).Then(hookstest.OK("[]"), hookstest.OK(""), hookstest.OK("[]"))
		err := newPM2(t, f, home).StartFrom(context.Background(), "web", "/srv/web/server.js")
		if !errors.Is(err, hooks.ErrUnknownApp) {
			t.Fatalf("err %v", err)
		}
	})
}

func TestPIDsReadsPM2sPidFilesWithoutRunningPM2(t *testing.T) {
	home := fakeDaemon(t)
	if err := os.MkdirAll(filepath.Join(home, "pids"), 0o755); err != nil {
		t.Fatal(err)
	}
	live := sleeper(t)
	os.WriteFile(filepath.Join(home, "pids", "web-0.pid"), []byte(strconv.Itoa(live.Process.Pid)+"\n"), 0o644)
	os.WriteFile(filepath.Join(home, "pids", "web-1.pid"), []byte("999999999"), 0o644) // dead
	os.WriteFile(filepath.Join(home, "pids", "web-2.pid"), nil, 0o644)                 // emptied
	f := &hookstest.FakeRunner{}
	got := newPM2(t, f, home).PIDs("web", []int{0, 1, 2, 3})
	want := map[int]int{0: live.Process.Pid, 1: 0, 2: 0, 3: 0}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatal(diff)
	}
	if len(f.Cmds()) != 0 {
		t.Fatalf("ran pm2: %v", f.Argvs())
	}
}

func TestStopOfAnErroredAppIsStopped(t *testing.T) {
	// A crash-looping app pm2 gave up on: errored, no pid; pm2 stop leaves
	// it errored, and that is stopped enough.
	home := fakeDaemon(t)
	web := inst{name: "web", id: 0, pid: 0, status: "errored", restarts: 15}
	f := (&hookstest.FakeRunner{}).Then(hookstest.OK(jlist(web)), hookstest.OK(""), hookstest.OK(jlist(web)))
	before, err := newPM2(t, f, home).Stop(context.Background(), "web")
	if err != nil {
		t.Fatalf("stop of an errored app: %v", err)
	}
	if len(before) != 1 || before[0].Status != "errored" {
		t.Fatalf("before: %+v", before)
	}
	assertCmds(t, f, pm2Cmd(home, "jlist"), pm2Cmd(home, "stop", "web", "--no-color"), pm2Cmd(home, "jlist"))
}
