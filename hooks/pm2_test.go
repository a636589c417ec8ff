package hooks_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"testing/iotest"
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

func writePid(t *testing.T, dir string, pid int) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "pm2.pid"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
		t.Fatal(err)
	}
}

// appUsersSocket gives the socket at path to the app user, whose pm2
// daemon makes it: root takes no other's socket.
func appUsersSocket(t *testing.T, path string) {
	t.Helper()
	if os.Geteuid() == 0 {
		if err := os.Lchown(path, int(appUser.UID), int(appUser.GID)); err != nil {
			t.Fatal(err)
		}
	}
}

func listen(t *testing.T, dir string) *net.UnixListener {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "rpc.sock"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	appUsersSocket(t, filepath.Join(dir, "rpc.sock"))
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
	web0 := inst{name: "web", id: 0, pid: 4242, status: "online", restarts: 2, uptime: 1764115200123, mode: "cluster_mode"}
	web1 := inst{name: "web", id: 1, pid: 4243, status: "online", uptime: 1764115200456, mode: "cluster_mode"}
	worker := inst{name: "worker", id: 2, pid: 5000, status: "stopped"}
	raw := func(body string) func([]json.RawMessage) any {
		return func([]json.RawMessage) any { return []byte(body) }
	}
	tests := []struct {
		name    string
		procs   []inst
		reply   func([]json.RawMessage) any
		want    []hooks.Process
		wantErr error  // errors.Is target
		errHas  string // substring of a non-sentinel error
	}{
		{name: "single instance", procs: []inst{web0, worker}, want: procs(web0)},
		{name: "cluster mode, two instances", procs: []inst{web0, worker, web1}, want: procs(web0, web1)},
		{name: "unknown app", procs: []inst{worker}, wantErr: hooks.ErrUnknownApp},
		{name: "no processes at all", wantErr: hooks.ErrUnknownApp},
		{name: "wrong field type", reply: raw(`j:{"args":[[{"name":"web","pm_id":"zero","pm2_env":{"DB_PASSWORD":"` + secret + `"}}]]}`), wantErr: hooks.ErrPM2RPC},
		{name: "reply not JSON", reply: raw("s:[]"), wantErr: hooks.ErrPM2RPC},
		{name: "truncated JSON", reply: raw(`j:{"args":[[{"name":"web"`), wantErr: hooks.ErrPM2RPC},
		{name: "reply without the list", reply: raw(`j:{"args":[]}`), wantErr: hooks.ErrPM2RPC},
		{name: "pm2 replies an error", reply: func([]json.RawMessage) any { return map[string]any{"error": "God is busy", "stack": "Error: at God"} }, errHas: "pm2 getMonitorData: God is busy"},
		{name: "pm2 replies an error object", reply: func([]json.RawMessage) any { return map[string]any{"error": map[string]any{"msg": "no pid"}} }, errHas: "pm2 getMonitorData: no pid"},
		{name: "pm2 error with a credential is redacted", reply: func([]json.RawMessage) any {
			return map[string]any{"error": "GET https://u:s3cret@reg.example/x _authToken=s3cret"}
		}, errHas: "GET https://***@reg.example/x _authToken=***"},
		{name: "daemon hangs up", reply: func([]json.RawMessage) any { return errClose }, errHas: "closed the connection without replying"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newGod(t, tt.procs...)
			if tt.reply != nil {
				g.on("getMonitorData", tt.reply)
			}
			f := &hookstest.FakeRunner{}
			got, err := newPM2(t, f, g.home).Processes(t.Context(), "web")
			g.assertCalls(t, "getMonitorData [{}]")
			assertCmds(t, f) // never the CLI
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Processes (-want +got):\n%s", diff)
			}
			switch {
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) {
					t.Errorf("err = %v, want %v", err, tt.wantErr)
				}
			case tt.errHas != "":
				var pe *hooks.PM2Error
				if err == nil || !strings.Contains(err.Error(), tt.errHas) || errors.Is(err, hooks.ErrUnknownApp) {
					t.Errorf("err = %v, want one containing %q", err, tt.errHas)
				} else if strings.Contains(tt.errHas, "getMonitorData:") && !errors.As(err, &pe) {
					t.Errorf("err = %v, want a *PM2Error", err)
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
	g := newGod(t, inst{name: "web", status: "online", pid: 1})
	g.on("getMonitorData", func([]json.RawMessage) any { return errHang })
	p := hooks.NewPM2(zaptest.NewLogger(t), &hookstest.FakeRunner{}, hooks.PM2Config{
		Bin: bin, User: appUser, Home: g.home, Path: binPath, CallTimeout: 200 * time.Millisecond,
	})
	start := time.Now()
	_, err := p.Processes(t.Context(), "web")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want the call's deadline", err)
	}
	if took := time.Since(start); took < 200*time.Millisecond || took > 2*time.Second {
		t.Errorf("a hanging daemon held the call %s, want about the 200ms CallTimeout", took)
	}
	// A stop's RPCs share one CallTimeout: each answered in 120ms is under
	// the 200ms, the list and the first stop RPC together are not.
	g.on("getMonitorData", nil)
	g.slow(120 * time.Millisecond)
	start = time.Now()
	if _, err := p.Stop(t.Context(), "web"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Stop err = %v, want the deadline", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Stop with a slow daemon took %s, want about the 200ms CallTimeout", took)
	}
	g.slow(0)
	// The caller's cancellation ends a call too.
	g.on("getMonitorData", func([]json.RawMessage) any { return errHang })
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(50*time.Millisecond, cancel)
	if _, err := p.Processes(ctx, "web"); !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
}

