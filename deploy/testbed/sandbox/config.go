package sandbox

import "fmt"

// PatchagentConfig renders a patchagent config.yaml for this sandbox's app
// (name, user, pm2 CLI, PM2_HOME, port) with daemon.state_dir stateDir and
// daemon.boot_id_file BootIDPath (so that Reboot is seen as a reboot). app
// holds extra lines of the app section (each indented by two spaces, e.g.
// "  dir: "+n.AppDir+"\n"); extra is appended verbatim after the daemon
// section, so it may go on with more daemon lines (two-space indented)
// before other sections. Its shape mirrors deploy/testbed/e2e's writeConfig; the
// config schema itself belongs to the agent package.
func (n *Node) PatchagentConfig(stateDir, app, extra string) string {
	return fmt.Sprintf(`app:
  name: %s
  user: %s
  pm2: %s
  pm2_home: %s
%straffic:
  ports: [%d]
daemon:
  state_dir: %s
  socket: /run/patchagent-sandbox/%s.sock
  boot_id_file: %s
%s`, n.Opts.AppName, n.AppUser, n.PM2Bin, n.PM2Home, app, n.Opts.Port, stateDir, n.Opts.Prefix, n.BootIDPath(), extra)
}
