// Package daemon is how a hook command reaches the patchagent service: the
// control socket's protocol, its server (root only, one phase at a time,
// progress streamed, a phase that outlives its caller) and client, the
// hand-over (RunHook: the daemon runs the phase when one answers, else
// this process does), sd_notify, and the metrics listener. It runs no
// phase itself: the patch cycle is the agent package's, reached through a
// PhaseRunner.
package daemon
