// Package wait holds what the agent and its daemon both need to wait on.
package wait

import (
	"context"
	"sync"
)

// Group waits for wg until ctx is done; it reports whether wg finished.
func Group(ctx context.Context, wg *sync.WaitGroup) bool {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-ctx.Done():
		return false
	}
}
