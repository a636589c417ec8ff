package sandbox

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// ForeignFiles lists what under PM2Home is not owned by the app user: pm2
// run as root against the user's PM2_HOME leaves root-owned sockets and logs.
func (n *Node) ForeignFiles() ([]string, error) {
	var out []string
	err := filepath.WalkDir(n.PM2Home, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			return err
		}
		if st.Uid != n.UID {
			out = append(out, fmt.Sprintf("%s (uid %d)", p, st.Uid))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("walking %s: %w", n.PM2Home, err)
	}
	return out, nil
}

// PM2Daemons lists the live pm2 daemons of this node's PM2Home, whoever runs
// them (their title is "PM2 vX: God Daemon (<PM2_HOME>)"); zombies excluded.
func (n *Node) PM2Daemons() ([]int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("listing processes: %w", err)
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), "God Daemon ("+n.PM2Home+")") && procAlive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// Get does one GET of url with c (a Client of this node) and reads the whole
// body; it returns the status.
func Get(ctx context.Context, c *http.Client, url string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return resp.StatusCode, fmt.Errorf("reading the body of %s: %w", url, err)
	}
	return resp.StatusCode, nil
}
