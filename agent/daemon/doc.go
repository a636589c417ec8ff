// Package daemon is the patchagent service around the patch cycle: its
// loop (the boot reconciliation before READY=1, the watch that puts an
// open cycle's block back, the dead-man timer, sd_notify and the
// watchdog), the config reload and the degraded start, the control
// socket's protocol, server and client, the hand-over of a hook's phase
// (RunHook: the daemon runs it when one answers, else this process does),
// and the metrics listener. It runs no phase itself: it reaches the cycle
// (agent.Agent) through Cycle and a PhaseRunner, and the cycle decides
// (Reassert, Reconcile, Exit).
package daemon
