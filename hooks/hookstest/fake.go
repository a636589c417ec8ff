// Package hookstest provides FakeRunner, a hooks.Runner for tests: it records
// every command and replays scripted results, so a test can assert the exact
// sequence of programs a component ran; and StartSleep, a real process
// under a name of the test's choosing (a stray npm).
package hookstest

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/patchagent/patchagent/hooks"
)

// Reply is one scripted outcome of a command.
type Reply struct {
	Result hooks.Result
	Err    error
	// Do, if set, runs before the reply is returned: a side effect of the
	// command (a process killed, a file written).
	Do func(hooks.Cmd)
}

// OK is a reply for a command that exited 0 and printed stdout.
func OK(stdout string) Reply {
	return Reply{Result: hooks.Result{Stdout: []byte(stdout)}}
}

// Exit is a reply for a command that exited with code and printed stderr,
// with the error ExecRunner would give.
func Exit(name string, code int, stderr string) Reply {
	return Reply{
		Result: hooks.Result{ExitCode: code, Stderr: []byte(stderr)},
		Err:    &hooks.ExitError{Name: name, ExitCode: code, Stderr: strings.TrimSpace(stderr)},
	}
}

// FakeRunner is a scripted hooks.Runner, safe for concurrent use. The zero
// value is ready: with nothing scripted, every call fails.
//
// A call is answered by the first unused reply scripted with On for its
// program and first argument, else by the next reply scripted with Then,
// else by Handler, else with an error.
type FakeRunner struct {
	// Handler answers calls nothing is scripted for.
	Handler func(ctx context.Context, c hooks.Cmd) (hooks.Result, error)

	mu    sync.Mutex
	cmds  []hooks.Cmd
	byKey map[string][]Reply
	queue []Reply
}

var _ hooks.Runner = (*FakeRunner)(nil)

// On scripts replies, used in order, for calls of program name whose first
// argument is arg0 ("" for a call without arguments).
func (f *FakeRunner) On(name, arg0 string, replies ...Reply) *FakeRunner {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.byKey == nil {
		f.byKey = map[string][]Reply{}
	}
	k := key(name, arg0)
	f.byKey[k] = append(f.byKey[k], replies...)
	return f
}

// Then scripts replies for calls in order, used when no On reply matches.
func (f *FakeRunner) Then(replies ...Reply) *FakeRunner {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.queue = append(f.queue, replies...)
	return f
}

// Run records c and replays the reply scripted for it.
func (f *FakeRunner) Run(ctx context.Context, c hooks.Cmd) (hooks.Result, error) {
	c = clone(c)
	f.mu.Lock()
	f.cmds = append(f.cmds, c)
	var arg0 string
	if len(c.Args) > 0 {
		arg0 = c.Args[0]
	}
	var r *Reply
	k := key(c.Name, arg0)
	if rs := f.byKey[k]; len(rs) > 0 {
		r, f.byKey[k] = &rs[0], rs[1:]
	} else if len(f.queue) > 0 {
		r, f.queue = &f.queue[0], f.queue[1:]
	}
	handler := f.Handler
	f.mu.Unlock()

	if err := ctx.Err(); err != nil {
		return hooks.Result{ExitCode: -1}, fmt.Errorf("%s killed because its context ended: %w", c.Name, err)
	}
	switch {
	case r != nil:
		if r.Do != nil {
			r.Do(c)
		}
		return r.Result, r.Err
	case handler != nil:
		return handler(ctx, c)
	}
	return hooks.Result{ExitCode: -1}, fmt.Errorf("hookstest: no reply scripted for %s %q", c.Name, c.Args)
}

// Cmds returns the commands run so far, in order (nil if none).
func (f *FakeRunner) Cmds() []hooks.Cmd {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.cmds) == 0 {
		return nil
	}
	out := make([]hooks.Cmd, len(f.cmds))
	copy(out, f.cmds)
	return out
}

// Argvs returns each command run so far as one string, "name arg1 arg2".
func (f *FakeRunner) Argvs() []string {
	var out []string
	for _, c := range f.Cmds() {
		out = append(out, strings.Join(append([]string{c.Name}, c.Args...), " "))
	}
	return out
}

// Unused returns how many scripted replies no call has used yet.
func (f *FakeRunner) Unused() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := len(f.queue)
	for _, rs := range f.byKey {
		n += len(rs)
	}
	return n
}

func key(name, arg0 string) string { return name + "\x00" + arg0 }

func clone(c hooks.Cmd) hooks.Cmd {
	c.Args = append([]string(nil), c.Args...)
	c.Env = append([]string(nil), c.Env...)
	if c.Cred != nil {
		cr := *c.Cred
		cr.Groups = append([]uint32(nil), cr.Groups...)
		c.Cred = &cr
	}
	return c
}