func TestAMPFraming(t *testing.T) {
	msg := hooks.EncodeAMP([]byte(`j:{"a":1}`), []byte("s:id:1"), nil)
	if msg[0] != 1<<4|3 {
		t.Fatalf("meta byte %#x, want version 1, 3 arguments", msg[0])
	}
	// Read byte by byte: a frame may arrive in pieces.
	got, err := hooks.ReadAMP(iotest.OneByteReader(bytes.NewReader(msg)))
	if err != nil {
		t.Fatal(err)
	}
	if want := [][]byte{[]byte(`j:{"a":1}`), []byte("s:id:1"), {}}; !cmp.Equal(want, got) {
		t.Errorf("ReadAMP = %q, want %q", got, want)
	}
	for name, frame := range map[string][]byte{
		"cut in an argument": msg[:len(msg)-3],
		"cut in a length":    msg[:3],
		"version 2":          append([]byte{2<<4 | 1}, msg[1:]...),
		"huge argument":      {1<<4 | 1, 0xff, 0xff, 0xff, 0xff},
	} {
		if _, err := hooks.ReadAMP(bytes.NewReader(frame)); !errors.Is(err, hooks.ErrPM2RPC) {
			t.Errorf("%s: ReadAMP err = %v, want ErrPM2RPC", name, err)
		}
	}
	if _, err := hooks.ReadAMP(bytes.NewReader(nil)); err != io.EOF {
		t.Errorf("ReadAMP of nothing = %v, want io.EOF", err)
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
			var before, after []inst
			sleepers := map[int]*exec.Cmd{}
			for i := range n {
				s := sleeper(t)
				sleepers[i] = s
				before = append(before, inst{name: "web", id: i, pid: s.Process.Pid, status: "online", uptime: 1764115200000})
				after = append(after, inst{name: "web", id: i, status: "stopped", uptime: 1764115200000})
			}
			other := inst{name: "worker", id: 9, pid: 1, status: "online"}
			g := newGod(t, append(slices.Clone(before), other)...)
			// pm2 kills the instance and replies once it is dead; it stays a
			// zombie (nobody has waited for it yet), which counts as gone.
			g.onStop = func(in inst) {
				sleepers[in.id].Process.Signal(syscall.SIGINT)
				waitZombie(t, sleepers[in.id].Process.Pid)
			}
			f := &hookstest.FakeRunner{}
			got, err := newPM2(t, f, g.home).Stop(t.Context(), "web")
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(procs(before...), got); diff != "" {
				t.Errorf("Stop returned (-want +got):\n%s", diff)
			}
			// As `pm2 stop web`: per pm_id, stopWatch, stopProcessId and the
			// event; the other app is not touched.
			want := []string{"getMonitorData [{}]"}
			for i := range n {
				want = append(want,
					fmt.Sprintf(`stopWatch ["stopProcessId",%d]`, i),
					fmt.Sprintf(`stopProcessId [%d]`, i),
					fmt.Sprintf(`notifyByProcessId [{"action_name":"stop","id":%d,"manually":true}]`, i))
			}
			want = append(want, "getMonitorData [{}]")
			g.assertCalls(t, want...)
			assertCmds(t, f)
			for _, s := range sleepers {
				if hooks.PidAlive(s.Process.Pid) {
					t.Errorf("pid %d alive after Stop returned", s.Process.Pid)
				}
			}
			if diff := cmp.Diff(jlist(append(after, other)...), jlist(g.procs...)); diff != "" {
				t.Errorf("daemon's list after Stop (-want +got):\n%s", diff)
			}
		})
	}
}

