package main

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/patchagent/patchagent/deploy/testbed/sandbox"
)

// The tutorial's three hook documents, verbatim (placeholders included).
const (
	tutorialPre = `# exit on error
set -e
# set up rule to block incoming traffic
iptables -I INPUT -j DROP -p tcp --syn --destination-port 443 || exit 1
# wait for current connections to end. Set timeout appropriate to your application's latency
sleep 5 
# Stop your application
pm2 stop your_application
`
	tutorialPost = `cd /your/application/path
npm update 
# you can use npm-check-updates if you want to upgrade major versions
`
	tutorialExit = `# exit on error
set -e
# restart nodeJs application
pm2 start your_application
# sleep while your application starts and to allow for a crash
sleep 10
# check with pm2 to see if your application is running
pm2 pid your_application
# re-enable incoming connections
iptables -D INPUT -j DROP -p tcp --syn --destination-port 
# perform health check
/usr/bin/curl -m 10 -vk -A "" http://localhost:443/health-check || exit 1
`
	// unblockLine is the tutorial's unblock line; tutorial-fixed adds the port.
	unblockLine = "iptables -D INPUT -j DROP -p tcp --syn --destination-port \n"
)

// scripts returns the pre, post and exit scripts of a script variant for
// node n: the placeholders filled in, and, the only change, every pm2
// command run as the app user whose pm2 runs the app (runuser with its
// HOME, PM2_HOME and a PATH holding pm2 and node). fixed adds the port to
// the unblock line.
func scripts(n *sandbox.Node, fixed bool) (pre, post, exit string) {
	path := filepath.Dir(n.PM2Bin)
	if n.NodeBin != "" && filepath.Dir(n.NodeBin) != path {
		path += ":" + filepath.Dir(n.NodeBin)
	}
	path += ":/usr/bin:/bin"
	pm2 := fmt.Sprintf("runuser -u %s -- env HOME=%s PM2_HOME=%s PATH=%s pm2 ", n.AppUser, n.Home, n.PM2Home, path)
	fill := func(s string) string {
		s = strings.ReplaceAll(s, "your_application", n.Opts.AppName)
		s = strings.ReplaceAll(s, "/your/application/path", n.AppDir)
		s = strings.ReplaceAll(s, "\npm2 ", "\n"+pm2)
		s = strings.ReplaceAll(s, ":443/", fmt.Sprintf(":%d/", n.Opts.Port))
		return strings.ReplaceAll(s, "--destination-port 443 ", fmt.Sprintf("--destination-port %d ", n.Opts.Port))
	}
	exit = tutorialExit
	if fixed {
		exit = strings.Replace(exit, unblockLine, strings.TrimSuffix(unblockLine, " \n")+" 443\n", 1)
	}
	return fill(tutorialPre), fill(tutorialPost), fill(exit)
}
