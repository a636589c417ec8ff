package sandbox

import "fmt"

// PatchagentConfig renders a patchagent config.yaml for this sandbox's app
// (name, user, pm2 CLI, PM2_HOME, port) with daemon.state_dir stateDir and
// extra YAML sections appended verbatim. Its shape mirrors deploy/e2e's
// writeConfig; the config schema itself belongs to the agent package.
func (n *Node) PatchagentConfig(stateDir, extra string) string {
	return fmt.Sprintf(`app:
  name: %s
  user: %s
  pm2: %s
  pm2_home: %s
traffic:
  ports: [%d]
daemon:
  state_dir: %s
  socket: /run/patchagent-sandbox/%s.sock
%s`, n.Opts.AppName, n.AppUser, n.PM2Bin, n.PM2Home, n.Opts.Port, stateDir, n.Opts.Prefix, extra)
}