func TestStopFailures(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(g *god, pid int)
		procs   func(pid int) []inst
		wantErr error
		errHas  func(pid int) string
	}{
		{
			name: "pm2 says stopped but the pid is alive",
			// the fake marks it stopped without killing it
			errHas: func(pid int) string { return fmt.Sprintf("pid(s) [%d] still alive", pid) },
		},
		{
			name:   "pm2 still shows it online",
			setup:  func(g *god, _ int) { g.stopLeaves = true },
			errHas: func(pid int) string { return fmt.Sprintf("pm_id 0 online (pid %d)", pid) },
		},
		{
			name:    "unknown app: nothing is stopped",
			procs:   func(pid int) []inst { return []inst{{name: "worker", status: "online", pid: pid}} },
			wantErr: hooks.ErrUnknownApp,
		},
		{
			name: "pm2 refuses the stop",
			setup: func(g *god, _ int) {
				g.on("stopProcessId", func([]json.RawMessage) any { return map[string]any{"error": "0 : id unknown"} })
			},
			errHas: func(int) string { return `stopping pm2 app "web" (pm_id 0): pm2 stopProcessId: 0 : id unknown` },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := sleeper(t)
			pid := s.Process.Pid
			ps := []inst{{name: "web", pid: pid, status: "online"}}
			if tt.procs != nil {
				ps = tt.procs(pid)
			}
			g := newGod(t, ps...)
			if tt.setup != nil {
				tt.setup(g, pid)
			}
			start := time.Now()
			got, err := newPM2(t, &hookstest.FakeRunner{}, g.home).Stop(t.Context(), "web")
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
			if tt.wantErr != nil {
				g.assertCalls(t, "getMonitorData [{}]")
			}
		})
	}
}

func TestNoPM2WithoutDaemon(t *testing.T) {
	calls := map[string]func(*hooks.PM2, context.Context) error{
		"Processes": func(p *hooks.PM2, ctx context.Context) error { _, err := p.Processes(ctx, "web"); return err },
		"Stop":      func(p *hooks.PM2, ctx context.Context) error { _, err := p.Stop(ctx, "web"); return err },
		"Start":     func(p *hooks.PM2, ctx context.Context) error { return p.Start(ctx, "web") },
		"StartFrom": func(p *hooks.PM2, ctx context.Context) error { return p.StartFrom(ctx, "web", "/srv/web/server.js") },
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
	web := inst{name: "web", pid: os.Getpid(), status: "online"}
	g := newGod(t, web)
	g.on("getMonitorData", func([]json.RawMessage) any {
		os.Remove(filepath.Join(g.home, "pm2.pid"))
		return map[string]any{"args": []any{json.RawMessage(jlist(web))}}
	})
	_, err := newPM2(t, &hookstest.FakeRunner{}, g.home).Stop(t.Context(), "web")
	if !errors.Is(err, hooks.ErrDaemonNotRunning) {
		t.Errorf("err = %v, want ErrDaemonNotRunning", err)
	}
	g.assertCalls(t, "getMonitorData [{}]") // no stop sent to a dying daemon
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
	restart := func(id int) []string {
		return []string{
			fmt.Sprintf(`restartProcessId [{"env":{},"id":%d}]`, id),
			fmt.Sprintf(`notifyByProcessId [{"action_name":"restart","id":%d,"manually":true}]`, id),
		}
	}
	list := "getMonitorData [{}]"
	tests := []struct {
		name      string
		procs     []inst
		failStart bool
		wantCalls []string
		wantErr   error
		errHas    string
	}{
		{name: "all online: never restarted", procs: []inst{on0, on1}, wantCalls: []string{list}},
		{name: "stopped", procs: []inst{off0}, wantCalls: append([]string{list}, restart(0)...)},
		{name: "errored", procs: []inst{{name: "web", status: "errored"}}, wantCalls: append([]string{list}, restart(0)...)},
		{name: "cluster, all stopped", procs: []inst{off0, off1}, wantCalls: append(append([]string{list}, restart(0)...), restart(1)...)},
		{name: "cluster, one stopped: only that pm_id", procs: []inst{on0, off1}, wantCalls: append([]string{list}, restart(1)...)},
		{name: "unknown app", wantCalls: []string{list}, wantErr: hooks.ErrUnknownApp},
		{
			name: "pm2 refuses the start", procs: []inst{off0}, failStart: true,
			wantCalls: []string{list, restart(0)[0]}, errHas: `starting pm2 app "web" (pm_id 0): pm2 restartProcessId: Script not found`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newGod(t, tt.procs...)
			if tt.failStart {
				g.on("restartProcessId", func([]json.RawMessage) any { return map[string]any{"error": "Script not found"} })
			}
			f := &hookstest.FakeRunner{}
			err := newPM2(t, f, g.home).Start(t.Context(), "web")
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
			g.assertCalls(t, tt.wantCalls...)
			assertCmds(t, f)
		})
	}
}

