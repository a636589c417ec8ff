package hooks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Tests may use /bin/sh; the product never does.
const sh = "/bin/sh"

func TestExecRunnerResults(t *testing.T) {
	tests := []struct {
		name       string
		cmd        Cmd
		wantCode   int
		wantStdout string
		wantErr    []string // substrings of the error; nil means no error
		wantExit   bool     // the error is an *ExitError
	}{
		{
			name:       "success",
			cmd:        Cmd{Name: sh, Args: []string{"-c", "echo hi; echo note >&2"}},
			wantStdout: "hi\n",
		},
		{
			name:     "non-zero exit carries argv[0] and the stderr tail",
			cmd:      Cmd{Name: sh, Args: []string{"-c", "echo secret-stdout; echo '  oops: broken  ' >&2; exit 3"}},
			wantCode: 3, wantStdout: "secret-stdout\n",
			wantErr:  []string{"/bin/sh exited with code 3: oops: broken"},
			wantExit: true,
		},
		{
			name:     "killed by a signal it sent itself",
			cmd:      Cmd{Name: sh, Args: []string{"-c", "kill -TERM $$"}},
			wantCode: -1,
			wantErr:  []string{"/bin/sh killed by signal terminated"},
			wantExit: true,
		},
		{
			name:       "bare name found in the command's own PATH",
			cmd:        Cmd{Name: "sh", Args: []string{"-c", "echo $PATH"}, Env: []string{"PATH=/nonexistent:/bin"}},
			wantStdout: "/nonexistent:/bin\n",
		},
		{
			name:     "bare name without PATH in Env is not looked up in ours",
			cmd:      Cmd{Name: "sh", Args: []string{"-c", "true"}},
			wantCode: -1,
			wantErr:  []string{"looking up sh", "executable file not found"},
		},
		{
			name:     "missing program",
			cmd:      Cmd{Name: "/nonexistent/prog"},
			wantCode: -1,
			wantErr:  []string{"starting /nonexistent/prog"},
		},
		{
			name:       "working directory",
			cmd:        Cmd{Name: sh, Args: []string{"-c", "pwd"}, Dir: "/usr"},
			wantStdout: "/usr\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := (&ExecRunner{}).Run(t.Context(), tt.cmd)
			if res.ExitCode != tt.wantCode {
				t.Errorf("ExitCode = %d, want %d", res.ExitCode, tt.wantCode)
			}
			if got := string(res.Stdout); got != tt.wantStdout {
				t.Errorf("Stdout = %q, want %q", got, tt.wantStdout)
			}
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("err = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("err = nil, want one containing %q", tt.wantErr)
			}
			for _, s := range tt.wantErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("err = %q, want it to contain %q", err, s)
				}
			}
			if strings.Contains(err.Error(), "secret-stdout") {
				t.Errorf("err = %q quotes stdout", err)
			}
			var xe *ExitError
			if got := errors.As(err, &xe); got != tt.wantExit {
				t.Errorf("errors.As(*ExitError) = %v, want %v", got, tt.wantExit)
			}
		})
	}
}

func TestExecRunnerMissingProgramIsNotExist(t *testing.T) {
	_, err := (&ExecRunner{}).Run(t.Context(), Cmd{Name: "/nonexistent/prog"})
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("err = %v, want fs.ErrNotExist", err)
	}
}

func TestExecRunnerStderrTailInError(t *testing.T) {
	// 10000 x 'A', then a colourised last line: the error keeps only the end.
	script := `i=0; while [ $i -lt 100 ]; do printf '%0100d' 0 | tr 0 A >&2; i=$((i+1)); done; printf '\n\033[31mlast line é\033[0m\n' >&2; exit 1`
	_, err := (&ExecRunner{}).Run(t.Context(), Cmd{Name: sh, Args: []string{"-c", script}})
	var xe *ExitError
	if !errors.As(err, &xe) {
		t.Fatalf("err = %v, want *ExitError", err)
	}
	if !strings.HasSuffix(xe.Stderr, "last line é") {
		t.Errorf("Stderr tail ends %q, want the last line without colour codes", xe.Stderr[max(0, len(xe.Stderr)-40):])
	}
	if n := len(xe.Stderr); n > errTailLen+len("…") || n < errTailLen-10 {
		t.Errorf("len(Stderr tail) = %d, want about %d", n, errTailLen)
	}
	if !strings.HasPrefix(xe.Stderr, "…") {
		t.Errorf("a cut tail should start with an ellipsis, got %q", xe.Stderr[:10])
	}
}

