// Package e2e holds the end-to-end tests of the patchagent binary against
// the sandbox node: real iptables in the sandbox's network namespace, a real
// Node.js app under real pm2 run by an unprivileged user, real clients in a
// second namespace. Run with `go test -tags integration ./deploy/e2e/` as
// root.
package e2e