func TestAppNamesPM2WouldMisread(t *testing.T) {
	for _, app := range []string{"", "all", "--help", "3", "my app", "a\nb"} {
		t.Run(fmt.Sprintf("%q", app), func(t *testing.T) {
			g := newGod(t)
			f := &hookstest.FakeRunner{}
			p := newPM2(t, f, g.home)
			if _, err := p.Stop(t.Context(), app); err == nil {
				t.Error("Stop succeeded")
			}
			if err := p.Start(t.Context(), app); err == nil {
				t.Error("Start succeeded")
			}
			if err := p.StartFrom(t.Context(), app, "/srv/web/server.js"); err == nil {
				t.Error("StartFrom succeeded")
			}
			assertCmds(t, f)
			g.assertCalls(t)
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

// TestFindPM2InUsersNvm: pm2 installed with nvm's node is found in
// ~/.nvm/versions/node/*/bin, the newest node that has pm2 first, after
// ~/.npm-global/bin; node is the one next to it.
func TestFindPM2InUsersNvm(t *testing.T) {
	home := t.TempDir()
	// install puts executables named files in dir below home.
	install := func(dir string, files ...string) string {
		dir = filepath.Join(home, dir)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			if err := os.WriteFile(filepath.Join(dir, f), []byte("#!/bin/true\n"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	nvm := ".nvm/versions/node/"
	install(nvm+"v9.11.2/bin", "node", "pm2")
	want := install(nvm+"v18.20.4/bin", "node", "pm2")
	install(nvm+"v20.11.1/bin", "node") // the newest, without pm2
	install(nvm+"v100.0.0-rc/bin", "node", "pm2")
	install(nvm + "system")
	u := hooks.AppUser{Name: "app", Home: home}
	bin, path, err := hooks.FindPM2(u, "")
	if err != nil {
		t.Fatal(err)
	}
	if bin != filepath.Join(want, "pm2") || path != want+":/usr/local/bin:/usr/bin:/bin" {
		t.Errorf("FindPM2 = %q, %q; want %s/pm2, %s first", bin, path, want, want)
	}

	global := install(".npm-global/bin", "pm2", "node")
	if bin, _, err := hooks.FindPM2(u, ""); err != nil || bin != filepath.Join(global, "pm2") {
		t.Errorf("with ~/.npm-global/bin/pm2 too: FindPM2 = %q, %v; want it first", bin, err)
	}
}

// TestFindPM2StaysInTheHome: what FindPM2 finds in the app user's home is
// looked at through os.Root: ~/.npm-global/bin/pm2 as npm makes it (a
// link to ../lib/node_modules/pm2/bin/pm2) is found, with its real dir on
// the PATH; a link of the user's that leads out of the home is not
// followed, for pm2 or for nvm's versions dir (root's stat would go where
// the user points it).
func TestFindPM2StaysInTheHome(t *testing.T) {
	home := t.TempDir()
	write := func(path string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte("#!/bin/true\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	real := filepath.Join(home, ".npm-global", "lib", "node_modules", "pm2", "bin")
	write(filepath.Join(real, "pm2"))
	write(filepath.Join(home, ".npm-global", "bin", "node"))
	link := filepath.Join(home, ".npm-global", "bin", "pm2")
	if err := os.Symlink("../lib/node_modules/pm2/bin/pm2", link); err != nil {
		t.Fatal(err)
	}
	u := hooks.AppUser{Name: "app", Home: home}
	bin, path, err := hooks.FindPM2(u, "")
	if err != nil || bin != link || !strings.Contains(path, real) {
		t.Fatalf("npm's own link: FindPM2 = %q, %q, %v; want %s with %s on the PATH", bin, path, err, link, real)
	}

	outside := t.TempDir()
	write(filepath.Join(outside, "pm2"))
	write(filepath.Join(outside, "v22.0.0", "bin", "pm2"))
	write(filepath.Join(outside, "v22.0.0", "bin", "node"))
	os.Remove(link)
	if err := os.Symlink(filepath.Join(outside, "pm2"), link); err != nil {
		t.Fatal(err)
	}
	versions := filepath.Join(home, ".nvm", "versions")
	if err := os.MkdirAll(versions, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(versions, "node")); err != nil {
		t.Fatal(err)
	}
	if got, _, err := hooks.FindPM2(u, ""); err == nil && strings.HasPrefix(got, home) {
		t.Fatalf("links out of the home: FindPM2 = %q, followed", got)
	}
}

// TestFindPM2NvmDirIsAFIFO: the app user controls ~/.nvm; a FIFO there
// is skipped at once, not opened (which would block).
func TestFindPM2NvmDirIsAFIFO(t *testing.T) {
	home := t.TempDir()
	dir := filepath.Join(home, ".nvm", "versions")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	mkfifoIn(t, filepath.Join(dir, "node"))
	quickly(t, "FindPM2", func() error {
		_, _, err := hooks.FindPM2(hooks.AppUser{Name: "app", Home: home}, "")
		return err
	})
}

func TestPM2Home(t *testing.T) {
	u := hooks.AppUser{Name: "web", Home: "/home/web"}
	if got := hooks.PM2Home(u, ""); got != "/home/web/.pm2" {
		t.Errorf("PM2Home = %q, want /home/web/.pm2", got)
	}
	if got := hooks.PM2Home(u, "/srv/pm2"); got != "/srv/pm2" {
		t.Errorf("PM2Home(configured) = %q, want /srv/pm2", got)
	}
}

func TestCheckExecutable(t *testing.T) {
	dir := t.TempDir()
	noExec := filepath.Join(dir, "script")
	if err := os.WriteFile(noExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{
		"/usr/bin/env":                "",
		filepath.Join(dir, "missing"): filepath.Join(dir, "missing") + ": no such file or directory",
		noExec:                        noExec + ": not executable",
		dir:                           dir + ": not a regular file",
	} {
		err := hooks.CheckExecutable(path)
		if (want == "" && err != nil) || (want != "" && (err == nil || err.Error() != want)) {
			t.Errorf("CheckExecutable(%s) = %v, want %q", path, err, want)
		}
	}
}

func TestStartFrom(t *testing.T) {
	web := inst{name: "web", id: 0, pid: 4242, status: "online"}
	other := inst{name: "other", id: 1, pid: 4243, status: "online"}
	list := "getMonitorData [{}]"
	t.Run("unknown to pm2: started from the ecosystem file with the CLI", func(t *testing.T) {
		g := newGod(t, other)
		start := hookstest.OK("")
		start.Do = func(hooks.Cmd) { g.set(other, web) }
		f := (&hookstest.FakeRunner{}).Then(start)
		if err := newPM2(t, f, g.home).StartFrom(t.Context(), "web", "/srv/web/ecosystem.config.js"); err != nil {
			t.Fatal(err)
		}
		assertCmds(t, f, pm2Cmd(g.home, "start", "/srv/web/ecosystem.config.js", "--only", "web", "--no-color"))
		g.assertCalls(t, list, list)
	})
	t.Run("known to pm2: refused, nothing started", func(t *testing.T) {
		g := newGod(t, web)
		f := &hookstest.FakeRunner{}
		err := newPM2(t, f, g.home).StartFrom(t.Context(), "web", "/srv/web/server.js")
		if err == nil || !strings.Contains(err.Error(), "pm2 knows it already") {
			t.Fatalf("err %v", err)
		}
		assertCmds(t, f)
	})
	t.Run("definition does not bring the app", func(t *testing.T) {
		g := newGod(t)
		f := (&hookstest.FakeRunner{}).Then(hookstest.OK(""))
		err := newPM2(t, f, g.home).StartFrom(t.Context(), "web", "/srv/web/server.js")
		if !errors.Is(err, hooks.ErrUnknownApp) {
			t.Fatalf("err %v", err)
		}
		assertCmds(t, f, pm2Cmd(g.home, "start", "/srv/web/server.js", "--name", "web", "--no-color"))
	})
	t.Run("the CLI fails", func(t *testing.T) {
		g := newGod(t)
		f := (&hookstest.FakeRunner{}).Then(hookstest.Exit(bin, 1, "[PM2][ERROR] File ecosystem.config.js malformated"))
		err := newPM2(t, f, g.home).StartFrom(t.Context(), "web", "/srv/web/ecosystem.config.js")
		if err == nil || !strings.Contains(err.Error(), "malformated") {
			t.Fatalf("err %v", err)
		}
		g.assertCalls(t, list)
	})
}

func TestProcessesReadPM2sMinUptime(t *testing.T) {
	// pm2 7 stores min_uptime as ms (2500 for 2500, 3000 for "3s", 1500
	// for "1500" in an ecosystem file) and leaves it out when the app sets
	// none; whatever else arrives is read as pm2's default (0 here).
	tests := []struct {
		raw  string // the JSON of pm2_env.min_uptime; "" leaves it out
		want time.Duration
	}{
		{"", 0},
		{"2500", 2500 * time.Millisecond},
		{"1500.5", 1500500 * time.Microsecond},
		{`"3s"`, 3 * time.Second},
		{`"1500"`, 1500 * time.Millisecond},
		{`"2m"`, 2 * time.Minute},
		{`"1h"`, time.Hour},
		{`"soon"`, 0},
		{`"s"`, 0},
		{"null", 0},
		{"-5", 0},
		{"true", 0},
		{"1e20", 24 * time.Hour},
	}
	var entries []string
	for i, tt := range tests {
		mu := ""
		if tt.raw != "" {
			mu = `,"min_uptime":` + tt.raw
		}
		entries = append(entries, fmt.Sprintf(`{"name":"web","pm_id":%d,"pid":0,"pm2_env":{"status":"stopped"%s}}`, i, mu))
	}
	g := newGod(t)
	g.on("getMonitorData", func([]json.RawMessage) any {
		return map[string]any{"args": []any{json.RawMessage("[" + strings.Join(entries, ",") + "]")}}
	})
	got, err := newPM2(t, &hookstest.FakeRunner{}, g.home).Processes(t.Context(), "web")
	if err != nil || len(got) != len(tests) {
		t.Fatalf("%d process(es), %v", len(got), err)
	}
	for i, tt := range tests {
		if got[i].MinUptime != tt.want {
			t.Errorf("min_uptime %q (empty: absent): read %s, want %s", tt.raw, got[i].MinUptime, tt.want)
		}
	}
}

func TestStopOfAnErroredAppIsStopped(t *testing.T) {
	// A crash-looping app pm2 gave up on: errored, no pid. pm2 is asked to
	// stop it (so that it is not restarted), and errored is stopped enough.
	web := inst{name: "web", id: 0, pid: 0, status: "errored", restarts: 15}
	g := newGod(t, web)
	g.stopLeaves = true
	before, err := newPM2(t, &hookstest.FakeRunner{}, g.home).Stop(t.Context(), "web")
	if err != nil {
		t.Fatalf("stop of an errored app: %v", err)
	}
	if len(before) != 1 || before[0].Status != "errored" {
		t.Fatalf("before: %+v", before)
	}
	g.assertCalls(t, "getMonitorData [{}]", `stopWatch ["stopProcessId",0]`, "stopProcessId [0]",
		`notifyByProcessId [{"action_name":"stop","id":0,"manually":true}]`, "getMonitorData [{}]")
}

func TestStopOfAStoppedAppSendsNothing(t *testing.T) {
	g := newGod(t, inst{name: "web", id: 0, status: "stopped"})
	if _, err := newPM2(t, &hookstest.FakeRunner{}, g.home).Stop(t.Context(), "web"); err != nil {
		t.Fatal(err)
	}
	g.assertCalls(t, "getMonitorData [{}]", "getMonitorData [{}]")
}