func TestErrTail(t *testing.T) {
	long := strings.Repeat("é", errTailLen) // 2 bytes per rune
	tests := []struct {
		name, in, want string
	}{
		{"empty", "", ""},
		{"trims space and colour", "\x1b[31m[PM2][ERROR]\x1b[39m not found\n\n", "[PM2][ERROR] not found"},
		{"cut at a rune boundary", long, "…" + strings.Repeat("é", errTailLen/2)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := errTail([]byte(tt.in)); got != tt.want {
				t.Errorf("errTail = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestExecRunnerOutputCapped(t *testing.T) {
	// 200000 bytes of 'a' then END, on both streams.
	script := `head -c 200000 /dev/zero | tr '\0' a; printf END; head -c 300000 /dev/zero | tr '\0' b >&2; printf END >&2`
	res, err := (&ExecRunner{}).Run(t.Context(), Cmd{Name: sh, Args: []string{"-c", script}, Env: []string{"PATH=/usr/bin:/bin"}})
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"stdout": res.Stdout, "stderr": res.Stderr} {
		if len(b) != MaxOutput {
			t.Errorf("len(%s) = %d, want %d", name, len(b), MaxOutput)
		}
		if !bytes.HasSuffix(b, []byte("END")) {
			t.Errorf("%s does not end with the last bytes written", name)
		}
	}
}

func TestTailBufferSmallWrites(t *testing.T) {
	var tb tailBuffer
	var all []byte
	for i := range 3 * MaxOutput / 7 {
		w := []byte(strconv.Itoa(i) + ",")
		all = append(all, w...)
		if n, err := tb.Write(w); n != len(w) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	if !bytes.Equal(tb.Bytes(), all[len(all)-MaxOutput:]) {
		t.Fatal("tail differs from the last MaxOutput bytes written")
	}
}

func TestExecRunnerDeadlineKillsProcessGroup(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pids")
	// Two background sleeps, and the shell itself waiting on them.
	script := `sleep 100 & echo $! >> "$F"; sleep 100 & echo $! >> "$F"; echo $$ >> "$F"; wait`
	ctx, cancel := context.WithTimeout(t.Context(), 700*time.Millisecond)
	defer cancel()
	start := time.Now()
	res, err := (&ExecRunner{WaitDelay: time.Second}).Run(ctx, Cmd{
		Name: sh, Args: []string{"-c", script},
		Env: []string{"PATH=/usr/bin:/bin", "F=" + pidFile},
	})
	took := time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want it to wrap context.DeadlineExceeded", err)
	}
	if !strings.Contains(err.Error(), "killed") {
		t.Errorf("err = %q, want it to say the program was killed", err)
	}
	if res.ExitCode != -1 {
		t.Errorf("ExitCode = %d, want -1", res.ExitCode)
	}
	if took > 3*time.Second {
		t.Errorf("Run took %s after a 700ms deadline", took)
	}
	pids := readPids(t, pidFile)
	if len(pids) != 3 {
		t.Fatalf("pid file holds %v, want 3 pids", pids)
	}
	for _, pid := range pids {
		waitGone(t, pid, 2*time.Second)
	}
}

func TestExecRunnerWaitDelayBoundsEscapedChild(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	// The shell exits at once, but a child in a new session (out of reach of
	// the group kill) keeps stdout open.
	script := `setsid sleep 30 & echo $! > "$F"; exit 0`
	start := time.Now()
	_, err := (&ExecRunner{WaitDelay: 300 * time.Millisecond}).Run(t.Context(), Cmd{
		Name: sh, Args: []string{"-c", script},
		Env: []string{"PATH=/usr/bin:/bin", "F=" + pidFile},
	})
	pids := readPids(t, pidFile)
	for _, pid := range pids {
		t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) }) // our own stray sleep
	}
	if !errors.Is(err, exec.ErrWaitDelay) {
		t.Fatalf("err = %v, want exec.ErrWaitDelay", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("Run took %s with WaitDelay 300ms", took)
	}
}

func TestExecRunnerEnvNotInherited(t *testing.T) {
	t.Setenv("PATCHAGENT_TEST_LEAK", "leaked")
	t.Setenv("NOTIFY_SOCKET", "/run/leak.sock")
	tests := []struct {
		name string
		env  []string
		want string
	}{
		{"nil env is empty", nil, ""},
		{"explicit env is the whole env", []string{"A=b", "PATH=/bin"}, "A=b\nPATH=/bin\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := (&ExecRunner{}).Run(t.Context(), Cmd{Name: "/usr/bin/env", Env: tt.env})
			if err != nil {
				t.Fatal(err)
			}
			if got := string(res.Stdout); got != tt.want {
				t.Errorf("child env = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestExecRunnerCredential(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to switch users")
	}
	res, err := (&ExecRunner{}).Run(t.Context(), Cmd{
		Name: "/usr/bin/id", Args: []string{"-u"}, Dir: "/",
		Cred: &Credential{UID: 65534, GID: 65534},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(res.Stdout)); got != "65534" {
		t.Errorf("id -u = %q, want 65534", got)
	}
	// Supplementary groups are exactly those given: root's are dropped.
	res, err = (&ExecRunner{}).Run(t.Context(), Cmd{
		Name: "/usr/bin/id", Args: []string{"-G"}, Dir: "/",
		Cred: &Credential{UID: 65534, GID: 65534, Groups: []uint32{65534, 4242}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(string(res.Stdout)); strings.Join(got, " ") != "65534 4242" {
		t.Errorf("id -G = %q, want [65534 4242]", got)
	}
}

func readPids(t *testing.T, path string) []int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			t.Fatalf("pid file: %v", err)
		}
		pids = append(pids, pid)
	}
	return pids
}

// waitGone fails the test if pid is still a live process (not a zombie)
// after d.
func waitGone(t *testing.T, pid int, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for pidAlive(pid) {
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL) // ours: the test started it
			t.Errorf("pid %d still alive %s after the deadline", pid, d)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// setUmask sets the test process's umask to m until the test ends.
func setUmask(t *testing.T, m int) {
	t.Helper()
	old := syscall.Umask(m)
	t.Cleanup(func() { syscall.Umask(old) })
}

// taskUmask reads the umask of one of our threads (tid) from /proc, or of
// the process (the main thread's) for tid 0.
func taskUmask(tid int) (int, error) {
	p := "/proc/self/status"
	if tid != 0 {
		p = "/proc/self/task/" + strconv.Itoa(tid) + "/status"
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Umask:"); ok {
			m, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32)
			return int(m), err
		}
	}
	return 0, errors.New(p + " has no Umask line")
}

// assertOwnUmask fails the test unless the process's umask is want now and,
// within a second (a thread that forked a program may still be exiting),
// on every one of its threads.
func assertOwnUmask(t *testing.T, want int) {
	t.Helper()
	if got, err := taskUmask(0); err != nil || got != want {
		t.Fatalf("the test process's umask is %#o (%v), want %#o", got, err, want)
	}
	deadline := time.Now().Add(time.Second)
	for {
		var odd []string
		ents, err := os.ReadDir("/proc/self/task")
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			tid, _ := strconv.Atoi(e.Name())
			if got, err := taskUmask(tid); err == nil && got != want { // err: it just ended
				odd = append(odd, fmt.Sprintf("thread %d: %#o", tid, got))
			}
		}
		if len(odd) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("threads of the test process left with another umask than %#o: %v", want, odd)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestExecRunnerChildUmaskWhateverOurs(t *testing.T) {
	setUmask(t, 0o077) // the daemon's, from the unit's UMask=0077
	dir := t.TempDir()
	cmd := Cmd{
		Name: sh, Args: []string{"-c", "umask; echo x > f; mkdir d; echo x > d/g"},
		Dir: dir, Env: []string{"PATH=/usr/bin:/bin"},
	}
	res, err := (&ExecRunner{}).Run(t.Context(), cmd)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(res.Stdout); got != "0022\n" {
		t.Errorf("the child's umask = %q, want 0022", got)
	}
	wantModes := map[string]fs.FileMode{"f": 0o644, "d": fs.ModeDir | 0o755, "d/g": 0o644}
	for name, want := range wantModes {
		fi, err := os.Lstat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s made by the child: mode %s, want %s", name, fi.Mode(), want)
		}
	}
	assertOwnUmask(t, 0o077)

	// Our own files still get our umask.
	f, err := os.OpenFile(filepath.Join(dir, "ours"), os.O_CREATE|os.O_WRONLY, 0o666)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if fi, _ := os.Stat(f.Name()); fi.Mode() != 0o600 {
		t.Errorf("a file we create 0666 after Run: mode %s, want -rw------- (umask 077)", fi.Mode())
	}

	if os.Geteuid() != 0 {
		return
	}
	// As another user too (the credential is set in the child after the
	// fork, the umask before).
	shared, err := os.MkdirTemp("", "pa-umask-") // t.TempDir's parent is 0700
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(shared) })
	if err := os.Chmod(shared, 0o777); err != nil {
		t.Fatal(err)
	}
	cmd.Dir, cmd.Cred = shared, &Credential{UID: 65534, GID: 65534}
	cmd.Args = []string{"-c", "umask; echo x > f"}
	res, err = (&ExecRunner{}).Run(t.Context(), cmd)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(filepath.Join(shared, "f"))
	if err != nil {
		t.Fatal(err)
	}
	if got := string(res.Stdout); got != "0022\n" || fi.Mode() != 0o644 {
		t.Errorf("as uid 65534: umask %q, file mode %s, want 0022 and -rw-r--r--", got, fi.Mode())
	}
}

// Many programs started at once each get umask 022, while our own umask
// stays 077 at every instant: a file we create meanwhile is never more open
// than 0600.
func TestExecRunnerChildUmaskConcurrent(t *testing.T) {
	setUmask(t, 0o077)
	dir := t.TempDir()
	const workers, runs = 8, 10
	var wg sync.WaitGroup
	errs := make(chan error, workers*runs)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range runs {
				res, err := (&ExecRunner{}).Run(t.Context(), Cmd{Name: sh, Args: []string{"-c", "umask"}})
				if err != nil {
					errs <- err
				} else if got := string(res.Stdout); got != "0022\n" {
					errs <- fmt.Errorf("a child's umask = %q, want 0022", got)
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	created := 0
	for running := true; running; created++ {
		select {
		case <-done:
			running = false
		default:
		}
		p := filepath.Join(dir, strconv.Itoa(created))
		f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o666)
		if err != nil {
			t.Fatal(err)
		}
		fi, err := f.Stat()
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != 0o600 {
			t.Fatalf("file %d created 0666 while programs started: mode %s, want -rw------- (our umask 077)", created, fi.Mode())
		}
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d files created meanwhile, all 0600", created)
	assertOwnUmask(t, 0o077)
}

const ttyEnv = "PATCHAGENT_TEST_TTY"

// TestTTYProcess is not a test: with PATCHAGENT_TEST_TTY=shell it is an
// operator's root shell on a terminal (its controlling terminal), which
// runs a child through ExecRunner as a phase run from that shell does;
// with =child it is that child, and says whether it can open /dev/tty.
func TestTTYProcess(t *testing.T) {
	switch os.Getenv(ttyEnv) {
	case "child":
		f, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
		if err != nil {
			fmt.Printf("child: no terminal: %v", err)
		} else {
			f.Close()
			fmt.Print("child: /dev/tty opened")
		}
	case "shell":
		f, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
		if err != nil {
			fmt.Printf("shell: no terminal: %v", err)
			os.Exit(1)
		}
		f.Close()
		self, _ := os.Executable()
		res, err := (&ExecRunner{}).Run(context.Background(), Cmd{Name: self, Args: []string{"-test.run=^TestTTYProcess$"}, Env: []string{ttyEnv + "=child"}})
		if err != nil {
			fmt.Printf("shell: running the child: %v", err)
			os.Exit(1)
		}
		os.Stdout.Write(res.Stdout)
	default:
		t.Skip("the processes of TestExecRunnerChildHasNoTerminal")
	}
	os.Exit(0)
}

// TestExecRunnerChildHasNoTerminal: a child of ExecRunner run from a shell
// on a terminal cannot open that terminal (its own session), so the app
// user's npm install scripts cannot push input into an operator's root
// shell with TIOCSTI.
func TestExecRunnerChildHasNoTerminal(t *testing.T) {
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		t.Skip("no /dev/ptmx here")
	}
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	if err := unix.IoctlSetPointerInt(int(ptmx.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(ptmx.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	pts, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer pts.Close()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	shell := exec.Command(self, "-test.run=^TestTTYProcess$")
	shell.Env = []string{ttyEnv + "=shell"}
	shell.Stdin = pts
	shell.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	out, err := shell.Output()
	if err != nil {
		t.Fatalf("the shell: %v: %s", err, out)
	}
	if got := string(out); !strings.HasPrefix(got, "child: no terminal: ") || !strings.Contains(got, "no such device or address") {
		t.Fatalf("the child of a shell on a terminal: %q, want no terminal (ENXIO)", got)
	}
}
