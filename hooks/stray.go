package hooks

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// KillStrayNPM kills what is left of an npm run in dir by uid: a post
// whose patchagent was SIGKILLed (the daemon, the node's hook on an SSM
// timeout) leaves npm running in its own process group, and a restore of
// the snapshot would race it, npm writing into the tree being put back.
// It finds, in /proc (root's, nothing the user can plant), the processes
// of uid whose working directory is dir and that run npm (argv[0] npm, or
// node running npm-cli.js), SIGKILLs each one's process group (the runner
// starts npm as a group leader: its install scripts go with it), waits
// up to two seconds for them to be gone, and returns their pids.
func KillStrayNPM(dir string, uid uint32) []int {
	dir = filepath.Clean(dir)
	ents, err := os.ReadDir(procRoot)
	if err != nil {
		return nil
	}
	var killed []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		fi, err := os.Stat(filepath.Join(procRoot, e.Name()))
		if err != nil {
			continue
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); !ok || st.Uid != uid {
			continue
		}
		if cwd, err := os.Readlink(filepath.Join(procRoot, e.Name(), "cwd")); err != nil || filepath.Clean(cwd) != dir {
			continue
		}
		if !runsNPM(pid) {
			continue
		}
		if pgid, err := syscall.Getpgid(pid); err == nil && pgid == pid {
			syscall.Kill(-pid, syscall.SIGKILL)
		} else {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		killed = append(killed, pid)
	}
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		alive := false
		for _, pid := range killed {
			if pidAlive(pid) {
				alive = true
			}
		}
		if !alive {
			break
		}
	}
	return killed
}

// runsNPM reports whether pid's command line is npm's.
func runsNPM(pid int) bool {
	b, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return false
	}
	args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	if len(args) > 0 && filepath.Base(args[0]) == "npm" {
		return true
	}
	return len(args) > 1 && strings.HasSuffix(args[1], "npm-cli.js")
}
